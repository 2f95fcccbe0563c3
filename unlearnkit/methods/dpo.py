"""DPO for unlearning, and its IdK form (Rafailov et al. 2023; TOFU's IdkDPO).

The forget answer y_l is the dispreferred answer, an alternative answer y_w to
the same prompt is the preferred one (the ``alternative`` batch: for
PKU-SafeRLHF the safe answer to the same prompt when the configured
``data.alternative`` set has it, else a seeded draw from that set, e.g. TOFU's
"I don't know" answers):

    L_DPO = -mean over pairs of log sigmoid(beta * ((lw - lw_ref) - (ll - ll_ref)))

with lw, ll the summed answer-token log-probabilities of y_w and y_l under the
model and lw_ref, ll_ref under the reference (the LoRA-disabled model, or a
frozen copy in full-parameter mode). Minimising it raises y_w against y_l
relative to the reference: the method is told what to say instead, which is
what can make it selective (the unsafe answer falls, the safe one to the same
prompt does not).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from unlearnkit.methods.registry import register
from unlearnkit.methods.sequence_terms import (
    ForgetRetainMethod, RetainLoss, RetainTermParams, forget_nll_value, has_answer, sequence_logprob, sequence_mean,
)


def dpo_loss(win: torch.Tensor, win_ref: torch.Tensor, lose: torch.Tensor, lose_ref: torch.Tensor,
             beta: float) -> torch.Tensor:
    """Per-pair DPO loss (B,): -log sigmoid(beta * ((win - win_ref) - (lose - lose_ref)))."""
    return -F.logsigmoid(beta * ((win - win_ref) - (lose - lose_ref)))


class DPOParams(RetainTermParams):
    beta: float = Field(0.1, gt=0, description="inverse temperature of the preference margin")
    retain_loss: RetainLoss = Field("none", description="none, nll or kl retain term")


@register
class DPO(ForgetRetainMethod):
    name = "dpo"
    Params = DPOParams
    needs = frozenset({"forget", "alternative", "retain"})
    needs_reference = True

    def forget_objective(self, ctx, batches):
        p = self.params
        lose_batch, win_batch = batches["forget"], batches["alternative"]
        lose_al, win_al = ctx.logits(lose_batch), ctx.logits(win_batch)
        lose, win = sequence_logprob(lose_al), sequence_logprob(win_al)
        lose_ref = sequence_logprob(ctx.reference(lose_batch)).detach()
        win_ref = sequence_logprob(ctx.reference(win_batch)).detach()
        # A pair counts when both answers have tokens (a filler row has neither).
        rows = has_answer(lose_al) & has_answer(win_al)
        pref = sequence_mean(ctx, lose_batch, dpo_loss(win, win_ref, lose, lose_ref, p.beta), rows)
        n = rows.sum().clamp(min=1)
        terms = {"dpo": pref.item(), "forget_nll": forget_nll_value(ctx, lose_batch, lose_al).item(),
                 "alternative_nll": forget_nll_value(ctx, win_batch, win_al).item(),
                 "margin": float((((win - win_ref) - (lose - lose_ref)).detach() * rows).sum() / n)}
        return pref, terms, {"alternative": win_al}  # the alternative term reuses these logits
