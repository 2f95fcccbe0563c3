"""The labelled corpus of the cross-encoder judge: prompt-disjoint train and held-out parts.

Sources (file paths; defaults are read from the folder ``UNLEARNKIT_DATA`` names, :mod:`unlearnkit.paths`):

- ``pku``: PKU-SafeRLHF pairs, split by normalised prompt as the lexical judge
  is (:func:`unlearnkit.judges.training.split_by_prompt`, 4,000 training rows);
- ``beavertails``: BeaverTails 30k-test answers (human labels), prompt groups
  shuffled with the seed, ``heldout_fraction`` of them held out;
- ``gptfuzz_train`` (train only, subsampled to ``gptfuzz_train_max``) and
  ``gptfuzz_evaluate`` (held out whole; the two share no question);
- ``truthfulqa``: the best answers, labelled safe (questions split as BeaverTails);
- ``everyday``: answers of SmolLM2-135M-Instruct to the project's everyday
  questions (``assets/everyday_answers.jsonl``), labelled safe;
- ``tofu`` (opt-in, given as a source): TOFU question-answer pairs about
  fictitious authors, labelled safe (helpful answers to benign questions; 10%
  of the questions held out);
- refusals composed by :mod:`unlearnkit.judges.refusals` (disjoint sentence
  halves), for prompts of each side, labelled safe and refusing.

Every prompt of every held-out part is removed from training (any source), and
so is every held-out response; a held-out item whose response still occurs in
training is set apart (``seen_in_training``), never scored as held out.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Sequence

from unlearnkit.data.audit import normalise
from unlearnkit.errors import DataError
from unlearnkit.judges.base import is_refusal
from unlearnkit.judges.classifier import default_pku_path, file_sha256
from unlearnkit.judges.refusals import refusals

# (prompt, response, harmful, refusal or None when unknown)
Item = tuple[str, str, bool, "bool | None"]
HELDOUT_SETS = ("pku", "beavertails", "gptfuzz_evaluate", "refusals", "truthfulqa", "everyday", "tofu")
# Share of each source's prompt groups held out (PKU and GPTFuzz are split otherwise).
HELDOUT_SHARE = {"everyday": 0.5, "tofu": 0.1}


def default_sources() -> dict[str, Path]:
    root = default_pku_path().parents[1]
    return {
        "pku": default_pku_path(),
        "beavertails": root / "judge" / "beavertails_30k_test.jsonl",
        "gptfuzz_train": root / "judge" / "gptfuzz_train.jsonl",
        "gptfuzz_evaluate": root / "judge" / "gptfuzz_evaluate.jsonl",
        "truthfulqa": root / "truthfulqa" / "TruthfulQA.csv",
        "everyday": Path(__file__).resolve().parents[1] / "assets" / "everyday_answers.jsonl",
    }



def _labelled_rows(path: Path, what: str) -> list[tuple[str, str, bool]]:
    from unlearnkit.data.sources import load_rows

    if not path.is_file():
        raise DataError(f"the {what} file {path} does not exist.")
    out = []
    for i, row in enumerate(load_rows(str(path))):
        for key in ("prompt", "response", "harmful"):
            if key not in row:
                raise DataError(f"{path}: row {i} has no {key!r} (keys: {', '.join(sorted(row))}).")
        if not isinstance(row["harmful"], bool):
            raise DataError(f"{path}: row {i} has harmful={row['harmful']!r}; it must be true or false.")
        out.append((str(row["prompt"] or ""), str(row["response"] or ""), row["harmful"]))
    return out


def _truthfulqa_rows(path: Path) -> list[tuple[str, str, bool]]:
    from unlearnkit.data.recipes import truthfulqa
    from unlearnkit.data.sources import load_rows

    if not path.is_file():
        raise DataError(f"the TruthfulQA file {path} does not exist.")
    return [(ex.prompt, ex.response, False) for ex in truthfulqa(load_rows(str(path)), "best", source=str(path))]


def _qa_rows(path: Path) -> list[tuple[str, str, bool]]:
    from unlearnkit.data.sources import load_rows

    if not path.is_file():
        raise DataError(f"the question-answer file {path} does not exist.")
    out = []
    for i, row in enumerate(load_rows(str(path))):
        if "question" not in row or "answer" not in row:
            raise DataError(f"{path}: row {i} needs 'question' and 'answer' (keys: {', '.join(sorted(row))}).")
        out.append((str(row["question"]), str(row["answer"]), False))
    return out


def _split_groups(rows: Sequence[tuple[str, str, bool]], fraction: float, seed: int, salt: str) -> list[int]:
    """Held-out row indices: whole normalised-prompt groups, ``fraction`` of the groups, seeded."""
    groups: dict[str, list[int]] = {}
    for i, (p, _, _) in enumerate(rows):
        groups.setdefault(normalise(p) or f"#{i}", []).append(i)
    keys = sorted(groups)
    random.Random(f"{salt}:{seed}").shuffle(keys)
    n_held = round(len(keys) * fraction)
    return sorted(i for k in keys[:n_held] for i in groups[k])


def _weak_refusal(response: str, harmful: bool) -> bool:
    # A harmful answer gave help, whatever phrases it opens with; a safe one
    # declined when it says so in a refusal phrase.
    return (not harmful) and is_refusal(response)


def build_corpus(sources: dict[str, str | Path] | None = None, seed: int = 0, pku_train_pairs: int = 4000,
                 heldout_fraction: float = 0.25, gptfuzz_train_max: int | None = 2000,
                 train_max: dict[str, int] | None = None, repeat: dict[str, int] | None = None) -> dict:
    """``{"train": [Item], "heldout": {set: [(prompt, response, harmful)]}, "seen_in_training": {...}, "split": {...}}``.

    ``split`` records, per source file, its sha256 and the held-out row indices,
    so an evaluation can check it reads the very same held-out rows.
    ``train_max`` caps the training items taken from a source (seeded sample);
    ``repeat`` lists a source's training items that many times (after the cap):
    small calibration sources (everyday answers) would otherwise be a fraction
    of a percent of what the judge sees. Held-out parts do not depend on either.
    """
    from unlearnkit.judges.training import judge_split_items, load_labelled_pairs, split_by_prompt

    # A source given as None is left out (the optional ones: everyday, tofu).
    paths = {k: Path(v).expanduser() for k, v in {**default_sources(), **(sources or {})}.items() if v is not None}
    rng = random.Random(f"corpus:{seed}")
    train_parts: dict[str, list[Item]] = {}
    held: dict[str, list[tuple[str, str, bool]]] = {}
    split: dict[str, dict] = {}

    pairs = load_labelled_pairs(paths["pku"])
    pku_train_idx, pku_held_idx = split_by_prompt(pairs, pku_train_pairs, None, seed)
    pku_train, held["pku"], _ = judge_split_items(pairs, pku_train_idx, pku_held_idx)
    train_parts["pku"] = [(p, r, h, _weak_refusal(r, h)) for p, r, h in pku_train]
    split["pku"] = {"heldout_pair_indices": pku_held_idx}

    readers = {"truthfulqa": _truthfulqa_rows, "tofu": _qa_rows}
    for name in ("beavertails", "truthfulqa", "everyday", "tofu"):
        if name in ("everyday", "tofu") and (name not in paths or not paths[name].is_file()):
            continue
        rows = readers[name](paths[name]) if name in readers else _labelled_rows(paths[name], name)
        held_idx = _split_groups(rows, HELDOUT_SHARE.get(name, heldout_fraction), seed, name)
        hs = set(held_idx)
        held[name] = [rows[i] for i in held_idx]
        train_parts[name] = [(p, r, h, _weak_refusal(r, h)) for i, (p, r, h) in enumerate(rows) if i not in hs]
        split[name] = {"heldout_row_indices": held_idx}

    fuzz = _labelled_rows(paths["gptfuzz_train"], "GPTFuzz train")
    train_parts["gptfuzz_train"] = [(p, r, h, _weak_refusal(r, h)) for p, r, h in fuzz]
    held["gptfuzz_evaluate"] = _labelled_rows(paths["gptfuzz_evaluate"], "GPTFuzz evaluate")
    split["gptfuzz_evaluate"] = {"heldout": "every row"}
    split["gptfuzz_train"] = {"heldout": "none"}

    # Refusals: for the harmful-looking prompts of each side, from disjoint sentence halves.
    def harmful_prompts(items) -> list[str]:
        seen, out = set(), []
        for p, _, *_ in items:
            k = normalise(p)
            if k and k not in seen:
                seen.add(k)
                out.append(p)
        return out

    train_prompts = harmful_prompts(train_parts["beavertails"] + train_parts["pku"] + train_parts["gptfuzz_train"])
    held_prompts = harmful_prompts(held["beavertails"] + held["gptfuzz_evaluate"])
    train_parts["refusals"] = [(p, r, False, True) for p, r in refusals(rng.sample(train_prompts, min(600, len(train_prompts))), "train", seed)]
    held["refusals"] = [(p, r, False) for p, r in refusals(random.Random(seed).sample(held_prompts, min(300, len(held_prompts))), "heldout", seed)]
    split["refusals"] = {"composed": "unlearnkit.judges.refusals, train/heldout sentence halves", "train": len(train_parts["refusals"]),
                         "heldout": len(held["refusals"])}

    # Nothing held out is trained on: drop training items that share a held-out prompt or response.
    held_prompt_keys = {normalise(p) for rows in held.values() for p, _, _ in rows} - {""}
    held_response_keys = {normalise(r) for rows in held.values() for _, r, _ in rows} - {""}
    caps = {"gptfuzz_train": gptfuzz_train_max, **(train_max or {})}
    train: list[Item] = []
    seen_responses: set[str] = set()
    dropped: dict[str, int] = {}
    for name, items in train_parts.items():
        keep = []
        for item in items:
            pk, rk = normalise(item[0]), normalise(item[1])
            if pk in held_prompt_keys or rk in held_response_keys or not rk or rk in seen_responses:
                dropped[name] = dropped.get(name, 0) + 1
                continue
            seen_responses.add(rk)
            keep.append(item)
        cap = caps.get(name)
        if cap is not None and len(keep) > cap:
            keep = random.Random(f"{name}:{seed}").sample(keep, cap)
        split.setdefault(name, {})["train_items"] = len(keep)
        times = (repeat or {}).get(name, 1)
        if times < 1:
            raise DataError(f"repeat {name}={times}: a source is listed at least once.")
        if times > 1:
            split[name]["repeated"] = times
        train.extend(keep * times)
    random.Random(seed).shuffle(train)

    seen_in_training: dict[str, list] = {}
    for name in list(held):
        rows = held[name]
        held[name] = [row for row in rows if normalise(row[1]) not in seen_responses]
        seen_in_training[name] = [row for row in rows if normalise(row[1]) in seen_responses]
        split.setdefault(name, {})["heldout_items"] = len(held[name])
        split[name]["heldout_seen_in_training"] = len(seen_in_training[name])
    for name, path in paths.items():
        if name in split and path.is_file():
            split[name]["path"] = str(path)
            split[name]["sha256"] = file_sha256(path)
    split["dropped_from_training"] = dropped
    split["seed"] = seed
    split["settings"] = {"pku_train_pairs": pku_train_pairs, "heldout_fraction": heldout_fraction,
                         "gptfuzz_train_max": gptfuzz_train_max, "train_max": train_max or {},
                         "repeat": repeat or {}}
    return {"train": train, "heldout": held, "seen_in_training": seen_in_training, "split": split}
