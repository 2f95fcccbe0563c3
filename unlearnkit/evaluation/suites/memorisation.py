"""The ``memorisation`` suite: greedy continuations of a book's passages against the true text."""

from __future__ import annotations

from unlearnkit.errors import ConfigError
from unlearnkit.evaluation.context import SuiteContext, capped, eval_part, recipe_of


def suite_memorisation(ctx: SuiteContext) -> dict:
    from unlearnkit.evaluation.metrics import memorisation

    o = ctx.options
    if o.memorisation_pairs is None:
        raise ConfigError("the memorisation suite needs the memorisation_pairs data option.")
    src = o.memorisation_pairs
    if src.mode != "pairs" and recipe_of(src) == "text":
        src = src.model_copy(update={"mode": "pairs"})
    pairs = capped(eval_part("memorisation_pairs", src, ctx.tokenizer), o.cap(o.memorisation_limit))
    res = memorisation(ctx.model, ctx.tokenizer, pairs, None, o.memorisation_template, o.batch_size, progress=o.progress)
    generations = res.pop("generations")
    res["samples"] = [
        {"prompt": p.prompt, "truth": p.response, "generated": g} for p, g in list(zip(pairs, generations))[: o.samples]
    ]
    return res
