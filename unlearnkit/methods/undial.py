"""UNDIAL: unlearning by self-distillation with adjusted logits (Dong et al. 2024, arXiv 2402.10052).

On each forget answer token, the target distribution is the reference model's
with the logit of the token actually in the answer lowered by ``gamma``:

    q_t = softmax(z_ref,t - gamma * onehot(y_t))
    L_UNDIAL = mean over answer tokens of KL(q_t || pi_theta(. | x, y_<t))

Every other token keeps its relative probability, so the model is moved off the
memorised token without being pushed anywhere arbitrary, and the loss is
bounded below (zero once the model matches q), unlike gradient ascent. The KL
and the cross-entropy to q differ by q's entropy, a constant: the gradient is
the reference code's (which uses the cross-entropy); the logged value is the KL.
"""

from __future__ import annotations

import torch
from pydantic import Field

from unlearnkit.losses import kl_reference_current
from unlearnkit.methods.registry import register
from unlearnkit.methods.sequence_terms import ForgetRetainMethod, RetainTermParams


def lowered_logits(reference_logits: torch.Tensor, targets: torch.Tensor, gamma: float) -> torch.Tensor:
    """The target's logits: the reference's with each position's answer-token logit lowered by gamma."""
    drop = torch.full_like(targets.unsqueeze(-1), -gamma, dtype=torch.float32)
    return reference_logits.float().scatter_add(-1, targets.unsqueeze(-1), drop)


class UNDIALParams(RetainTermParams):
    gamma: float = Field(10.0, gt=0, description="how much the answer token's logit is lowered in the target")


@register
class UNDIAL(ForgetRetainMethod):
    name = "undial"
    Params = UNDIALParams
    needs_reference = True

    def forget_value(self, ctx, batch, al):
        target = lowered_logits(ctx.reference(batch).logits.detach(), al.targets, self.params.gamma)
        # KL(q || current), token mean over the answer tokens (the shared KL, with q as the reference).
        forget = kl_reference_current(target, al.logits, al.mask, ctx.normaliser(batch, al.mask))
        return forget, {"undial_kl": forget.item()}
