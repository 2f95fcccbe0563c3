"""What a run trained on, so that an evaluation never scores it as held out.

A run folder keeps every set it trained on under ``data/`` (see
:func:`unlearnkit.data.audit.write_sets`); :meth:`TrainedContent.from_run`
reads them there (or rebuilds them from the config when the folder has none),
and :meth:`TrainedContent.drop` removes from an evaluation set every item whose
normalised prompt (or question) or response was trained on, and every raw text
that shares a 13-word span with a trained text (a C4 chunk of another length
cut from the same page, say; 13-grams as in GPT-3's decontamination).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from unlearnkit.data.audit import normalise, prompt_key, response_key, trained_keys
from unlearnkit.data.types import Example
from unlearnkit.errors import DataError

SPAN_WORDS = 13
TRAINED_SETS = ("forget", "retain", "random_pool")


def _shingles(text: str, n: int = SPAN_WORDS) -> set[int]:
    words = normalise(text).split()
    return {hash(tuple(words[i : i + n])) for i in range(len(words) - n + 1)}


@dataclass
class TrainedContent:
    prompts: set[str] = field(default_factory=set)
    responses: set[str] = field(default_factory=set)
    spans: set[int] = field(default_factory=set)
    sources: list[str] = field(default_factory=list)

    @classmethod
    def from_sets(cls, sets: dict[str, Sequence], source: str = "") -> "TrainedContent":
        prompts, responses = trained_keys(sets)
        spans: set[int] = set()
        for items in sets.values():
            for it in items:
                if isinstance(it, Example) and not it.prompt.strip():  # a raw text
                    spans |= _shingles(it.response)
        return cls(prompts, responses, spans, [source] if source else [])

    def merge(self, other: "TrainedContent") -> "TrainedContent":
        return TrainedContent(self.prompts | other.prompts, self.responses | other.responses, self.spans | other.spans,
                              self.sources + other.sources)

    @classmethod
    def from_folder(cls, run_dir: str | Path) -> "TrainedContent | None":
        """The trained sets a run folder recorded under ``data/`` (None when it has none)."""
        folder = Path(run_dir) / "data"
        sets = {}
        for name in TRAINED_SETS:
            path = folder / f"{name}.jsonl"
            if path.is_file():
                rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
                sets[name] = [Example(r.get("prompt", ""), r.get("response", "")) for r in rows]
            elif (folder / f"{name}.sha256.jsonl").is_file():
                raise DataError(f"{folder} keeps {name} as hashes only (over 10 MB); pass the run config so the "
                                "trained set can be rebuilt for the evaluation.")
        if not sets:
            return None
        return cls.from_sets(sets, str(run_dir))

    @classmethod
    def from_run(cls, cfg, tokenizer) -> "TrainedContent":
        """A run config's trained sets: from its run folder, else rebuilt from its data config."""
        found = cls.from_folder(cfg.run_dir)
        if found is not None:
            return found
        from unlearnkit.methods import get_method
        from unlearnkit.train import prepare_data, trained_sets

        data = prepare_data(cfg, tokenizer, get_method(cfg.method["name"]))
        return cls.from_sets(trained_sets(data), f"{cfg.name} (rebuilt from its config)")

    def is_trained(self, item) -> bool:
        p = prompt_key(item)
        if p is not None and p in self.prompts:
            return True
        r = response_key(item)
        if r is not None and r in self.responses:
            return True
        if isinstance(item, Example) and not item.prompt.strip() and self.spans:
            return not self.spans.isdisjoint(_shingles(item.response))
        return False

    def drop(self, items: Sequence) -> tuple[list, int]:
        """(items never trained on, number dropped)."""
        kept = [it for it in items if not self.is_trained(it)]
        return kept, len(items) - len(kept)
