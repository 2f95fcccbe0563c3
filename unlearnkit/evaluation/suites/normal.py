"""The ``normal`` suite: answers to normal prompts compared with the original model's."""

from __future__ import annotations

import gc
from typing import Any

import torch

from unlearnkit.errors import ConfigError, DataError
from unlearnkit.evaluation.context import SuiteContext, unique_prompts


def suite_normal(ctx: SuiteContext, holder: dict, original, base_cfg) -> dict:
    """Answers to normal prompts compared with the original model's.

    The model under test answers first; it is then released (when this run
    loaded it) before the original is loaded, so two full models are never in
    memory at once.
    """
    from unlearnkit.evaluation.metrics import diversity, fluency, similarity_to_original
    from unlearnkit.evaluation.suite import load_for_eval

    o = ctx.options
    if o.normal_prompts is None:
        raise ConfigError("the normal suite needs the normal_prompts data option.")
    normal, dropped = ctx.eval_set("normal_prompts", o.normal_prompts)
    prompts = unique_prompts(normal, o.cap(o.normal_limit))
    if not prompts:
        raise DataError("normal_prompts gave no prompt" + (f" the run did not train on ({dropped} dropped)." if dropped else "."))
    responses = ctx.generate(prompts, "normal")
    if holder.get("owned"):
        holder.pop("model", None)
        ctx.model = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    orig_model, orig_tok, orig_owned, orig_desc = load_for_eval(original, base_cfg)
    try:
        original_responses = ctx.generate(prompts, "normal/original", orig_model, orig_tok)
        res: dict[str, Any] = {"n": len(prompts), "excluded_trained": dropped}
        sim = similarity_to_original(original_responses, responses)
        res["similarity_cosine"] = sim["cosine"]
        res["similarity_rouge_l"] = sim["rouge_l"]
        try:
            flu = fluency(orig_model, orig_tok, prompts, responses, ctx.template, o.batch_size, o.max_length, o.progress)
            res["fluency_perplexity"] = flu["perplexity"]
        except DataError:  # every answer empty: there is nothing to score
            res["fluency_perplexity"] = None
        res["empty_rate"] = sum(1 for r in responses if not r.strip()) / len(responses)
        res.update(diversity(responses))
        res["samples"] = [
            {"prompt": p, "original": a, "response": r}
            for p, a, r in list(zip(prompts, original_responses, responses))[: o.samples]
        ]
        return res
    finally:
        if orig_owned:
            del orig_model
