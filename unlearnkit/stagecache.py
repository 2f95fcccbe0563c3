"""Fingerprinted stages: a result is reused only when everything that decides it is unchanged.

A stage's key is :func:`fingerprint` of what decides its result (settings,
inputs, the keys of the stages it reads). The experiment runner keys its stage
folders this way (:mod:`unlearnkit.experiment.spec`); :func:`cached_json` keeps
a stage whose result is one JSON value (the demo's answers and unlearning
summary) in a file beside its key.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable

from unlearnkit.rundir import atomic_write_json


def fingerprint(obj: Any) -> str:
    """16 hex digits of the sha256 of ``obj`` as JSON with sorted keys (non-JSON values by ``str``)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cached_json(path: Path, key: str, compute: Callable[[], Any]) -> Any:
    """The value saved at ``path`` when it was computed under ``key``; else ``compute()``, saved atomically.

    A file that is not valid JSON, or holds another key, is recomputed (and
    replaced: the file is the stage's own output).
    """
    path = Path(path)
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError):
            saved = None
        if isinstance(saved, dict) and saved.get("key") == key:
            print(f"reusing {path}", flush=True)
            return saved["value"]
    value = compute()
    atomic_write_json(path, {"key": key, "value": value})
    return value
