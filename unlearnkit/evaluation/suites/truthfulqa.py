"""The ``truthfulqa`` suite: TruthfulQA MC1 and MC2 on the questions the run did not train on."""

from __future__ import annotations

from unlearnkit.errors import ConfigError, DataError
from unlearnkit.evaluation.context import SuiteContext, capped


def suite_truthfulqa(ctx: SuiteContext) -> dict:
    from unlearnkit.evaluation.metrics import truthfulqa_mc
    from unlearnkit.evaluation.stats import rate_ci

    o = ctx.options
    if o.truthfulqa is None:
        raise ConfigError("the truthfulqa suite needs the truthfulqa data option.")
    cap = o.cap(o.truthfulqa_limit)
    # Questions the run trained on (a TruthfulQA retain set) are not scored.
    mc1, dropped = ctx.eval_set("truthfulqa", o.truthfulqa.model_copy(update={"mc": "mc1"}))
    mc2, _ = ctx.eval_set("truthfulqa", o.truthfulqa.model_copy(update={"mc": "mc2"}))
    if not mc1:
        raise DataError(f"the truthfulqa suite has no question left: all {dropped} were trained on by the run.")
    mc1, mc2 = capped(mc1, cap), capped(mc2, cap)
    res = truthfulqa_mc(ctx.model, ctx.tokenizer, mc1, mc2, ctx.template, o.batch_size, o.max_length, o.progress)
    res["mc1_ci95"] = rate_ci(res["mc1"], res["n"])
    res["excluded_trained"] = dropped
    return res
