"""Experiment trackers through accelerate: TensorBoard, Weights & Biases, MLflow, ...

``train.report_to: [tensorboard, wandb]`` hands accelerate's ``log_with`` the
trackers named; the run then logs, at every logged step, every loss term, the
learning rate and the gradient norm, and at its end the evaluation figures
(held-out answer NLL before and after, its relative change with the 95%
interval). Local trackers (TensorBoard, Aim, MLflow's file store) write under
``<run folder>/trackers/``.

accelerate silently drops a tracker whose package is missing; a run here
checks every named tracker's package BEFORE anything loads and names the
missing one.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any, Literal

from unlearnkit.errors import ConfigError

# Tracker name (accelerate's) -> the Python package it needs (import name, pip name).
TRACKER_PACKAGES: dict[str, tuple[tuple[str, ...], str]] = {
    "tensorboard": (("tensorboard", "tensorboardX"), "tensorboard"),
    "wandb": (("wandb",), "wandb"),
    "mlflow": (("mlflow",), "mlflow"),
    "comet_ml": (("comet_ml",), "comet-ml"),
    "aim": (("aim",), "aim"),
    "clearml": (("clearml",), "clearml"),
    "dvclive": (("dvclive",), "dvclive"),
    "swanlab": (("swanlab",), "swanlab"),
    "trackio": (("trackio",), "trackio"),
}
TrackerName = Literal["tensorboard", "wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive", "swanlab", "trackio"]
TRACKER_DIR = "trackers"


def check_trackers(names: list[str], where: str = "") -> None:
    """Every tracker in ``train.report_to`` has its package installed; else one error naming it."""
    for i, name in enumerate(names):
        if name not in TRACKER_PACKAGES:  # the config's Literal catches this first; a library caller may not
            raise ConfigError(f"invalid config{where}: train.report_to[{i}]: unknown tracker {name!r}; choose from "
                              f"{', '.join(TRACKER_PACKAGES)}.")
        modules, pip_name = TRACKER_PACKAGES[name]
        if not any(importlib.util.find_spec(m) is not None for m in modules):
            raise ConfigError(
                f"invalid config{where}: train.report_to[{i}]: tracker {name} needs the Python package {pip_name}, "
                f"which is not installed (pip install {pip_name}), or remove {name} from train.report_to."
            )


def accelerator_kwargs(report_to: list[str], run_dir: Path) -> dict:
    """Keyword arguments of ``Accelerator`` that switch the named trackers on (none: no argument)."""
    if not report_to:
        return {}
    from accelerate.utils import ProjectConfiguration

    return {"log_with": list(report_to),
            "project_config": ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / TRACKER_DIR))}


def flat_config(values: dict, prefix: str = "") -> dict[str, Any]:
    """A nested config as ``{"train.lr": 2e-06, ...}`` with only str, int, float and bool values.

    Trackers store hyperparameters as flat scalars (TensorBoard's hparams
    refuses lists and None): a list becomes its text, None the text "null".
    """
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(flat_config(value, name))
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        else:
            out[name] = "null" if value is None else str(value)
    return out


def start(acc, cfg) -> None:
    """Open the trackers' run, named after the run, with the resolved config as its hyperparameters."""
    if cfg.train.report_to:
        acc.init_trackers(cfg.name, config=flat_config(cfg.model_dump(mode="json")))


def _finite(values: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}


def step_values(record: dict) -> dict[str, float]:
    """What one logged step sends: every loss term under ``train/``, lr, grad norm (None is left out)."""
    return {f"train/{k}": v for k, v in _finite({k: record[k] for k in record if k not in ("step", "elapsed_s")}).items()}


def log_step(acc, cfg, record: dict) -> None:
    if cfg.train.report_to:
        acc.log(step_values(record), step=int(record["step"]))


def eval_values(summary: dict) -> dict[str, float]:
    """The run's evaluation figures by name: ``eval/<set>/nll_before``, ``..._after``, ``.../nll_change`` (+ ci)."""
    out: dict[str, Any] = {}
    for when in ("before", "after"):
        for name, res in (summary.get(f"eval_{when}") or {}).items():
            out[f"eval/{name}/nll_{when}"] = res.get("mean_nll")
            out[f"eval/{name}/perplexity_{when}"] = res.get("perplexity")
    for name, change in (summary.get("eval_change") or {}).items():
        out[f"eval/{name}/nll_change"] = change.get("nll_change")
        ci = change.get("nll_change_ci95")
        if ci:
            out[f"eval/{name}/nll_change_ci95_low"], out[f"eval/{name}/nll_change_ci95_high"] = ci
    return _finite(out)


def log_summary(acc, cfg, summary: dict) -> None:
    """The evaluation figures at the run's last step."""
    if cfg.train.report_to:
        values = eval_values(summary)
        if values:
            acc.log(values, step=int(summary.get("steps") or 0))


def finish(acc, cfg) -> None:
    """Close every tracker (flushes TensorBoard's event file); safe to call when none was opened.

    Not ``acc.end_training()``: that also destroys the process group, which the
    run still needs (its last barrier) under ``accelerate launch``.
    """
    trackers = getattr(acc, "trackers", None) or []
    for tracker in trackers:
        tracker.finish()
    trackers.clear()
