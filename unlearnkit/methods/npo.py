"""NPO: negative preference optimization (Zhang et al. 2024, arXiv 2404.05868).

    L_NPO = (2 / beta) * mean over forget sequences of log(1 + (pi_theta(y|x) / pi_ref(y|x))^beta)
          = (2 / beta) * mean softplus(beta * (log pi_theta(y|x) - log pi_ref(y|x)))

with log pi(y|x) the sum of the answer tokens' log-probabilities (the prompt is
masked). The gradient is gradient ascent's, weighted per sequence by
2 * sigmoid(beta * log-ratio): a sequence the model has already moved away from
(ratio << 1) stops pulling, which is what slows NPO's collapse. The variants
add a retain term: ``retain_loss: nll`` is NPO+RT, ``kl`` is NPO+KL.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from unlearnkit.methods.registry import register
from unlearnkit.methods.sequence_terms import (
    ForgetRetainMethod, RetainTermParams, has_answer, sequence_logprob, sequence_mean,
)


def npo_loss(logp: torch.Tensor, ref_logp: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-sequence NPO loss (B,): (2 / beta) * softplus(beta * (logp - ref_logp))."""
    return 2.0 / beta * F.softplus(beta * (logp - ref_logp))


class NPOParams(RetainTermParams):
    beta: float = Field(0.1, gt=0, description="inverse temperature of the log-ratio")


@register
class NPO(ForgetRetainMethod):
    name = "npo"
    Params = NPOParams
    needs_reference = True

    def forget_value(self, ctx, batch, al):
        ref = ctx.reference(batch)
        logp, ref_logp = sequence_logprob(al), sequence_logprob(ref).detach()
        forget = sequence_mean(ctx, batch, npo_loss(logp, ref_logp, self.params.beta), has_answer(al))
        log_ratio = ((logp - ref_logp).detach() * has_answer(al)).sum() / has_answer(al).sum().clamp(min=1)
        return forget, {"npo": forget.item(), "log_ratio": float(log_ratio)}
