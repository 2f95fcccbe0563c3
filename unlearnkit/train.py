"""The training entry points (the loop and its parts live in :mod:`unlearnkit.training`)."""

from __future__ import annotations

from unlearnkit.training.checkpoint import (
    capture_rng,
    optimizer_from_files,
    optimizer_to_files,
    read_checkpoint_states,
    restore_rng,
    resumable_leftover,
    rng_from_files,
    rng_to_files,
)
from unlearnkit.training.control import check_forget_stop, resolve_gradient_checkpointing
from unlearnkit.training.data import TrainData, prepare_data, trained_sets
from unlearnkit.training.loop import Trainer, run_unlearning
from unlearnkit.reports.plots import plot_losses
from unlearnkit.training.records import heldout_change
from unlearnkit.training.reference import Reference, trainable_state

__all__ = [
    "Reference", "TrainData", "Trainer", "capture_rng", "check_forget_stop", "heldout_change", "optimizer_from_files",
    "optimizer_to_files", "plot_losses", "prepare_data", "read_checkpoint_states", "resolve_gradient_checkpointing",
    "restore_rng", "resumable_leftover", "rng_from_files", "rng_to_files", "run_unlearning", "trainable_state",
    "trained_sets",
]
