"""Experiments: stages run in order (finetune -> eval -> unlearn -> eval), one report.

The copyright track of *Machine Unlearning in Large Language Models* (arXiv
2405.15152) is a pipeline: finetune a model on a book until it memorises it,
measure, unlearn the book, measure again. An experiment file names the stages;
:func:`run_experiment` runs them in order, each training stage on the model the
stage named in its ``model_from`` saved, and writes one report with the paper's
table (rows Original / Finetuned / Unlearned).

Every stage writes ``<output_dir>/<name>/<stage>/``. A stage whose
``summary.json`` (training) or ``eval.json`` (evaluation) exists is skipped on a
rerun; an interrupted training stage continues from its last checkpoint
(``--resume`` semantics). A finished stage whose configuration has changed since
is an error, not a silent reuse: rerun it and the stages after it with
``--from STAGE``.

Nothing here trains or evaluates by itself: training stages are
:func:`unlearnkit.train.run_unlearning` on an ordinary run config, evaluation
stages are :func:`unlearnkit.evaluation.suite.run_eval`.
"""

from unlearnkit.experiment.commands import add_commands, cmd_finetune, cmd_run
from unlearnkit.reports.experiment import write_experiment_report
from unlearnkit.experiment.runner import run_experiment, stage_state
from unlearnkit.experiment.spec import (
    ORIGINAL,
    REPORT_COLUMNS,
    REPORT_FORMAT,
    STAGE_RECORD,
    TRAINING_KINDS,
    Experiment,
    ExperimentConfig,
    ResolvedStage,
    StageSpec,
    load_experiment,
    substitute,
)

__all__ = ["ORIGINAL", "REPORT_COLUMNS", "REPORT_FORMAT", "STAGE_RECORD", "TRAINING_KINDS", "Experiment",
           "ExperimentConfig", "ResolvedStage", "StageSpec", "add_commands", "cmd_finetune", "cmd_run",
           "load_experiment", "run_experiment", "stage_state", "substitute", "write_experiment_report"]
