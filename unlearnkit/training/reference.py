"""The reference (original) model of a run: KL anchors, hidden states, negation."""

from __future__ import annotations

import copy

import torch

from unlearnkit.config import RunConfig
from unlearnkit.losses import AnswerLogits, answer_logits
from unlearnkit.methods.base import hidden_states
from unlearnkit.models import is_peft


class Reference:
    """The original model, for KL terms.

    With LoRA it is the same weights with the adapter disabled (no second copy);
    in full-parameter mode a frozen deep copy made before training, optionally in
    another dtype or on another device. It always runs in eval mode without
    gradient, so its outputs never move.
    """

    def __init__(self, model, cfg: RunConfig, for_negation: bool = False):
        self.lora = is_peft(model)
        self.frozen = None
        # The original weights for stage 2 when the frozen copy is kept in a lower
        # precision than the trained weights (reference_dtype: bfloat16 with float32
        # weights): a copy in the weights' own dtype on the CPU, so that negation
        # computes from the true original (scale 0 returns it bit for bit).
        self.original: dict[str, torch.Tensor] | None = None
        if not self.lora:
            ref_dtype = None if cfg.train.reference_dtype == "same" else getattr(torch, cfg.train.reference_dtype)
            if for_negation and ref_dtype is not None and any(
                t.is_floating_point() and torch.finfo(ref_dtype).eps > torch.finfo(t.dtype).eps
                for t in model.state_dict().values()
            ):
                self.original = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            frozen = copy.deepcopy(model)
            if cfg.train.reference_dtype != "same":
                frozen = frozen.to(getattr(torch, cfg.train.reference_dtype))
            if cfg.train.reference_device:
                frozen = frozen.to(cfg.train.reference_device)
            frozen.eval()
            for p in frozen.parameters():
                p.requires_grad_(False)
            self.frozen = frozen

    def shard(self, acc) -> None:
        """Under FSDP, shard the frozen copy like the trained model (no full copy per process)."""
        from accelerate.utils import DistributedType

        if self.frozen is None or acc.distributed_type != DistributedType.FSDP:
            return
        self.frozen = acc.prepare_model(self.frozen, evaluation_mode=False)
        self.frozen.eval()

    def _run(self, live_model, batch: dict, forward):
        """``forward(model, batch)`` on the original model, without gradient, on the batch's device."""
        with torch.no_grad():
            if self.frozen is not None:
                device = next(self.frozen.parameters()).device
                out = forward(self.frozen, {k: v.to(device) for k, v in batch.items()})
                target = batch["input_ids"].device
                if isinstance(out, AnswerLogits):
                    return AnswerLogits(out.logits.to(target), out.targets.to(target), out.mask.to(target))
                return out.to(target)
            was_training = live_model.training
            live_model.eval()  # no dropout in the anchor
            try:
                with live_model.disable_adapter():
                    return forward(live_model, batch)
            finally:
                live_model.train(was_training)

    def __call__(self, live_model, batch: dict) -> AnswerLogits:
        return self._run(live_model, batch, answer_logits)

    def hidden(self, live_model, batch: dict, layer: int) -> torch.Tensor:
        """The original model's output of decoder layer ``layer`` (see :func:`hidden_states`)."""
        return self._run(live_model, batch, lambda m, b: hidden_states(m, b, layer))


def trainable_state(model) -> dict[str, torch.Tensor]:
    """Trainable parameters by name, one entry per shared storage (tied weights)."""
    seen: set[int] = set()
    out = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        ptr = p.data_ptr()
        if ptr in seen:
            continue
        seen.add(ptr)
        out[name] = p.detach().contiguous().cpu()
    return out

