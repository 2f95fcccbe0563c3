"""The training loop of both trainable judge kinds: argument checks, the optimiser step, the step loop."""

from __future__ import annotations

from typing import Callable, Iterable

import torch

from unlearnkit.console import show_progress
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


def check_training_args(lr: float, **counts: int) -> None:
    """Counts (epochs, batch sizes) of at least 1 and a positive learning rate, or an error naming the argument."""
    for name, value in counts.items():
        if value < 1:
            raise UnlearnkitError(f"{name} must be >= 1, got {value}.")
    if not lr > 0:
        raise UnlearnkitError(f"lr must be > 0, got {lr}.")


def run_steps(total: int, epoch_batches: Callable[[], Iterable[list[int]]], loss_of: Callable[[list[int]], torch.Tensor],
              optimizer, scheduler, params, progress: bool) -> int:
    """``total`` optimiser steps over the batches of item indices ``epoch_batches()`` gives, epoch after epoch.

    ``loss_of(indices)`` is the batch's loss. The bar shows a running mean of the loss. Returns the steps run.
    """
    from tqdm.auto import tqdm

    step, running = 0, None
    bar = tqdm(total=total, desc="training judge", disable=not show_progress(progress), unit="step")
    while step < total:
        for idx in epoch_batches():
            if step >= total:
                break
            value = optimiser_step(loss_of(idx), step, optimizer, scheduler, params)
            step += 1
            running = value if running is None else 0.9 * running + 0.1 * value
            bar.update(1)
            bar.set_postfix(loss=f"{running:.4f}")
        else:
            if step == 0:
                raise UnlearnkitError("the judge's training data gave no batch.")
    bar.close()
    return step
