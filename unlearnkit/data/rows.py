"""Reading one row of a data file: typed fields, and errors that name the file, the row and the key."""

from __future__ import annotations

from typing import Any, Sequence

from unlearnkit.errors import DataError


def _row(index: int, source: str) -> str:
    """Where a row is, for messages: rows are counted from 1, like lines."""
    return f"row {index + 1} (counting from 1) of {source}"


def _field(row: dict, key: str, index: int, recipe: str, source: str) -> Any:
    if key not in row:
        raise DataError(
            f"{recipe}: {_row(index, source)} has no {key!r} "
            f"(keys found: {', '.join(map(str, row)) or 'none'})."
        )
    if row[key] is None:
        raise DataError(f"{recipe}: {_row(index, source)} has {key!r} = null; give it a value or remove the row.")
    return row[key]


def _text(row: dict, key: str, index: int, recipe: str, source: str, allow_empty: bool = True) -> str:
    value = _field(row, key, index, recipe, source)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # a numeric cell in a JSON file is still usable text
    if not isinstance(value, str):
        raise DataError(
            f"{recipe}: {_row(index, source)} has {key!r} of type {type(value).__name__}, expected text."
        )
    if not allow_empty and not value.strip():
        raise DataError(f"{recipe}: {_row(index, source)} has an empty {key!r} ({value!r}); an empty text would be "
                        "trained or evaluated as nothing: fill it in or remove the row.")
    return value


def _flag(row: dict, key: str, index: int, recipe: str, source: str) -> bool:
    value = _field(row, key, index, recipe, source)
    if isinstance(value, bool):
        return value
    # A hub export to CSV turns booleans into strings; accept the usual spellings.
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise DataError(f"{recipe}: {_row(index, source)} has {key!r} = {value!r}, expected true or false.")


def _answer_list(value: Any, key: str, index: int, recipe: str, source: str) -> list[str]:
    """An answer list: a real list (hub schema) or a '; '-separated string (the CSV).

    Empty parts are dropped: the CSV has answer lists ending in a stray '; '.
    """
    if isinstance(value, str):
        parts = value.split(";")
    elif isinstance(value, (list, tuple)):
        parts = list(value)
    else:
        raise DataError(
            f"{recipe}: {_row(index, source)} has {key!r} of type {type(value).__name__}, "
            "expected a list or a '; '-separated string."
        )
    return [str(p).strip() for p in parts if str(p).strip()]


def _pick(row: dict, names: Sequence[str]) -> str | None:
    """The first of ``names`` present in ``row`` (schemas differ only in spelling)."""
    return next((n for n in names if n in row), None)


# --------------------------------------------------------------------------- PKU-SafeRLHF
