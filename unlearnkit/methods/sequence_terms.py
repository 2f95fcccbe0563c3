"""Pieces shared by the sequence-level methods (NPO, SimNPO, DPO, UNDIAL, RMU).

* per-sequence answer log-probabilities and lengths;
* the step-wide per-sequence mean (exact under gradient accumulation and
  several processes when the training loop supplies the sequence count);
* the optional retain term (cross-entropy or KL to the reference) that most
  of these methods add, with its typed parameters.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from unlearnkit.losses import AnswerLogits, kl_reference_current, mean_nll, sequence_lengths, sequence_logprob
from unlearnkit.methods.base import LossContext, Method, MethodParams


__all__ = ["sequence_lengths", "sequence_logprob", "has_answer", "sequence_mean", "forget_nll_value",
           "RetainLoss", "RetainTermParams", "ForgetRetainMethod", "retain_term"]


def has_answer(al: AnswerLogits) -> torch.Tensor:
    """True for the sequences that carry answer tokens (a masked filler row carries none)."""
    return al.mask.any(dim=1)


def sequence_mean(ctx: LossContext, batch: dict, values: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Mean over the step's sequences of ``values`` (B,), counting only ``rows``.

    The sum over this micro-batch divided by the step-wide sequence share the
    loop provides (``ctx.sequence_normaliser``; for a batch built by hand, the
    count of this batch's sequences with an answer).
    """
    total = (values * rows).sum()
    denom = torch.as_tensor(ctx.sequence_normaliser(batch), dtype=total.dtype, device=total.device)
    return total / torch.where(denom > 0, denom, torch.ones_like(denom))


def forget_nll_value(ctx: LossContext, batch: dict, al: AnswerLogits) -> torch.Tensor:
    """The forget answers' token-mean NLL (the figure ``train.max_forget_loss`` watches)."""
    return mean_nll(al, ctx.normaliser(batch, al.mask)).detach()


RetainLoss = Literal["none", "nll", "kl"]


class RetainTermParams(MethodParams):
    """``forget_weight * objective(forget) + retain_weight * term(retain) + alternative_weight * nll(alternative)``."""

    forget_weight: float = Field(1.0, ge=0)
    retain_loss: RetainLoss = Field("nll", description="none, nll (cross-entropy on retain answers) or kl (to the reference)")
    retain_weight: float = Field(1.0, ge=0)
    alternative_weight: float = Field(
        0.0, ge=0, description="cross-entropy on the data.alternative answers (e.g. PKU's safe answer to each forget "
        "prompt), so the forget prompts are taught an answer as their harmful one is pushed away; 0: none")


def retain_term(ctx: LossContext, batch: dict, kind: str) -> torch.Tensor:
    """Cross-entropy on the retain answers (``nll``) or KL(reference || current) on them (``kl``)."""
    current = ctx.logits(batch)
    denom = ctx.normaliser(batch, current.mask)
    if kind == "nll":
        return mean_nll(current, denom)
    if kind == "kl":
        if ctx.reference is None:
            raise RuntimeError("retain_loss kl needs the reference model; the training loop provides one.")
        reference = ctx.reference(batch)
        return kl_reference_current(reference.logits, current.logits, current.mask, denom)
    raise ValueError(f"unknown retain_loss {kind!r}")


def _has_retain(params: RetainTermParams) -> bool:
    return params.retain_loss != "none" and params.retain_weight > 0


class ForgetRetainMethod(Method):
    """A method whose loss is a forget objective plus the optional retain term.

    Subclasses define ``forget_value(ctx, batch, al) -> (value, terms)`` on the forget batch and
    its answer logits (the logged terms get the forget NLL added), or, for a loss that reads other
    batches too, ``forget_objective(ctx, batches) -> (value, terms)`` itself; an objective that
    already ran the model on the alternative batch may return ``(value, terms, {"alternative": al})``
    so the alternative term reuses those logits instead of a second forward pass.
    """

    Params = RetainTermParams
    needs = frozenset({"forget", "retain"})

    @property
    def batch_needs(self) -> frozenset[str]:
        # The retain batch is built only when there is a retain term, the alternative batch when
        # the objective or the alternative term reads it.
        needs = self.needs if _has_retain(self.params) else self.needs - {"retain"}
        return needs | {"alternative"} if self.params.alternative_weight > 0 else needs

    def forget_objective(self, ctx: LossContext, batches: dict[str, dict]) -> tuple[torch.Tensor, dict[str, float]]:
        batch = batches["forget"]
        al = ctx.logits(batch)
        value, terms = self.forget_value(ctx, batch, al)
        return value, {**terms, "forget_nll": forget_nll_value(ctx, batch, al).item()}

    def forget_value(self, ctx: LossContext, batch: dict, al: AnswerLogits) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def loss(self, ctx, batches):
        p = self.params
        value, terms, *computed = self.forget_objective(ctx, batches)
        total = p.forget_weight * value
        if _has_retain(p):
            retain = retain_term(ctx, batches["retain"], p.retain_loss)
            terms[f"retain_{p.retain_loss}"] = retain.item()
            total = total + p.retain_weight * retain
        if p.alternative_weight > 0:
            batch = batches["alternative"]
            al = computed[0].get("alternative") if computed else None
            al = al if al is not None else ctx.logits(batch)
            alternative = mean_nll(al, ctx.normaliser(batch, al.mask))
            terms["alternative_ce"] = alternative.item()
            total = total + p.alternative_weight * alternative
        return total, terms
