"""SKU: selective knowledge negation unlearning (arXiv 2402.10058), and the task-vector baseline.

Stage 1, harmful knowledge acquisition, trains a copy to be MORE harmful:

    e1 * NLL(harmful answers)                                  guided distortion
  + e2 * NLL(harmful questions + other, random harmful answers) random disassociation
  + e3 * D(original || current) on normal data                 preservation divergence

The divergence term pushes the harmful copy's distribution on normal data AWAY
from the original's, so the harmful direction carries no normal knowledge (which
stage 2 would otherwise remove too). As published it maximises the KL
(``divergence: unbounded``: the term is -KL and can grow without limit). The
bounded form (``divergence: hinge``) is ``max(0, kl_target - KL)``: it pushes
until the KL reaches ``kl_target`` and then stops, so it cannot take over the
objective. See docs/methods.md for the measurements behind the default.

Stage 2, knowledge negation: theta_new = theta_original - lambda * (theta_harmful
- theta_original). Under LoRA the negated adapter delta is subtracted from the
base weights directly; in full-parameter mode the arithmetic runs tensor by
tensor against the frozen original already in memory.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from unlearnkit.losses import mean_nll
from unlearnkit.methods import register
from unlearnkit.methods.base import LossContext, Method, MethodParams
from unlearnkit.methods.gradient_ascent import random_mismatch_nll, retain_kl


class SKUParams(MethodParams):
    e1: float = Field(2.5, ge=0, description="guided distortion weight")
    e2: float = Field(2.5, ge=0, description="random disassociation weight")
    e3: float = Field(1.0, ge=0, description="preservation divergence weight")
    num_random: int = Field(1, ge=1, le=64)
    divergence: Literal["hinge", "unbounded"] = "hinge"
    kl_target: float = Field(1.0, gt=0, description="hinge: stop pushing once the KL reaches this")
    negation_scale: float = Field(1.0, ge=0, description="lambda of stage 2")


def negate_trained(model, reference, scale: float):
    """Stage 2 on a trained model: returns the negated plain model."""
    from unlearnkit.models import is_peft
    from unlearnkit.negation import negate_lora_, negate_module_

    if is_peft(model):
        return negate_lora_(model, scale)
    if reference is None or reference.frozen is None:
        raise RuntimeError("full-parameter negation needs the frozen original model.")
    return negate_module_(model, reference.frozen, scale)


@register
class SKU(Method):
    name = "sku"
    Params = SKUParams
    needs = frozenset({"forget", "random", "retain"})
    needs_reference = True
    random_pool = "forget"
    # The forget NLL falls in stage 1 (the copy learns the harmful answers).
    forget_term = "forget_nll"
    # Training makes a harmful copy; the unlearned model is its negation.
    negates = True

    def loss(self, ctx: LossContext, batches):
        p = self.params
        al = ctx.logits(batches["forget"])
        harmful_nll = mean_nll(al, ctx.denominator(al.mask))
        random_nll = random_mismatch_nll(ctx, batches["random"])
        kl = retain_kl(ctx, batches["retain"])
        if p.divergence == "unbounded":
            divergence = -kl
        else:
            divergence = torch.clamp(p.kl_target - kl, min=0.0)
        total = p.e1 * harmful_nll + p.e2 * random_nll + p.e3 * divergence
        return total, {"forget_nll": harmful_nll.item(), "random_nll": random_nll.item(), "retain_kl": kl.item()}

    def finalize(self, model, reference):
        return negate_trained(model, reference, self.params.negation_scale)


class TaskVectorParams(MethodParams):
    negation_scale: float = Field(1.0, ge=0, description="lambda of the negation")


@register
class TaskVector(Method):
    """The task-vector baseline: finetune on harmful answers only, then negate."""

    name = "task_vector"
    Params = TaskVectorParams
    needs = frozenset({"forget"})
    needs_reference = False
    negates = True

    def loss(self, ctx, batches):
        al = ctx.logits(batches["forget"])
        nll = mean_nll(al, ctx.denominator(al.mask))
        return nll, {"forget_nll": nll.item()}

    def finalize(self, model, reference):
        from unlearnkit.models import is_peft

        if not is_peft(model) and reference is None:
            raise RuntimeError("task_vector in full-parameter mode needs the original weights.")
        return negate_trained(model, reference, self.params.negation_scale)
