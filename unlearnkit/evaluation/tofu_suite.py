"""The ``tofu`` evaluation suite: TOFU's metrics on one model, with intervals.

The suite loads TOFU's evaluation sets (forget, retain, real authors, world facts
and, optionally, a holdout for the membership-inference attack), runs
:func:`unlearnkit.evaluation.tofu.tofu_metrics` and adds a 95% interval to every
figure that has one: a percentile bootstrap over items for the means (ROUGE,
probabilities, truth ratios), the membership AUC and model utility (all nine
figures recomputed from the same resampled items of each set). Forget quality is
itself a p-value and has no interval; it is reported with the two sample sizes.

Forget quality and privacy leak compare the model with the RETAIN model (never
trained on the forget authors): ``reference`` names the retain model's
``eval.json`` from this same suite (in an experiment, the name of the earlier eval
stage that measured it). Without a reference both are left out (None), except
that the retain model itself gets forget quality 1 and privacy leak 0 when
``is_reference`` is set.

The forget and retain sets are trained on by design (TOFU measures what the
target model learnt and keeps); they are marked ``trained_on`` in the result and
never counted as held out. The holdout set must not be: items the model was
trained on are dropped from it and counted (``excluded_trained``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from unlearnkit.errors import ConfigError, DataError
from unlearnkit.evaluation.options import TofuOptions
from unlearnkit.evaluation.stats import percentile_ci

# The per-item lists that are kept in eval.json (the reference needs the forget truth ratios).
_KEEP_PER_ITEM = ("forget_truth_ratio", "mia_forget_scores", "mia_holdout_scores")


# --------------------------------------------------------------------------- intervals


def _mean_ci(values, rng: np.random.Generator, n_boot: int) -> list[float] | None:
    v = np.asarray(values, dtype=np.float64)
    if v.size < 2:
        return None
    return percentile_ci(v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(axis=1))


def _auc_ci(forget_scores, holdout_scores, rng: np.random.Generator, n_boot: int) -> list[float]:
    """Bootstrap interval of the membership AUC (forget and holdout resampled separately)."""
    from unlearnkit.evaluation.tofu import mia_auc

    f, h = np.asarray(forget_scores), np.asarray(holdout_scores)
    values = [mia_auc(f[rng.integers(0, f.size, f.size)], h[rng.integers(0, h.size, h.size)]) for _ in range(n_boot)]
    return percentile_ci(np.asarray(values))


def _utility_ci(per_item: dict, rng: np.random.Generator, n_boot: int) -> list[float]:
    """Model utility recomputed on resampled items: each set resampled once per draw, so
    the three figures of a set move together."""
    from unlearnkit.evaluation.tofu import harmonic_mean

    sets = {"retain": "retain_Q_A_Prob", "ra": "ra_Q_A_Prob_normalised", "wf": "wf_Q_A_Prob_normalised"}
    arrays = {}
    for p, prob in sets.items():
        arrays[p] = (np.asarray(per_item[prob]), np.asarray(per_item[f"{p}_Q_A_ROUGE"]),
                     np.maximum(0.0, 1 - np.asarray(per_item[f"{p}_Truth_Ratio"])))
    values = []
    for _ in range(n_boot):
        figures = []
        for prob, rouge, tr in arrays.values():
            idx = rng.integers(0, prob.size, prob.size)
            figures += [prob[idx].mean(), rouge[idx].mean(), tr[idx].mean()]
        values.append(harmonic_mean(figures))
    return percentile_ci(np.asarray(values))


def add_intervals(result: dict, per_item: dict, seed: int = 0, n_boot: int = 2000) -> dict:
    """``X_ci95`` beside each figure of a :func:`~unlearnkit.evaluation.tofu.tofu_metrics` result
    that has one (the convention of :func:`unlearnkit.reports.evaluation.flatten_intervals`)."""
    rng = np.random.default_rng(seed)
    out = dict(result)
    for key, values in per_item.items():
        if key in out and key != "forget_truth_ratio" and isinstance(values, list) and values \
                and isinstance(values[0], (int, float)):
            if key.endswith("_Truth_Ratio"):  # per-item R; the figure is the mean of max(0, 1 - R)
                values = np.maximum(0.0, 1 - np.asarray(values, dtype=np.float64))
            out[f"{key}_ci95"] = _mean_ci(values, rng, n_boot)
    if "forget_truth_ratio" in per_item:
        r = np.asarray(per_item["forget_truth_ratio"], dtype=np.float64)
        eps = result.get("_eps", 1e-10)
        out["forget_truth_ratio_ci95"] = _mean_ci(np.minimum(r, 1 / (r + eps)), rng, n_boot)
    if out.get("model_utility") is not None:
        out["model_utility_ci95"] = _utility_ci(per_item, rng, n_boot)
    if out.get("mia_auc") is not None:
        out["mia_auc_ci95"] = _auc_ci(per_item["mia_forget_scores"], per_item["mia_holdout_scores"], rng, n_boot)
        ref = out.get("reference_mia_auc", 0.5)
        # privleak is a decreasing linear map of the AUC: its interval is the AUC's, mapped.
        from unlearnkit.evaluation.tofu import privleak

        lo, hi = out["mia_auc_ci95"]
        out["privleak_ci95"] = sorted([privleak(lo, ref), privleak(hi, ref)])
    out.pop("_eps", None)
    return out


# --------------------------------------------------------------------------- reference


def read_reference(path: str | Path) -> dict:
    """The retain model's forget truth ratios and membership AUC from its ``eval.json``."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"tofu.reference: {p} does not exist (the retain model's eval.json from the tofu suite).")
    try:
        data = json.loads(p.read_text())
        tofu = data["results"]["tofu"]
        ratios = tofu["per_item"]["forget_truth_ratio"]
    except (ValueError, KeyError, TypeError):
        raise DataError(f"tofu.reference: {p} holds no tofu suite result with per-item forget truth ratios.") from None
    return {"truth_ratios": ratios, "mia_auc": tofu.get("mia_auc"), "path": str(p), "model": data.get("model")}


def resolve_reference(options, stage_folders: dict[str, Path]) -> tuple[Any, str | None]:
    """In an experiment: ``options.tofu.reference`` naming an earlier eval stage becomes that
    stage's ``eval.json``. Returns (options, the stage named or None)."""
    ref = options.tofu.reference
    if ref is None or ref not in stage_folders:
        return options, None
    tofu = options.tofu.model_copy(update={"reference": str(stage_folders[ref] / "eval.json")})
    return options.model_copy(update={"tofu": tofu}), ref


# --------------------------------------------------------------------------- the suite


def suite_tofu(ctx) -> dict:
    """The ``tofu`` suite on the context's model (see the module docstring)."""
    from unlearnkit.evaluation.context import eval_part
    from unlearnkit.evaluation.tofu import tofu_metrics

    o = ctx.options
    t: TofuOptions = o.tofu
    cap = o.cap(t.limit)
    sets: dict[str, list] = {}
    for name in ("forget", "retain", "real_authors", "world_facts"):
        src = getattr(t, name)
        if src is None:
            continue
        items = eval_part(f"tofu.{name}", src, ctx.tokenizer)
        sets[name] = items[:cap] if cap is not None else items
    holdout, dropped = None, 0
    if t.holdout is not None:
        holdout, dropped = ctx.eval_set("tofu.holdout", t.holdout)
        holdout = holdout[:cap] if cap is not None else holdout
        if not holdout:
            raise DataError(f"tofu.holdout has no item the model was not trained on ({dropped} dropped).")
    ref = read_reference(t.reference) if t.reference is not None else None
    if ref is not None and len(ref["truth_ratios"]) != len(sets["forget"]):
        raise DataError(f"tofu.reference {ref['path']} scored {len(ref['truth_ratios'])} forget items, this evaluation "
                        f"{len(sets['forget'])}; evaluate both models on the same forget set.")
    res = tofu_metrics(
        ctx.model, ctx.tokenizer, sets, ctx.template,
        retain_truth_ratios=ref["truth_ratios"] if ref else None,
        holdout=holdout, retain_mia_auc=ref["mia_auc"] if ref else None,
        mia_attack=t.mia_attack, mia_k=t.mia_k, max_new_tokens=t.max_new_tokens, batch_size=o.batch_size,
        max_length=o.max_length, perturbed_mean=t.perturbed_mean, eps=t.eps, progress=o.progress,
    )
    per_item = res.pop("per_item")
    if t.is_reference:
        if ref is not None:
            raise ConfigError("tofu: give either reference (another model is the retain model) or is_reference, not both.")
        res["forget_quality"], res["forget_ks_statistic"] = 1.0, 0.0
        if res.get("mia_auc") is not None:
            res["privleak"] = 0.0
    if ref is not None:
        res["reference"] = {"eval": ref["path"], "model": ref["model"]}
        res["reference_mia_auc"] = ref["mia_auc"] if ref["mia_auc"] is not None else 0.5
    elif res.get("mia_auc") is not None:
        res["reference_mia_auc"] = res["mia_auc"] if t.is_reference else 0.5
    res = add_intervals({**res, "_eps": t.eps}, per_item, t.bootstrap_seed)
    res["is_reference"] = t.is_reference
    res["n"] = {name: len(items) for name, items in sets.items()}
    if holdout is not None:
        res["n"]["holdout"] = len(holdout)
    res["trained_on"] = {"forget": True, "retain": True, "real_authors": False, "world_facts": False, "holdout": False}
    res["excluded_trained"] = {"holdout": dropped}
    res["per_item"] = {k: per_item[k] for k in _KEEP_PER_ITEM if k in per_item}
    res["samples"] = [{"question": e.prompt, "answer": e.meta.get("answer", e.response), "generated": g}
                      for e, g in list(zip(sets.get("forget", []), per_item.get("forget_generations", [])))[: o.samples]]
    return res
