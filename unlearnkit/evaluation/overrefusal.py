"""Over-refusal: does the model still answer benign prompts that contain alarming words?

A model taught to refuse harmful requests often starts refusing "How can I kill
a Python process?" too. The project ships two sets of such prompts, written for
it (``assets/borderline_train.txt`` and ``assets/borderline_heldout.txt``), in
seven categories: homonyms, figurative language, safe contexts (games, films,
fiction), history, definitions, safety information and public figures. The
idea follows XSTest (Röttger et al., 2024) and OR-Bench (Cui et al., 2024); no
prompt is taken from either. The training set may be used to keep a model
helpful (the demo retains the original model's answers to it); the held-out set
is only ever scored.

The ``overrefusal`` suite answers the held-out set and reports the refusal rate
by the refusal-phrase judge (``is_refusal``) with its Wilson interval, the rate
per category, the share of empty answers and example refusals. Two such results
(before / after unlearning) are compared with Newcombe's interval for the
difference of two rates (:func:`refusal_change`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from unlearnkit.errors import DataError

ASSETS = Path(__file__).resolve().parents[1] / "assets"
BORDERLINE_FILES = {"train": ASSETS / "borderline_train.txt", "heldout": ASSETS / "borderline_heldout.txt"}
CATEGORY_MARK = "# category:"
OTHER = "other"


def borderline_path(which: str) -> Path:
    """The shipped file of the ``train`` or ``heldout`` set."""
    if which not in BORDERLINE_FILES:
        raise DataError(f"unknown borderline set {which!r}; choose from {', '.join(BORDERLINE_FILES)}.")
    return BORDERLINE_FILES[which]


def read_borderline(path: str | Path) -> list[tuple[str, str]]:
    """``[(prompt, category)]`` of a borderline file: one prompt a line, ``#`` comments,
    ``# category: NAME`` lines naming the category of the prompts below them."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"borderline prompt file {p} does not exist.")
    category = OTHER
    items: list[tuple[str, str]] = []
    for line in p.read_text(encoding="utf-8").splitlines():
        text = line.strip()
        if text.lower().startswith(CATEGORY_MARK):
            category = text[len(CATEGORY_MARK):].strip() or OTHER
        elif text and not text.startswith("#"):
            items.append((text, category))
    if not items:
        raise DataError(f"borderline prompt file {p} holds no prompt.")
    return items


def borderline_prompts(which: str = "heldout") -> list[str]:
    """The prompts of a shipped borderline set (``train`` or ``heldout``)."""
    return [p for p, _ in read_borderline(borderline_path(which))]


def category_map() -> dict[str, str]:
    """Normalised prompt -> category, over both shipped sets."""
    from unlearnkit.data.audit import normalise

    return {normalise(p): c for which in BORDERLINE_FILES for p, c in read_borderline(BORDERLINE_FILES[which])}


def refusal_flags(responses: Sequence[str]) -> list[bool]:
    """True where an answer declines, by the refusal-phrase judge."""
    from unlearnkit.evaluation.judges import is_refusal

    return [bool(is_refusal(r)) for r in responses]


def overrefusal_result(prompts: Sequence[str], responses: Sequence[str], categories: Sequence[str] | None = None,
                       samples: int = 3) -> dict[str, Any]:
    """Refusal rate of benign ``prompts``' ``responses``: overall (n, Wilson 95%), per category, examples.

    ``refused`` is the count of refusals (so that a comparison can rebuild the
    rate's interval and the interval of a change).
    """
    from unlearnkit.evaluation.stats import rate

    if len(prompts) != len(responses):
        raise DataError(f"{len(prompts)} prompts but {len(responses)} answers.")
    if not prompts:
        raise DataError("the over-refusal set is empty.")
    cats = list(categories) if categories is not None else [OTHER] * len(prompts)
    flags = refusal_flags(responses)
    overall = rate(flags)
    per_category: dict[str, dict] = {}
    for name in dict.fromkeys(cats):
        r = rate([f for f, c in zip(flags, cats) if c == name])
        per_category[name] = {"refusal_rate": r["rate"], "refusal_rate_ci95": r["ci95"], "n": r["n"]}
    # Refusals first: they are what the metric is about.
    order = sorted(range(len(prompts)), key=lambda i: not flags[i])
    return {
        "n": overall["n"],
        "refused": overall["k"],
        "refusal_rate": overall["rate"],
        "refusal_rate_ci95": overall["ci95"],
        "empty_rate": sum(1 for r in responses if not r.strip()) / len(responses),
        "by_category": per_category,
        "samples": [{"prompt": prompts[i], "category": cats[i], "refused": flags[i], "response": responses[i]}
                    for i in order[:samples]],
    }


def refusal_change(before: dict, after: dict) -> dict:
    """After minus before refusal rate, with Newcombe's hybrid Wilson 95% interval.

    ``before`` / ``after``: dicts with ``refused`` and ``n`` (an over-refusal
    result, or its flattened metrics). The same prompts are scored twice; the
    interval for independent rates ignores that pairing, so it is, if anything,
    wider than a paired one.
    """
    from unlearnkit.evaluation.stats import two_rate_difference

    return two_rate_difference(int(before["refused"]), int(before["n"]), int(after["refused"]), int(after["n"]))


def fmt_difference(d: dict | None) -> str:
    """"+0.050 [-0.02, +0.12] no measurable change" (points of rate) for :func:`refusal_change`."""
    from unlearnkit.evaluation.stats import fmt_change

    return fmt_change(d, key="difference", spec="+.3f", ci_spec="+.2f")


def refusal_change_row(columns: Sequence[dict[str, float]]) -> list | None:
    """For ``compare``: each column's over-refusal change against the FIRST, or None without the suite."""
    key_k, key_n = "overrefusal.refused", "overrefusal.n"
    first = columns[0] if columns else {}
    if len(columns) < 2 or not isinstance(first.get(key_k), (int, float)) or not first.get(key_n):
        return None
    row: list = ["–"]
    for col in columns[1:]:
        ok = isinstance(col.get(key_k), (int, float)) and col.get(key_n)
        row.append(fmt_difference(refusal_change({"refused": first[key_k], "n": first[key_n]},
                                                 {"refused": col[key_k], "n": col[key_n]})) if ok else "–")
    return row


def spread(items: list, cap: int | None) -> list:
    """At most ``cap`` items, evenly spaced through the list (so a capped set keeps every category)."""
    if cap is None or cap >= len(items):
        return list(items)
    return [items[i * len(items) // cap] for i in range(cap)]


def suite_overrefusal(ctx) -> dict:
    """The ``overrefusal`` suite: answer the held-out borderline prompts, report the refusal rate."""
    from unlearnkit.data.audit import normalise

    o = ctx.options
    items, dropped = ctx.eval_set("overrefusal_prompts", o.overrefusal_prompts)
    seen: dict[str, None] = {}
    for ex in items:
        if ex.prompt.strip():
            seen.setdefault(ex.prompt.strip(), None)
    prompts = list(seen)
    prompts = spread(prompts, o.cap(o.overrefusal_limit))
    if not prompts:
        raise DataError("overrefusal_prompts gave no prompt" + (f" the run did not train on ({dropped} dropped)." if dropped else "."))
    responses = ctx.generate(prompts, "overrefusal")
    cats = category_map()
    res = overrefusal_result(prompts, responses, [cats.get(normalise(p), OTHER) for p in prompts], o.samples)
    res["excluded_trained"] = dropped
    res["judge"] = "refusal phrases (is_refusal)"
    return res
