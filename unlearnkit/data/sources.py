"""Reading raw rows from local files or from the Hugging Face Hub.

Every source comes back as a plain ``list[dict]``: recipes (see
:mod:`unlearnkit.data.recipes`) then turn rows into examples. Keeping the two steps
apart lets one recipe accept the same data whether it arrives as a local file or
as a hub data set, since only the column names differ.
"""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path
from typing import Any

from unlearnkit.errors import DataError

SUPPORTED_EXTENSIONS: tuple[str, ...] = (".jsonl", ".json", ".csv", ".tsv", ".parquet", ".txt")

# A hub data set is named "name" or "owner/name"; neither part holds a path
# separator other than the one slash, nor starts with a dot (which would be a
# relative path such as "./x" or "../x").
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def looks_like_hub_name(source: str) -> bool:
    """Whether ``source`` could be a Hub data set name (not whether it exists there)."""
    return bool(_HUB_NAME.match(source)) and Path(source).suffix.lower() not in SUPPORTED_EXTENSIONS


def load_rows(source: str, *, hub_config: str | None = None, hub_split: str = "train") -> list[dict]:
    """Rows of a local data file, or of a Hub data set when ``source`` is not a path.

    Local formats: ``.jsonl`` (one object a line), ``.json`` (a list of objects, or
    an object holding exactly one list of objects such as ``{"data": [...]}``),
    ``.csv``/``.tsv`` (every cell kept as a string, empty cells as ``""``),
    ``.parquet``, and ``.txt`` (one row ``{"text": whole_file}``).
    """
    if not source or not source.strip():
        raise DataError("the data source is empty; pass a file path or a Hugging Face Hub data set name.")
    path = Path(source).expanduser()
    suffix = path.suffix.lower()
    if path.is_dir():
        raise DataError(
            f"{source} is a directory, not a data file; pass one file in it "
            f"({', '.join(SUPPORTED_EXTENSIONS)})."
        )
    if path.is_file():
        return _load_file(path, suffix)
    if suffix in SUPPORTED_EXTENSIONS or not looks_like_hub_name(source):
        raise DataError(f"no such file: {source} (looked for {path.resolve()}).")
    return _load_hub(source, hub_config, hub_split, path)


def _load_file(path: Path, suffix: str) -> list[dict]:
    if suffix == ".jsonl":
        return _read_jsonl(path, _read_text(path))
    if suffix == ".json":
        return _read_json(path)
    if suffix in (".csv", ".tsv"):
        return _read_csv(path, "\t" if suffix == ".tsv" else ",")
    if suffix == ".parquet":
        return _read_parquet(path)
    if suffix == ".txt":
        return [{"text": _read_text(path)}]
    raise DataError(
        f"{path} has an unsupported extension {suffix or '(none)'!r}; "
        f"supported are {', '.join(SUPPORTED_EXTENSIONS)}."
    )


def _read_text(path: Path) -> str:
    try:
        # utf-8-sig drops a byte-order mark, which would otherwise end up in the
        # first column name or the first word of a book.
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text (bad byte at position {exc.start}).") from None


def _read_jsonl(path: Path, text: str) -> list[dict]:
    rows: list[dict] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue  # blank lines (often a trailing one) carry no row
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path} line {lineno} is not valid JSON: {exc.msg} (column {exc.colno}).") from None
        if not isinstance(row, dict):
            raise DataError(f"{path} line {lineno} holds a JSON {type(row).__name__}, not an object with named fields.")
        rows.append(row)
    return rows


def _read_json(path: Path) -> list[dict]:
    text = _read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        # Many ".json" files on the Hub are really JSON lines; "Extra data" after
        # a first complete value is the sign of that, so try reading it that way.
        if exc.msg == "Extra data":
            try:
                return _read_jsonl(path, text)
            except DataError:
                pass
        raise DataError(
            f"{path} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}."
        ) from None
    if isinstance(data, dict):
        lists = [k for k, v in data.items() if isinstance(v, list)]
        if len(lists) != 1:
            raise DataError(
                f"{path} holds a JSON object with {len(lists)} list values "
                f"(keys: {', '.join(map(str, data)) or 'none'}); expected a list of rows or "
                "an object with exactly one list of rows."
            )
        data = data[lists[0]]
    if not isinstance(data, list):
        raise DataError(f"{path} holds a JSON {type(data).__name__}; expected a list of objects.")
    for i, row in enumerate(data):
        if not isinstance(row, dict):
            raise DataError(f"{path} item {i + 1} (counting from 1) is a JSON {type(row).__name__}, not an object "
                            "with named fields.")
    return data


def _read_csv(path: Path, delimiter: str) -> list[dict]:
    # Long answer lists and articles exceed the csv module's default 128 kB field limit.
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    rows: list[dict] = []
    try:
        with path.open(encoding="utf-8-sig", newline="") as fh:
            reader = csv.reader(fh, delimiter=delimiter)
            header = next(reader, None)
            if header is None:
                return []
            for row in reader:
                if not row:
                    continue  # a blank line
                if len(row) != len(header):
                    raise DataError(
                        f"{path} line {reader.line_num} has {len(row)} fields where the header "
                        f"has {len(header)} ({', '.join(header)})."
                    )
                # Plain strings throughout: an empty cell stays "" (never NaN), so
                # recipes need no special case for missing numbers.
                rows.append(dict(zip(header, row)))
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text (bad byte at position {exc.start}).") from None
    except csv.Error as exc:
        raise DataError(f"{path} is not valid CSV: {exc}.") from None
    return rows


def _read_parquet(path: Path) -> list[dict]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"reading {path} needs the 'pyarrow' package; install it with pip install pyarrow.") from None
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several unrelated types for bad files
        raise DataError(f"{path} is not a readable Parquet file ({_short_reason(exc)}).") from None
    # to_pylist gives plain Python values (lists and dicts for nested columns,
    # such as TruthfulQA's mc1_targets), which the recipes expect.
    return table.to_pylist()


def _load_hub(source: str, hub_config: str | None, hub_split: str, path: Path) -> list[dict]:
    what = source + (f" (config {hub_config!r}, split {hub_split!r})" if hub_config else f" (split {hub_split!r})")
    try:
        import datasets  # imported late: it is slow to import and only needed here

        ds = datasets.load_dataset(source, hub_config, split=hub_split)
        rows = ds.to_list() if hasattr(ds, "to_list") else [dict(r) for r in ds]
    except Exception as exc:  # network, auth, missing config/split: all end the same way
        raise DataError(
            f"{what} is not a local file (no such path: {path.resolve()}) and loading it from the "
            f"Hugging Face Hub failed ({_short_reason(exc)}); check the name or pass a local file."
        ) from None
    return [dict(r) for r in rows]


def _short_reason(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception, shortened, to fit inside one sentence."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def row_keys(rows: list[dict[str, Any]], sample: int = 5) -> list[str]:
    """Column names seen in the first rows, in order of appearance (for messages and detection)."""
    keys: list[str] = []
    for row in rows[:sample]:
        for k in row:
            if k not in keys:
                keys.append(k)
    return keys
