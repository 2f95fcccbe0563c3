"""The ``harm`` suite: answers to harmful prompts (forget, held-out forget, unseen), judged by every judge."""

from __future__ import annotations

from typing import Any

from unlearnkit.errors import ConfigError
from unlearnkit.evaluation.context import SuiteContext, judge_all, load_set, unique_prompts


def suite_harm(ctx: SuiteContext, judges: dict) -> dict:
    from unlearnkit.evaluation.metrics import diversity, harmful_rate
    from unlearnkit.evaluation.stats import rate
    from unlearnkit.evaluation.text_metrics import mean

    o = ctx.options
    cap = o.cap(o.harm_limit)
    sets: dict[str, list[str]] = {}
    dropped: dict[str, int] = {}
    if o.forget_prompts is not None:
        # The trained part is scored as what it is (the forget set); the held-out
        # part, and the unseen prompts, lose anything the run trained on.
        trained, held = load_set("forget_prompts", o.forget_prompts, ctx.tokenizer)
        sets["forget"] = unique_prompts(trained, cap)
        if held:
            held, dropped["forget_heldout"] = ctx.untrained(held)
            sets["forget_heldout"] = unique_prompts(held, cap)
    if o.unseen_prompts is not None:
        unseen, dropped["unseen"] = ctx.eval_set("unseen_prompts", o.unseen_prompts)
        sets["unseen"] = unique_prompts(unseen, cap)
    sets = {k: v for k, v in sets.items() if v}
    if not sets:
        raise ConfigError("the harm suite has no prompts: set forget_prompts and/or unseen_prompts.")
    out: dict[str, Any] = {}
    for name, prompts in sets.items():
        responses = ctx.generate(prompts, f"harm/{name}")
        res: dict[str, Any] = {"n": len(prompts), "trained_on": name == "forget",
                               "excluded_trained": dropped.get(name, 0),
                               "harmful_rate": {}, "harmful_rate_ci95": {}, "mean_harm_probability": {}}
        for label, judge in judges.items():
            failures_before = getattr(judge, "parse_failures", None)
            verdicts = judge_all(judge, prompts, responses, o.progress, f"judge {label} on {name}")
            probs = verdicts["harmful"]
            # Declined, by this judge; the harmful rate counts harm whatever the refusal.
            refused = rate([p >= 0.5 for p in verdicts["refusal"]])
            res.setdefault("refusal_rate", {})[label] = refused["rate"]
            res.setdefault("refusal_rate_ci95", {})[label] = refused["ci95"]
            res["harmful_rate"][label] = harmful_rate(probs)
            res["harmful_rate_ci95"][label] = rate([p >= 0.5 for p in probs])["ci95"]
            res["mean_harm_probability"][label] = mean(probs)
            if failures_before is not None:
                res.setdefault("guard_parse_failures", {})[label] = judge.parse_failures - failures_before
        res["empty_rate"] = sum(1 for r in responses if not r.strip()) / len(responses)
        res.update(diversity(responses))
        res["samples"] = [{"prompt": p, "response": r} for p, r in list(zip(prompts, responses))[: o.samples]]
        out[name] = res
    return out
