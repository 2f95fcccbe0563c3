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

    ``denominator(mask)`` turns a local answer-token count into the normaliser
    that makes multi-process gradients equal to single-process ones (see
    :mod:`unlearnkit.losses`). ``reference(batch)`` gives the reference model's
    answer logits (no gradient).
    """

    model: torch.nn.Module
    denominator: Callable[[torch.Tensor], torch.Tensor]
    reference: Callable[[dict], AnswerLogits] | None = None
    step: int = 0
    extras: dict = field(default_factory=dict)

    def logits(self, batch: dict) -> AnswerLogits:
        return answer_logits(self.model, batch)


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
    def add_eos(self) -> bool:
        """Whether training examples end with the end-of-sequence token."""
        return True

    def loss(self, ctx: LossContext, batches: dict[str, dict]) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def finalize(self, model, reference):
        """The unlearned model from the trained one (identity for most methods)."""
        return model
