"""Run set-up shared by the loop: the accelerator, cross-process agreement, seeds, guards on settings."""

from __future__ import annotations

import random

import torch

from unlearnkit.config import RunConfig, check_forget_stop  # noqa: F401 (re-exported)
from unlearnkit.errors import ConfigError
from unlearnkit.methods import Method


def make_accelerator(cfg: RunConfig, run_dir=None):
    """The run's accelerator: mixed precision as configured (``auto``: bf16 on a GPU that has it), CPU if asked."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedType

    mp = cfg.train.mixed_precision
    if mp == "auto":
        mp = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    cpu = cfg.model.device == "cpu" or not torch.cuda.is_available()
    from unlearnkit import trackers

    acc = Accelerator(mixed_precision=mp, cpu=cpu, **trackers.accelerator_kwargs(cfg.train.report_to, run_dir))
    _warn_if_not_sharded(acc)
    if acc.distributed_type == DistributedType.DEEPSPEED and cfg.train.grad_accum > 1:
        # accelerate's DeepSpeed backward also steps the engine after every micro-batch
        # unless its own accumulation drives it; ours would step ga times per step.
        raise ConfigError("train.grad_accum > 1 is not supported under DeepSpeed; use grad_accum: 1 "
                          "(and a larger batch_size), or DDP / FSDP.")
    return acc


def _warn_if_not_sharded(acc) -> None:
    """accelerate runs FSDP only on accelerators: say so when an FSDP launch falls back on the CPU."""
    import os

    from accelerate.utils import DistributedType

    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and acc.distributed_type != DistributedType.FSDP:
        if acc.is_main_process:
            print(f"warning: an FSDP launch runs as {acc.distributed_type.value} here (accelerate shards only on GPUs and "
                  "other accelerators; on the CPU every process holds the whole model). See docs/training.md.", flush=True)


def resolve_gradient_checkpointing(setting, method: Method, device_type: str) -> bool:
    """Whether a run checkpoints its layers.

    ``auto``: on under CUDA (memory is what a GPU lacks), off on the CPU, and
    off wherever the method's loss cannot run with checkpointed layers (SKU's
    ``anchor_negated`` flips the adapter inside the forward, and the recomputed
    forward of the backward pass would not see it). ``true`` with such a method
    is refused with the key named.
    """
    if setting is True:
        if not method.supports_gradient_checkpointing:
            raise ConfigError(
                f"train.gradient_checkpointing: true cannot be used with method {method.name} as configured "
                "(divergence anchor_negated recomputes the negated forward wrongly); set it to auto or false."
            )
        return True
    if setting is False:
        return False
    return device_type == "cuda" and method.supports_gradient_checkpointing


def all_true(acc, flag: bool) -> bool:
    if acc.num_processes == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=acc.device)
    return bool(acc.reduce(t, reduction="sum").item() == acc.num_processes)


def sum_across(acc, value: float) -> float:
    if acc.num_processes == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64 if acc.device.type == "cpu" else torch.float32, device=acc.device)
    return float(acc.reduce(t, reduction="sum").item())


def mean_across(acc, value: float) -> float:
    if acc.num_processes == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64 if acc.device.type == "cpu" else torch.float32, device=acc.device)
    return float(acc.reduce(t, reduction="mean").item())


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % (2**32))
    except ImportError:
        pass

