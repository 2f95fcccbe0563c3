"""The ``perplexity`` suite: perplexity of retain text (C4 chunks by default), per text for intervals."""

from __future__ import annotations

from unlearnkit.errors import ConfigError, DataError
from unlearnkit.evaluation.context import SuiteContext, capped


def suite_perplexity(ctx: SuiteContext) -> dict:
    from unlearnkit.evaluation.metrics import retain_perplexity

    o = ctx.options
    if o.perplexity_texts is None:
        raise ConfigError("the perplexity suite needs the perplexity_texts data option.")
    items, dropped = ctx.eval_set("perplexity_texts", o.perplexity_texts)
    if not items:
        raise DataError(f"the perplexity suite has no text left: all {dropped} were trained on by the run.")
    items = capped(items, o.cap(o.perplexity_limit))
    # A text is prompt + response (chunks have an empty prompt; pairs do not).
    texts = [e.prompt + e.response for e in items]
    res = retain_perplexity(ctx.model, ctx.tokenizer, texts, o.max_length, o.batch_size, o.progress, per_text=True)
    return {
        "perplexity": res["perplexity"],
        "n": len(texts),
        "excluded_trained": dropped,
        # Per text, so that a comparison can put an interval on the change.
        "per_text": {"nll": [round(v, 6) for v in res["nll"]], "tokens": res["tokens"]},
    }
