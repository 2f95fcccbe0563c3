"""The method interface: a loss over forget / retain / random batches."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ClassVar

import torch
from pydantic import BaseModel, ConfigDict

from unlearnkit.losses import AnswerLogits, answer_logits, has_answer


def hidden_states(model, batch: dict, layer: int) -> torch.Tensor:
    """The output of decoder layer ``layer`` (0-based) for ``batch``, ``[B, T, H]``.

    transformers' ``hidden_states`` holds the embeddings first, so layer ``l``
    is entry ``l + 1``. Only one logit column is asked for: the vocabulary
    projection is not paid for.
    """
    kwargs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False,
                  output_hidden_states=True)
    try:
        out = model(**kwargs, logits_to_keep=1)
    except TypeError:
        out = model(**kwargs)
    states = out.hidden_states
    if not -len(states) + 1 <= layer < len(states) - 1:
        raise ValueError(f"layer {layer} does not exist: the model has {len(states) - 1} decoder layers.")
    return states[layer + 1 if layer >= 0 else layer]


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

    ``sequence_normaliser(batch)`` is the same for a mean over SEQUENCES (NPO,
    DPO): the step-wide number of sequences with an answer of that kind of batch
    over ``micro-batches x processes``; a per-sequence mean over the step is the
    sum over this micro-batch's sequences divided by it.

    ``hidden(batch, layer)`` and ``reference_hidden(batch, layer)`` are the
    output of decoder layer ``layer`` (0-based), ``[B, T, H]``, of the trained
    and of the reference model (the latter without gradient).
    """

    model: torch.nn.Module
    denominator: Callable[[torch.Tensor], torch.Tensor]
    reference: Callable[[dict], AnswerLogits] | None = None
    step: int = 0
    extras: dict = field(default_factory=dict)
    reference_hidden_fn: Callable[[dict, int], torch.Tensor] | None = None

    def logits(self, batch: dict) -> AnswerLogits:
        return answer_logits(self.model, batch)

    def normaliser(self, batch: dict, mask: torch.Tensor) -> torch.Tensor:
        attached = batch.get("normaliser") if isinstance(batch, dict) else None
        return attached if attached is not None else self.denominator(mask)

    def sequence_normaliser(self, batch: dict) -> torch.Tensor:
        attached = batch.get("sequence_normaliser") if isinstance(batch, dict) else None
        if attached is not None:
            return attached
        return self.denominator(has_answer(batch["labels"]))

    def hidden(self, batch: dict, layer: int) -> torch.Tensor:
        return hidden_states(self.model, batch, layer)

    def reference_hidden(self, batch: dict, layer: int) -> torch.Tensor:
        if self.reference_hidden_fn is None:
            raise RuntimeError("this method needs a reference model (needs_reference = True); the training loop provides one.")
        return self.reference_hidden_fn(batch, layer)

    def global_value(self, name: str, local: torch.Tensor) -> float:
        """The step-wide value of statistic ``name``; the local one when there is no other part."""
        values = self.extras.get("global") or {}
        return float(values[name]) if name in values else float(local.detach())


class Method:
    """Base class: subclasses set ``name``, ``Params``, ``needs`` and ``loss``."""

    name: ClassVar[str]
    Params: ClassVar[type[MethodParams]] = MethodParams
    # Which batches the loss uses: "forget", "retain", "random" (forget prompts
    # with answers that are not theirs), "alternative" (each forget prompt with an
    # alternative answer from data.alternative: the answer to the same prompt
    # there, else a seeded draw; a refusal, "I don't know", a safe answer).
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

    def setup(self, model) -> None:
        """Called once on the loaded model, before the optimizer is built.

        A method may choose its trainable parameters here (``requires_grad``) or
        register hooks. The default trains what the model config made trainable.
        """

    def state_dict(self) -> dict:
        """JSON-able state the method keeps across checkpoints (resumed by ``load_state_dict``)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        if state:
            raise ValueError(f"method {self.name} keeps no state, but the checkpoint holds {sorted(state)}.")

    def wants_reference(self, lora: bool) -> bool:
        """Whether the run builds the reference (original) model."""
        return self.needs_reference or (self.negates and not lora)

    def finalize(self, model, reference):
        """The unlearned model from the trained one (identity for most methods)."""
        return model

    def finish(self, model, reference, out: "FinishContext"):
        """The unlearned model at the end of training.

        Negating methods first keep the trained model (``harmful/`` or
        ``harmful_adapter/``), then return ``finalize(trained)``; a run stopped by
        a non-finite loss is kept as it was. Other methods return the model.
        """
        if not self.negates:
            return model
        if out.main:
            from unlearnkit.models import is_peft, save_model

            save_model(model, out.tokenizer, out.run_dir / ("harmful_adapter" if is_peft(model) else "harmful"), merge=False)
        if out.failed:
            return model
        return self.finalize(model, reference)


@dataclass
class FinishContext:
    run_dir: "object"
    tokenizer: object
    main: bool
    failed: bool  # stopped by a non-finite loss: nothing is derived from it
