"""Content keys, content-disjoint grouping and the leak audit.

Honest measurement needs one rule: nothing a run trains on is scored as held
out. Data sets repeat themselves (the PKU-SafeRLHF file lists 930 distinct
prompts over 5,135 rows), so a split by row puts the same prompt, and often the
same answer, on both sides. Everything here works on the *normalised* text:

- :func:`normalise` folds case, Unicode forms, punctuation and whitespace, so
  "How do I kill a process?" and "how do i  kill a process" are one key;
- :func:`group_key` is what a hold-out keeps whole on one side (the prompt, or
  the question; a text chunk is its own group, with overlapping token spans
  handled by :func:`drop_span_overlaps`);
- :func:`dedupe` drops exact duplicate responses (by normalised text) before a
  split;
- :func:`audit` counts the prompts and responses every evaluated set shares with
  every trained set; :func:`check_audit` turns a non-zero count into an error
  that names both sets and shows an example.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from pathlib import Path
from typing import Iterable, Sequence

from unlearnkit.data.types import Example, MCItem
from unlearnkit.errors import DataError

# Anything that is not a letter, digit or whitespace counts as punctuation.
_PUNCT = re.compile(r"[^\w\s]|_", re.UNICODE)
_SPACE = re.compile(r"\s+", re.UNICODE)
# Sets at most this large (JSONL bytes) are written out whole in a run folder;
# a larger one is written as one content hash per example.
MAX_SET_BYTES = 10 * 2**20


def normalise(text: str) -> str:
    """Lower-cased NFKC text with punctuation turned into spaces and whitespace folded."""
    text = unicodedata.normalize("NFKC", text or "").lower()
    return _SPACE.sub(" ", _PUNCT.sub(" ", text)).strip()


def prompt_of(item) -> str:
    if isinstance(item, MCItem):
        return item.question
    if isinstance(item, Example):
        return item.prompt
    if isinstance(item, str):  # a bare prompt
        return item
    raise DataError(f"cannot read the prompt of a {type(item).__name__}; expected Example, MCItem or str.")


def response_of(item) -> str:
    if isinstance(item, Example):
        return item.response
    return ""


def prompt_key(item) -> str | None:
    key = normalise(prompt_of(item))
    return key or None


def response_key(item) -> str | None:
    key = normalise(response_of(item))
    return key or None


def group_key(item, index: int) -> tuple:
    """The group a hold-out keeps whole: the normalised prompt, else the item itself."""
    key = prompt_key(item)
    return ("prompt", key) if key is not None else ("item", index)


def dedupe(items: Sequence) -> tuple[list, int]:
    """(items without exact duplicates, number dropped), first occurrence kept.

    Examples with a response are duplicates when their normalised responses are
    equal (the same answer under two prompts is still one answer); examples
    without one (prompt lists) when their normalised prompts are; MC items when
    their questions are.
    """
    seen: set[tuple] = set()
    kept: list = []
    for item in items:
        r = response_key(item)
        key = ("r", r) if r is not None else ("p", prompt_key(item))
        if key[1] is None:  # nothing to compare: keep it
            kept.append(item)
            continue
        if key in seen:
            continue
        seen.add(key)
        kept.append(item)
    return kept, len(items) - len(kept)


def _span(item) -> tuple[int, int] | None:
    meta = getattr(item, "meta", None) or {}
    if "offset" in meta and "tokens" in meta:
        start = int(meta["offset"])
        return start, start + int(meta["tokens"])
    return None


def drop_span_overlaps(train: list, held: list) -> tuple[list, int]:
    """Train items whose token span overlaps a held-out item's span are dropped.

    Text chunks made with a stride shorter than the chunk overlap their
    neighbours; a held-out chunk must share no token with a trained one.
    Returns (kept train items, number dropped).
    """
    spans = sorted(s for s in (_span(h) for h in held) if s is not None)
    if not spans:
        return train, 0
    import bisect

    starts = [a for a, _ in spans]
    # reach[i]: the furthest end among the first i + 1 held spans (sorted by start).
    reach, furthest = [], -1
    for _, end in spans:
        furthest = max(furthest, end)
        reach.append(furthest)
    kept = []
    for item in train:
        s = _span(item)
        if s is not None:
            a, b = s
            i = bisect.bisect_left(starts, b)  # held spans starting before b
            if i and reach[i - 1] > a:
                continue
        kept.append(item)
    return kept, len(train) - len(kept)


# --------------------------------------------------------------------------- audit


def _keys(items: Iterable) -> tuple[dict[str, str], dict[str, str]]:
    prompts: dict[str, str] = {}
    responses: dict[str, str] = {}
    for item in items:
        p = prompt_key(item)
        if p is not None:
            prompts.setdefault(p, prompt_of(item))
        r = response_key(item)
        if r is not None:
            responses.setdefault(r, response_of(item))
    return prompts, responses


def overlap(a: Sequence, b: Sequence) -> dict:
    """Shared normalised prompts and responses of two sets, with one example of each (from ``a``)."""
    row = audit({"b": b}, {"a": a})["pairs"][0]
    return {"shared_prompts": row["shared_prompts"], "shared_responses": row["shared_responses"],
            "example_prompt": row.get("example_prompt"), "example_response": row.get("example_response")}


def audit(trained: dict[str, Sequence], evaluated: dict[str, Sequence]) -> dict:
    """Every evaluated set against every trained set: ``{"pairs": [...], "total": n}``."""
    pairs = []
    total = 0
    trained_keys = {name: _keys(items) for name, items in trained.items()}
    for ename, eitems in evaluated.items():
        pe, re_ = _keys(eitems)
        for tname, (pt, rt) in trained_keys.items():
            shared_p = sorted(set(pe) & set(pt))
            shared_r = sorted(set(re_) & set(rt))
            row = {"evaluated": ename, "trained": tname, "shared_prompts": len(shared_p),
                   "shared_responses": len(shared_r)}
            if shared_p:
                row["example_prompt"] = pe[shared_p[0]][:200]
            if shared_r:
                row["example_response"] = re_[shared_r[0]][:200]
            total += len(shared_p) + len(shared_r)
            pairs.append(row)
    return {"pairs": pairs, "total": total}


def check_audit(report: dict, allow_overlap: bool, hint: str = "set data.allow_overlap: true") -> None:
    """A DataError for the first overlapping pair of sets, unless overlap is allowed."""
    if allow_overlap or not report["total"]:
        return
    bad = [p for p in report["pairs"] if p["shared_prompts"] or p["shared_responses"]]
    first = bad[0]
    example = first.get("example_prompt") or first.get("example_response")
    what = "prompt" if first.get("example_prompt") else "response"
    others = f" (and {len(bad) - 1} more pair(s) of sets)" if len(bad) > 1 else ""
    raise DataError(
        f"held-out set {first['evaluated']!r} shares {first['shared_prompts']} prompt(s) and "
        f"{first['shared_responses']} response(s) with the trained set {first['trained']!r}{others}; "
        f"e.g. the {what} {example!r}. It would be scored as held out although it was trained on. "
        f"Make the sets disjoint, or {hint} for a deliberate in-distribution check."
    )


def trained_keys(sets: dict[str, Sequence]) -> tuple[set[str], set[str]]:
    """The normalised prompts and responses of every trained set together."""
    prompts: set[str] = set()
    responses: set[str] = set()
    for items in sets.values():
        p, r = _keys(items)
        prompts |= set(p)
        responses |= set(r)
    return prompts, responses


# --------------------------------------------------------------------------- run folders


def _row(item) -> dict:
    if isinstance(item, MCItem):
        return {"prompt": item.question, "response": "", "choices": list(item.choices), "labels": list(item.labels)}
    if isinstance(item, str):
        return {"prompt": "", "response": item}
    return {"prompt": item.prompt, "response": item.response}


def write_sets(folder: str | Path, sets: dict[str, Sequence]) -> dict[str, dict]:
    """Every set as ``folder/NAME.jsonl`` (``prompt``, ``response``); over 10 MB as hashes.

    A large set is written as ``NAME.sha256.jsonl``: one sha256 of each
    example's canonical JSON per line, so a split can still be audited without
    the text. Returns what was written per set.
    """
    from unlearnkit.rundir import atomic_write_text

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, items in sets.items():
        lines = [json.dumps(_row(it), ensure_ascii=False, sort_keys=True) for it in items]
        size = sum(len(line.encode("utf-8")) + 1 for line in lines)
        if size <= MAX_SET_BYTES:
            path = folder / f"{name}.jsonl"
            atomic_write_text(path, "".join(line + "\n" for line in lines))
            written[name] = {"file": path.name, "count": len(lines), "form": "text"}
        else:
            path = folder / f"{name}.sha256.jsonl"
            hashes = [json.dumps({"sha256": hashlib.sha256(line.encode("utf-8")).hexdigest()}) for line in lines]
            atomic_write_text(path, "".join(h + "\n" for h in hashes))
            written[name] = {"file": path.name, "count": len(lines), "form": "sha256"}
    return written
