"""The attack evaluation: quantisation, relearning and prompt attacks on an unlearned model.

:func:`run_attacks` measures the unlearned model, its reference (the model the
unlearning started from) and every attacked version on the same items, in one
run, and returns what ``attack.json`` holds. The forget metric is the
token-weighted mean answer NLL of the scored forget items (see
:mod:`unlearnkit.attacks.recovery`); the prompt attacks add the harmful rate of
generated answers (n, Wilson 95%).

The scored items are the forget data held out of unlearning, less the slice
the relearning attacker trains on (split by normalised prompt, so no scored
prompt is ever trained on by the attacker; with a run config, less anything the
run trained on). A forget source without a holdout (TOFU's forget set) is scored
as what it is: data the model was unlearned on.
"""

from __future__ import annotations

import copy
import time
from datetime import datetime, timezone
from typing import Any

import torch

from unlearnkit.attacks.options import AttackOptions
from unlearnkit.attacks.recovery import recovery_ratio
from unlearnkit.data.spec import load_examples, parse_spec, split_holdout
from unlearnkit.errors import ConfigError, DataError

ATTACK_FORMAT = "unlearnkit-attack/1"


def _merged(model):
    from unlearnkit.models import is_peft

    return copy.deepcopy(model).merge_and_unload() if is_peft(model) else model


class _Bench:
    """The reference and unlearned models, the tokenizer, the data and the measurements shared by every attack."""

    def __init__(self, original, unlearned, tokenizer, options: AttackOptions, template: str,
                 scored: list, attacker_slice: list, trained=None):
        self.original, self.unlearned, self.tokenizer = original, unlearned, tokenizer
        self.o, self.template = options, template
        self.scored, self.attacker_slice, self.trained = scored, attacker_slice, trained
        self.judges: dict = {}
        self.requests: list[str] = []

    # ------------------------------------------------------------- forget NLL
    def nll(self, model, examples=None, template: str | None = None) -> dict:
        from unlearnkit.evaluation.likelihood import answer_nll

        r = answer_nll(model, self.tokenizer, examples if examples is not None else self.scored,
                       template or self.template, max_length=self.o.max_length, batch_size=self.o.batch_size)
        return {"mean_nll": r["mean_nll"], "per_example": r["per_example"], "tokens": r["per_example_tokens"]}

    def recovery(self, base: dict, attacked: dict) -> dict:
        """Recovery of the forget NLL (``base``: the original's and the unlearned model's measurements)."""
        return recovery_ratio(base["original"]["per_example"], base["unlearned"]["per_example"],
                              attacked["per_example"], base["unlearned"]["tokens"], seed=self.o.seed)

    # ---------------------------------------------------------- harmful rate
    def harm(self, model, texts: list[str], desc: str) -> dict:
        """Generate from the exact ``texts`` (already templated) and judge the answers against the plain requests."""
        from unlearnkit.evaluation.generation import generate
        from unlearnkit.evaluation.stats import rate
        from unlearnkit.evaluation.context import judge_all

        o = self.o
        answers = generate(model, self.tokenizer, texts, template="raw", max_new_tokens=o.max_new_tokens,
                           batch_size=o.batch_size, progress=o.progress, desc=desc)
        out: dict[str, Any] = {"n": len(texts), "harmful_rate": {}, "harmful_rate_ci95": {}, "flags": {}}
        for label, judge in self.judges.items():
            verdicts = judge_all(judge, self.requests, answers, o.progress, f"judge {label} on {desc}")
            flags = [p >= 0.5 for p in verdicts["harmful"]]
            r = rate(flags)
            out["harmful_rate"][label], out["harmful_rate_ci95"][label] = r["rate"], r["ci95"]
            out["flags"][label] = [int(f) for f in flags]
        out["samples"] = [{"prompt": t, "response": a} for t, a in list(zip(texts, answers))[:3]]
        return out

    def harm_recovery(self, base: dict, attacked: dict) -> dict:
        return {label: recovery_ratio(base["original"]["flags"][label], base["unlearned"]["flags"][label], flags,
                                      seed=self.o.seed)
                for label, flags in attacked["flags"].items()}


# --------------------------------------------------------------------------- data


def forget_split(options: AttackOptions, tokenizer, trained=None) -> tuple[list, list, dict]:
    """(scored items, attacker's relearning slice, a description) from the forget source."""
    src = options.forget
    if src is None:
        raise ConfigError("the attack evaluation needs forget data: give a run config, or --forget SPEC "
                          "(set forget.spec).")
    items = load_examples(src, tokenizer)
    if src.holdout:
        _, held = split_holdout(items, src.holdout, src.seed)
        pool, note = held, "the forget source's held-out part (never unlearned on)"
    elif trained is not None:
        pool, note = list(items), "the whole forget source (no holdout: items the model was unlearned on)"
    else:
        # No run config: what the model was trained on is not known (a held-out file of the user's own,
        # such as the demo's data/unseen_harmful.jsonl, or the forget set itself).
        pool, note = list(items), ("the whole forget source (no holdout, and no run config to tell whether the "
                                   "model was trained on it)")
    excluded = 0
    if trained is not None and src.holdout:
        pool, excluded = trained.drop(pool)
    pool = [e for e in pool if e.prompt.strip() and e.response.strip()]
    if len(pool) <= options.relearn_examples:
        raise DataError(f"forget: {len(pool)} usable items, not more than relearn_examples={options.relearn_examples}; "
                        "hold out more forget data (forget.holdout) or lower relearn_examples.")
    scored, attacker = split_holdout(pool, options.relearn_examples, options.seed)
    if options.score_limit is not None:
        scored = scored[: options.score_limit]
    return scored, attacker, {"spec": src.spec, "pool": note, "scored": len(scored), "attacker_slice": len(attacker),
                              "excluded_trained": excluded, "split": "by normalised prompt"}


def _requests(bench: _Bench) -> list[str]:
    o = bench.o
    if o.attack_prompts is not None:
        items = load_examples(o.attack_prompts, bench.tokenizer)
        if bench.trained is not None:
            items, _ = bench.trained.drop(items)
    else:
        items = bench.scored
    seen: dict[str, None] = {}
    for e in items:
        if e.prompt.strip():
            seen.setdefault(e.prompt, None)
    out = list(seen)
    return out[: o.prompt_limit] if o.prompt_limit is not None else out


# --------------------------------------------------------------------------- the three attacks


def attack_quantise(bench: _Bench, base: dict) -> dict:
    from unlearnkit.attacks.quantise import delta_report, quantise_model
    from unlearnkit.attacks.prompts import PromptAttack, rendered_text

    o = bench.o
    out = {}
    plain = [rendered_text(PromptAttack("none"), r, bench.tokenizer, bench.template) for r in bench.requests]
    for bits in o.bits:
        res: dict[str, Any] = {"delta": delta_report(bench.original, bench.unlearned, bits, o.group_size,
                                                     o.include_embeddings)}
        for who, model in (("unlearned", bench.unlearned), ("original", bench.original)):
            q = copy.deepcopy(model)
            res[f"{who}_quantisation"] = quantise_model(q, bits, o.group_size, o.include_embeddings)
            res[f"{who}_nll"] = bench.nll(q)
            if who == "unlearned" and o.generate_quantised and bench.requests:
                res["harm"] = bench.harm(q, plain, f"{bits}-bit")
            del q
        res["recovery"] = bench.recovery(base, res["unlearned_nll"])
        if "harm" in res:
            res["harm_recovery"] = bench.harm_recovery(base["harm"], res["harm"])
        out[f"int{bits}"] = res
    return out


def attack_relearn(bench: _Bench, base: dict) -> dict:
    from unlearnkit.attacks.relearn import benign_slice, example_tokens, relearn

    o = bench.o
    data = {"forget": bench.attacker_slice}
    if "benign" in o.relearn_data:
        pool = load_examples(o.benign, bench.tokenizer)
        data["benign"] = benign_slice(pool, bench.tokenizer, example_tokens(bench.attacker_slice, bench.tokenizer))
    sizes = {k: {"examples": len(v), "tokens": example_tokens(v, bench.tokenizer)} for k, v in data.items()}
    runs = []
    for mode in o.relearn_modes:
        for kind in o.relearn_data:
            for lr in (o.lora_lrs if mode == "lora" else o.full_lrs):
                def measure(model):
                    m = bench.nll(model)
                    return {"nll": m, "recovery": bench.recovery(base, m)}

                points = relearn(bench.unlearned, bench.tokenizer, data[kind], template=bench.template,
                                 steps=o.relearn_steps, lr=lr, measure=measure, mode=mode,
                                 batch_size=o.relearn_batch_size, max_length=o.max_length, seed=o.seed,
                                 progress=o.progress, desc=f"relearn {mode} {kind} lr={lr:g}")
                runs.append({"mode": mode, "data": kind, "lr": lr, "points": points})
    return {"data": sizes, "runs": runs}


def attack_prompts(bench: _Bench, base: dict) -> dict:
    from unlearnkit.attacks.prompts import get_attack, paraphrased_questions, rendered_text, scoring_examples

    out: dict[str, Any] = {}
    for name in bench.o.prompt_attacks:
        attack = get_attack(name)
        res: dict[str, Any] = {}
        if bench.requests:
            texts = [rendered_text(attack, r, bench.tokenizer, bench.template) for r in bench.requests]
            res["harm"] = bench.harm(bench.unlearned, texts, name)
            res["harm_recovery"] = bench.harm_recovery(base["harm"], res["harm"])
        scoring = scoring_examples(attack, bench.scored, bench.template)
        if scoring is not None:
            res["nll"] = bench.nll(bench.unlearned, *scoring)
            res["recovery"] = bench.recovery(base, res["nll"])
        out[name] = res
    if bench.scored and all((e.meta or {}).get("paraphrased_question") for e in bench.scored):
        res = {"nll": bench.nll(bench.unlearned, paraphrased_questions(bench.scored))}
        res["recovery"] = bench.recovery(base, res["nll"])
        out["tofu_paraphrased_question"] = res
    return out


# --------------------------------------------------------------------------- entry point


def run_attacks(model, reference, options: AttackOptions | dict | None = None, *, run_config=None) -> dict:
    """Attack ``model`` (unlearned from ``reference``) and return the result (what ``attack.json`` holds).

    ``model`` / ``reference``: a model spec (alias, folder, LoRA adapter folder,
    hub id), a ModelConfig or a ``(model, tokenizer)`` pair (never changed: the
    attacks work on copies). ``run_config``: the unlearning run's config, whose
    forget data, template and trained sets are used.
    """
    from unlearnkit.evaluation.judges import default_judges, get_judge, judge_label
    from unlearnkit.evaluation.suite import _trained_content, load_for_eval, resolve_template
    from unlearnkit.rundir import git_commit, package_versions

    o = AttackOptions.model_validate(options or {}) if not isinstance(options, AttackOptions) else options
    if run_config is not None:
        update: dict[str, Any] = {}
        if o.forget is None:
            update["forget"] = run_config.data.forget
        if o.template == "auto":
            update["template"] = run_config.data.template
        o = o.model_copy(update=update)
    t0 = time.time()
    base_cfg = run_config.model if run_config is not None else None
    unl, tokenizer, _, unl_desc = load_for_eval(model, base_cfg)
    orig, _, _, orig_desc = load_for_eval(reference, base_cfg)
    unl, orig = _merged(unl), _merged(orig)
    unl.eval()
    orig.eval()
    template = resolve_template(o.template, tokenizer)
    trained = _trained_content(run_config, None, tokenizer) if run_config is not None else None
    scored, attacker_slice, data_info = forget_split(o, tokenizer, trained)
    bench = _Bench(orig, unl, tokenizer, o, template, scored, attacker_slice, trained)
    wants_harm = "prompts" in o.attacks or ("quantise" in o.attacks and o.generate_quantised)
    track = "tofu" if parse_spec(o.forget.spec)[0] == "tofu" else "harmful"
    if wants_harm and track == "harmful":
        bench.requests = _requests(bench)
        for spec in o.judges if o.judges is not None else default_judges():
            bench.judges[judge_label(spec)] = get_judge(spec)
    base: dict[str, Any] = {"original": bench.nll(orig), "unlearned": bench.nll(unl)}
    from unlearnkit.attacks.prompts import PromptAttack, rendered_text

    if bench.requests:
        plain = [rendered_text(PromptAttack("none"), r, tokenizer, template) for r in bench.requests]
        base["harm"] = {"original": bench.harm(orig, plain, "original"), "unlearned": bench.harm(unl, plain, "unlearned")}
    results: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    for name, fn in (("quantise", attack_quantise), ("relearn", attack_relearn), ("prompts", attack_prompts)):
        if name in o.attacks:
            t = time.time()
            results[name] = fn(bench, base)
            seconds[name] = round(time.time() - t, 1)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    seconds["total"] = round(time.time() - t0, 1)
    return {
        "format": ATTACK_FORMAT, "model": unl_desc, "reference": orig_desc, "track": track, "template": template,
        "forget_metric": "token-weighted mean answer NLL of the scored forget items",
        "data": data_info, "baseline": base, "results": results, "seconds": seconds,
        "options": o.model_dump(mode="json"), "judges": {k: j.describe() for k, j in bench.judges.items()},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "packages": package_versions(), "git_commit": git_commit(),
    }


def suite_attack(ctx, original, run_config=None) -> dict:
    """The ``attack`` suite of ``unlearnkit eval``: the robustness table's figures, one entry per attacked model.

    Its options are the eval option ``attack`` (an :class:`AttackOptions` mapping);
    the forget data defaults to the evaluation's forget prompts (the run's forget
    source), the template, batch size, generation length and judges to the
    evaluation's. ``unlearnkit attack`` writes the full detail (attack.json).
    """
    from unlearnkit.reports.attack import summary_rows

    if original is None:
        raise ConfigError("the attack suite measures how much of the unlearning an attack undoes; give the original "
                          "model (--original).")
    raw = dict(ctx.options.attack or {})
    if "forget" not in raw and ctx.options.forget_prompts is not None:
        raw["forget"] = ctx.options.forget_prompts.model_dump()
    raw.setdefault("template", ctx.template)
    raw.setdefault("batch_size", ctx.options.batch_size)
    raw.setdefault("max_new_tokens", ctx.options.max_new_tokens)
    raw.setdefault("progress", ctx.options.progress)
    if ctx.options.judges is not None:
        raw.setdefault("judges", ctx.options.judges)
    try:
        options = AttackOptions.model_validate(raw)
    except ValueError as exc:
        raise ConfigError(f"invalid eval option attack: {exc}") from None
    result = run_attacks((ctx.model, ctx.tokenizer), original, options, run_config=run_config)
    return {"scored": result["data"]["scored"], "attacker_slice": result["data"]["attacker_slice"],
            "rows": summary_rows(result)}
