"""Gradient-ascent family: ``ga``, ``gradient_difference`` and ``llm_unlearn``.

``llm_unlearn`` is the objective of Yao et al., *Large Language Model
Unlearning* (arXiv 2310.10683), used by *Machine Unlearning in Large Language
Models* (arXiv 2405.15152):

    forget_weight * (-NLL(forget answers))
  + random_weight * NLL(forget questions + random normal answers)
  + retain_weight * KL(original || current) on retain answers

Unlike the reference code, the random-mismatch term scores only the answer
tokens (the prompt is masked exactly), and the KL is averaged over real answer
tokens, never over padding.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from unlearnkit.losses import kl_reference_current, mean_nll
from unlearnkit.methods.registry import register
from unlearnkit.methods.base import LossContext, Method, MethodParams


def _forget_terms(ctx: LossContext, batch: dict) -> torch.Tensor:
    al = ctx.logits(batch)
    return mean_nll(al, ctx.normaliser(batch, al.mask))


# What happens to the end-of-sequence token that ends each forget answer.
# "ascend" (default): it is part of the answer the model learned to give, and is
# ascended with it (the published figures of this project were made so).
# "exclude": it stays in the input but is not a target: the model is pushed away
# from the answer's words, not from ending an answer (Yao et al.'s code appends
# no EOS at all). See docs/methods.md.
ForgetEOS = Literal["ascend", "exclude"]


class AscentParams(MethodParams):
    forget_eos: ForgetEOS = Field("ascend", description="ascend or exclude the EOS token ending each forget answer")


class GAParams(AscentParams):
    pass


@register
class GradientAscent(Method):
    """Gradient ascent: minimise the negated answer NLL of the forget set."""

    name = "ga"
    Params = GAParams

    def loss(self, ctx, batches):
        forget_nll = _forget_terms(ctx, batches["forget"])
        return -forget_nll, {"forget_nll": forget_nll.item()}


class GradientDifferenceParams(AscentParams):
    forget_weight: float = Field(1.0, ge=0)
    retain_weight: float = Field(1.0, ge=0)


@register
class GradientDifference(Method):
    """Gradient ascent on forget answers plus cross-entropy on retain answers."""

    name = "gradient_difference"
    Params = GradientDifferenceParams
    needs = frozenset({"forget", "retain"})

    def loss(self, ctx, batches):
        p = self.params
        forget_nll = _forget_terms(ctx, batches["forget"])
        retain_al = ctx.logits(batches["retain"])
        retain_nll = mean_nll(retain_al, ctx.normaliser(batches["retain"], retain_al.mask))
        total = -p.forget_weight * forget_nll + p.retain_weight * retain_nll
        return total, {"forget_nll": forget_nll.item(), "retain_nll": retain_nll.item()}


class LLMUnlearnParams(AscentParams):
    forget_weight: float = Field(0.5, ge=0)
    random_weight: float = Field(1.0, ge=0)
    retain_weight: float = Field(1.0, ge=0)
    num_random: int = Field(5, ge=1, le=64)


def random_mismatch_nll(ctx: LossContext, batch: dict) -> torch.Tensor:
    """Answer-token NLL of questions paired with answers that are not theirs.

    The batch holds every question repeated ``num_random`` times, so one token
    mean over it is the average over the random answers.
    """
    al = ctx.logits(batch)
    return mean_nll(al, ctx.normaliser(batch, al.mask))


def retain_kl(ctx: LossContext, batch: dict) -> torch.Tensor:
    if ctx.reference is None:
        raise RuntimeError("this method needs a reference model; the training loop provides one.")
    reference = ctx.reference(batch)
    current = ctx.logits(batch)
    return kl_reference_current(reference.logits, current.logits, current.mask, ctx.normaliser(batch, current.mask))


@register
class LLMUnlearn(Method):
    name = "llm_unlearn"
    Params = LLMUnlearnParams
    needs = frozenset({"forget", "retain", "random"})
    needs_reference = True

    @property
    def batch_needs(self) -> frozenset[str]:
        # With random_weight 0 the mismatch batch is not even built.
        return self.needs if self.params.random_weight > 0 else self.needs - {"random"}

    def loss(self, ctx, batches):
        p = self.params
        forget_nll = _forget_terms(ctx, batches["forget"])
        terms = {"forget_nll": forget_nll.item()}
        total = -p.forget_weight * forget_nll
        if p.random_weight > 0:
            random_nll = random_mismatch_nll(ctx, batches["random"])
            total = total + p.random_weight * random_nll
            terms["random_nll"] = random_nll.item()
        kl = retain_kl(ctx, batches["retain"])
        terms["retain_kl"] = kl.item()
        return total + p.retain_weight * kl, terms
