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
objective.

Pushing away does not stop stage 2 from changing normal text: what the harmful
copy learns besides harm (the answer style of the harmful data) is negated too.
Two anchoring forms instead MINIMISE a divergence on normal data, so the learned
direction is one that leaves normal text alone:

- ``divergence: anchor``: + KL(original || harmful copy);
- ``divergence: anchor_negated``: + KL(original || negated copy), where the
  negated copy is theta_o - negation_scale * (theta - theta_o), the very model
  stage 2 returns (LoRA only: it is the adapter run with its scaling multiplied
  by -negation_scale, which costs no extra weights). A direction is kept out of
  the harmful delta exactly when its negation would move normal text.

What the anchor measures is ``anchor_measure``: ``kl`` (the KL above) or
``nll``, the rise of the normal answers' own NLL over the original's,
``max(0, NLL_copy - NLL_original)``. The KL weighs tokens by the original's
probabilities and barely sees the unlikely tokens of real text, whose NLL is
what perplexity measures; the hinge at zero keeps the term an anchor (it stops
once normal text is as likely as before) rather than training on it.

See docs/methods.md for the measurements behind the default (hinge) and the
shipped SmolLM2 setting (anchor_negated, nll).

Stage 2, knowledge negation: theta_new = theta_original - lambda * (theta_harmful
- theta_original). Under LoRA the negated adapter delta is subtracted from the
base weights directly; in full-parameter mode the arithmetic runs tensor by
tensor against the frozen original already in memory.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Literal

import torch
from pydantic import Field, model_validator

from unlearnkit.losses import kl_reference_current, mean_nll
from unlearnkit.methods.registry import register
from unlearnkit.methods.base import LossContext, Method, MethodParams
from unlearnkit.methods.finetune import learn_forget
from unlearnkit.methods.gradient_ascent import random_mismatch_nll, retain_kl


class SKUParams(MethodParams):
    e1: float = Field(2.5, ge=0, description="guided distortion weight")
    e2: float = Field(2.5, ge=0, description="random disassociation weight")
    e3: float = Field(1.0, ge=0, description="preservation divergence weight")
    num_random: int = Field(1, ge=1, le=64)
    divergence: Literal["hinge", "unbounded", "anchor", "anchor_negated"] = "hinge"
    kl_target: float = Field(1.0, gt=0, description="hinge: stop pushing once the KL reaches this")
    anchor_measure: Literal["kl", "nll"] = Field(
        "kl", description="anchor modes: KL(original || copy) or the rise of the retain answers' NLL"
    )
    negation_scale: float = Field(1.0, ge=0, description="lambda of stage 2")

    @model_validator(mode="after")
    def _anchor_needs_a_negation(self):
        if self.divergence == "anchor_negated" and self.negation_scale == 0:
            raise ValueError("divergence 'anchor_negated' anchors the negated copy: negation_scale must be > 0.")
        if self.anchor_measure != "kl" and not self.divergence.startswith("anchor"):
            raise ValueError(
                f"anchor_measure {self.anchor_measure!r} applies to the anchor divergences only, "
                f"not to {self.divergence!r}."
            )
        return self


def negate_trained(model, reference, scale: float):
    """Stage 2 on a trained model: returns the negated plain model."""
    from unlearnkit.models import is_peft
    from unlearnkit.negation import negate_lora_, negate_module_

    if is_peft(model):
        return negate_lora_(model, scale)
    if reference is None or reference.frozen is None:
        raise RuntimeError("full-parameter negation needs the frozen original model.")
    # The original in the trained weights' precision when the frozen copy is lower (reference_dtype).
    source = reference.original if getattr(reference, "original", None) is not None else reference.frozen
    return negate_module_(model, source, scale)


def _lora_layers(model) -> list:
    from peft.tuners.lora import LoraLayer

    return [m for m in model.modules() if isinstance(m, LoraLayer)]


@contextmanager
def negated_lora(model, scale: float):
    """Run a LoRA model as theta_o - scale * delta: every adapter's scaling times -scale.

    The forward of a LoRA layer adds ``B(A(x)) * scaling``, so flipping and
    scaling ``scaling`` gives exactly the negated weights of stage 2, with the
    gradient still flowing into A and B. The scalings are restored on exit.
    """
    layers = _lora_layers(model)
    if not layers:
        raise RuntimeError(
            "divergence 'anchor_negated' needs a LoRA model (model.lora.enabled: true); "
            "use 'anchor' in full-parameter mode."
        )
    if any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules()):
        # Checkpointed layers recompute their forward during backward, after the
        # scalings are restored: the gradient would be that of the un-negated copy.
        raise RuntimeError(
            "divergence 'anchor_negated' cannot run with gradient checkpointing; "
            "set train.gradient_checkpointing: false."
        )
    saved = [dict(m.scaling) for m in layers]
    try:
        for m in layers:
            for adapter in m.scaling:
                m.scaling[adapter] = -scale * m.scaling[adapter]
        yield model
    finally:
        for m, old in zip(layers, saved):
            m.scaling.clear()
            m.scaling.update(old)


def retain_anchor_part(ctx: LossContext, batch: dict, measure: str, negated_scale: float | None) -> torch.Tensor:
    """This batch's share of how far a copy moves the retain answers from the original (before any clamp).

    The copy is the trained model, or with ``negated_scale`` its negation
    theta_o - scale * (theta - theta_o). ``measure`` "kl": KL(original || copy);
    "nll": NLL_copy - NLL_original of the answers' own tokens (the anchor clamps
    its step-wide value at zero).
    """
    if ctx.reference is None:
        raise RuntimeError("this method needs a reference model; the training loop provides one.")
    reference = ctx.reference(batch)
    if negated_scale is None:
        current = ctx.logits(batch)
    else:
        with negated_lora(ctx.model, negated_scale):
            current = ctx.logits(batch)
    denominator = ctx.normaliser(batch, current.mask)
    if measure == "kl":
        return kl_reference_current(reference.logits, current.logits, current.mask, denominator)
    return mean_nll(current, denominator) - mean_nll(reference, denominator)


def retain_anchor(ctx: LossContext, batch: dict, measure: str, negated_scale: float | None) -> torch.Tensor:
    """The anchor term: KL(original || copy), or max(0, NLL_copy - NLL_original) of the step."""
    part = retain_anchor_part(ctx, batch, measure, negated_scale)
    if measure == "kl":
        return part
    # Clamp the step-wide rise, not this micro-batch's or process's part of it:
    # the gate is the same on every part, so the parts add up to the clamped mean.
    return part if ctx.global_value("retain_nll_rise", part) > 0 else part * 0.0


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

    # The forget NLL falls in stage 1 (the copy learns the harmful answers).
    forget_loss_falls = True

    @property
    def batch_needs(self) -> frozenset[str]:
        # With e2 = 0 the random-disassociation batch is not even built.
        return self.needs if self.params.e2 > 0 else self.needs - {"random"}

    @property
    def supports_gradient_checkpointing(self) -> bool:
        # anchor_negated flips the adapter scalings inside the forward; a
        # checkpointed layer would recompute it un-negated during backward.
        return self.params.divergence != "anchor_negated"

    @property
    def needs_global_stats(self) -> bool:
        p = self.params
        return p.e3 > 0 and (p.divergence == "hinge" or (p.divergence.startswith("anchor") and p.anchor_measure == "nll"))

    def global_stats(self, ctx: LossContext, batches):
        p = self.params
        if p.divergence == "hinge":
            return {"retain_kl": retain_kl(ctx, batches["retain"])}
        if p.divergence.startswith("anchor") and p.anchor_measure == "nll":
            scale = p.negation_scale if p.divergence == "anchor_negated" else None
            return {"retain_nll_rise": retain_anchor_part(ctx, batches["retain"], "nll", scale)}
        return {}

    def loss(self, ctx: LossContext, batches):
        p = self.params
        al = ctx.logits(batches["forget"])
        harmful_nll = mean_nll(al, ctx.normaliser(batches["forget"], al.mask))
        terms = {"forget_nll": harmful_nll.item()}
        total = p.e1 * harmful_nll
        if p.e2 > 0:
            random_nll = random_mismatch_nll(ctx, batches["random"])
            total = total + p.e2 * random_nll
            terms["random_nll"] = random_nll.item()
        if p.divergence in ("anchor", "anchor_negated"):
            # Keep normal text where the original has it (in the copy stage 2 returns).
            scale = p.negation_scale if p.divergence == "anchor_negated" else None
            divergence = retain_anchor(ctx, batches["retain"], p.anchor_measure, scale)
            terms["retain_kl" if p.anchor_measure == "kl" else "retain_nll_rise"] = divergence.item()
        else:
            kl = retain_kl(ctx, batches["retain"])
            if p.divergence == "unbounded":
                divergence = -kl
            else:
                # The hinge of the step-wide KL (the mean of hinges is not the hinge of the mean).
                active = p.kl_target - ctx.global_value("retain_kl", kl) > 0
                divergence = (p.kl_target - kl) if active else kl * 0.0
            terms["retain_kl"] = kl.item()
        return total + p.e3 * divergence, terms

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
    forget_loss_falls = True

    def loss(self, ctx, batches):
        return learn_forget(ctx, batches)

    def finalize(self, model, reference):
        from unlearnkit.models import is_peft

        if not is_peft(model) and reference is None:
            raise RuntimeError("task_vector in full-parameter mode needs the original weights.")
        return negate_trained(model, reference, self.params.negation_scale)
