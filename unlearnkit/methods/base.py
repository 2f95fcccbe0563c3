"""The method interface: a loss over forget / retain / random batches."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ClassVar

import torch
from pydantic import BaseModel, ConfigDict

from unlearnkit.losses import AnswerLogits, answer_logits


class MethodParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass
class LossContext:
    """What a method's loss may use during one training step.

    ``normaliser(batch, mask)`` is what a token mean over ``batch`` divides by.
    The training loop attaches it to each batch (``batch["normaliser"]``): the
    answer-token count of that kind of batch over the whole optimizer step (every
    micro-batch, every process) divided by ``micro-batches x processes``, so that
    the accumulated, all-reduced gradient is the gradient of one token mean over
    the step, whatever the lengths (see :mod:`unlearnkit.losses`). Without it
    (a batch built by hand), ``denominator(mask)`` is used.

    ``global_value(name, local)`` is the step-wide value of a statistic the
    method asked for with :meth:`Method.global_stats`, so that a hinge or clamp
    acts on the mean over the whole step, not on one micro-batch's or process's
    part of it. ``reference(batch)`` gives the reference model's answer logits
    (no gradient).
    """

    model: torch.nn.Module
    denominator: Callable[[torch.Tensor], torch.Tensor]
    reference: Callable[[dict], AnswerLogits] | None = None
    step: int = 0
    extras: dict = field(default_factory=dict)

    def logits(self, batch: dict) -> AnswerLogits:
        return answer_logits(self.model, batch)

    def normaliser(self, batch: dict, mask: torch.Tensor) -> torch.Tensor:
        attached = batch.get("normaliser") if isinstance(batch, dict) else None
        return attached if attached is not None else self.denominator(mask)

    def global_value(self, name: str, local: torch.Tensor) -> float:
        """The step-wide value of statistic ``name``; the local one when there is no other part."""
        values = self.extras.get("global") or {}
        return float(values[name]) if name in values else float(local.detach())


class Method:
    """Base class: subclasses set ``name``, ``Params``, ``needs`` and ``loss``."""

    name: ClassVar[str]
    Params: ClassVar[type[MethodParams]] = MethodParams
    # Which batches the loss uses: "forget", "retain", "random".
    needs: ClassVar[frozenset[str]] = frozenset({"forget"})
    # Whether the loss compares with the original model (KL terms).
    needs_reference: ClassVar[bool] = False
    # Where the random-mismatch answers come from: "random" (a pool of normal
    # answers) or "forget" (other forget answers, SKU's random disassociation).
    random_pool: ClassVar[str] = "random"
    # The summary reports this term's value as the forget loss (positive NLL).
    forget_term: ClassVar[str] = "forget_nll"
    # True when training builds a model to negate (SKU, task vectors): the
    # result is ``finalize(trained)``, and the trained model is kept as well.
    negates: ClassVar[bool] = False
    # True when the forget NLL falls during training (the method LEARNS the
    # forget data: SKU's harmful copy, task vectors, finetuning). A ceiling on
    # it (train.max_forget_loss) would be met at the start, so it is refused.
    forget_loss_falls: ClassVar[bool] = False

    def __init__(self, params: MethodParams | None = None):
        self.params = params if params is not None else self.Params()

    @property
    def batch_needs(self) -> frozenset[str]:
        """The batches this instance's loss reads (its parameters may drop one)."""
        return self.needs

    @property
    def num_random(self) -> int:
        return int(getattr(self.params, "num_random", 0))

    @property
    def forget_eos_is_target(self) -> bool:
        """Whether the EOS token ending a forget answer is a target of the loss (``forget_eos``)."""
        return getattr(self.params, "forget_eos", "ascend") != "exclude"

    @property
    def add_eos(self) -> bool:
        """Whether training examples end with the end-of-sequence token."""
        return True

    @property
    def supports_gradient_checkpointing(self) -> bool:
        """False where the loss cannot run with checkpointed layers (``auto`` then leaves it off)."""
        return True

    @property
    def needs_global_stats(self) -> bool:
        """Whether the loss has a non-linear function (hinge, clamp) of a step-wide mean."""
        return False

    def global_stats(self, ctx: LossContext, batches: dict[str, dict]) -> dict[str, torch.Tensor]:
        """This micro-batch's part of the statistics that :meth:`LossContext.global_value` returns.

        Called without gradient before the step's backward passes, with the same
        normalisers as :meth:`loss`: each value is a token mean's share, so the
        loop's average over micro-batches and processes is the step-wide mean.
        """
        return {}

    def loss(self, ctx: LossContext, batches: dict[str, dict]) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def finalize(self, model, reference):
        """The unlearned model from the trained one (identity for most methods)."""
        return model
