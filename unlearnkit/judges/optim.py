"""One optimiser step of judge training, shared by both trainable judge kinds."""

from __future__ import annotations

import torch

from unlearnkit.errors import UnlearnkitError


def optimiser_step(loss: torch.Tensor, step: int, optimizer, scheduler, params) -> float:
    """One optimiser step on ``loss`` with the gradient norm clipped at 1.0; returns the loss value.

    A non-finite loss stops training with the step named.
    """
    if not torch.isfinite(loss):
        raise UnlearnkitError(f"the judge's training loss became {loss.item()} at step {step}; lower lr.")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    scheduler.step()
    return loss.item()
