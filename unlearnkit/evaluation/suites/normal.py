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
        res.update(score_normal(prompts, responses, original_responses, orig_model, orig_tok, ctx.template,
                                o.batch_size, o.max_length, o.progress))
        res["samples"] = [
            {"prompt": p, "original": a, "response": r}
            for p, a, r in list(zip(prompts, original_responses, responses))[: o.samples]
        ]
        return res
    finally:
        if orig_owned:
            del orig_model


def score_normal(prompts: list[str], responses: list[str], original_responses: list[str], orig_model, orig_tok,
                 template: str, batch_size: int = 8, max_length: int = 512, progress: bool = False) -> dict:
    """Normal answers against the original's: similarity (MiniLM cosine, ROUGE-L), fluency (perplexity
    under the original model; None when every answer is empty), the empty-answer rate and distinct-n.

    The ``normal`` suite and the demo score their answers with this one function.
    """
    from unlearnkit.evaluation.metrics import diversity, fluency, similarity_to_original

    sim = similarity_to_original(original_responses, responses)
    res: dict[str, Any] = {"similarity_cosine": sim["cosine"], "similarity_rouge_l": sim["rouge_l"]}
    try:
        res["fluency_perplexity"] = fluency(orig_model, orig_tok, prompts, responses, template, batch_size, max_length,
                                            progress)["perplexity"]
    except DataError:  # every answer empty: there is nothing to score
        res["fluency_perplexity"] = None
    res["empty_rate"] = sum(1 for r in responses if not r.strip()) / len(responses)
    res.update(diversity(responses))
    return res
