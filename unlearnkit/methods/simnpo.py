"""SimNPO: simple NPO without a reference model (Fan et al. 2024, arXiv 2410.07163).

    L_SimNPO = -(2 / beta) * mean over forget sequences of
               log sigmoid(-(beta / |y|) * log pi_theta(y|x) - gamma)

with |y| the number of answer tokens and log pi the sum of their
log-probabilities, so (1 / |y|) * log pi is minus the sequence's mean token NLL:
the per-sequence weight of the gradient no longer favours short answers (NPO's
reference ratio does), and no reference model is held. ``gamma`` is a margin;
the paper's formula puts it outside the beta scaling, as here (open-unlearning
subtracts its ``delta`` before multiplying by beta: gamma = beta * delta).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from unlearnkit.methods.registry import register
from unlearnkit.methods.sequence_terms import (
    ForgetRetainMethod, RetainTermParams, has_answer, sequence_lengths, sequence_logprob,
    sequence_mean,
)


def simnpo_loss(logp: torch.Tensor, lengths: torch.Tensor, beta: float, gamma: float) -> torch.Tensor:
    """Per-sequence SimNPO loss (B,): -(2 / beta) * log sigmoid(-(beta / |y|) * logp - gamma)."""
    mean_logp = logp / lengths.clamp(min=1).to(logp.dtype)
    return -2.0 / beta * F.logsigmoid(-beta * mean_logp - gamma)


class SimNPOParams(RetainTermParams):
    beta: float = Field(2.5, gt=0, description="inverse temperature of the length-normalised log-probability")
    gamma: float = Field(0.0, ge=0, description="margin inside the sigmoid")
    # Reference-free: a KL retain term would need the reference model the method exists to avoid.
    retain_loss: str = Field("nll", pattern="^(none|nll)$", description="none or nll (cross-entropy on retain answers)")


@register
class SimNPO(ForgetRetainMethod):
    name = "simnpo"
    Params = SimNPOParams
    needs_reference = False

    def forget_value(self, ctx, batch, al):
        p = self.params
        per_seq = simnpo_loss(sequence_logprob(al), sequence_lengths(al), p.beta, p.gamma)
        forget = sequence_mean(ctx, batch, per_seq, has_answer(al))
        return forget, {"simnpo": forget.item()}
