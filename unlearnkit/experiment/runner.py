"""Running an experiment's stages in order: skip what is done, resume what was interrupted."""

from __future__ import annotations

import gc
import json
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

import yaml

from unlearnkit.errors import ConfigError, UnlearnkitError
from unlearnkit.reports.experiment import write_experiment_report
from unlearnkit.experiment.spec import (
    ORIGINAL,
    STAGE_RECORD,
    Experiment,
    ResolvedStage,
    _done_marker,
    load_experiment,
    stage_state,
)


def _check_fingerprint(stage: ResolvedStage) -> None:
    record = stage.folder / STAGE_RECORD
    if not record.is_file():
        return
    saved = json.loads(record.read_text()).get("fingerprint")
    if saved and saved != stage.fingerprint:
        raise ConfigError(
            f"stage {stage.name!r} in {stage.folder} was run with a different configuration (or from a different "
            f"earlier stage) than the experiment now gives; rerun it and the stages after it with --from {stage.name}."
        )


def _write_record(stage: ResolvedStage, seconds: float | None, model: str) -> None:
    from unlearnkit.rundir import atomic_write_json

    atomic_write_json(stage.folder / STAGE_RECORD, {
        "name": stage.name, "kind": stage.kind, "fingerprint": stage.fingerprint, "model_from": stage.model_from,
        "model": model, "seconds": None if seconds is None else round(seconds, 2),
        "completed": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    })


def _release_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def _run_training(exp: Experiment, stage: ResolvedStage, state: str) -> dict:
    from unlearnkit.train import run_unlearning

    cfg = stage.run_config
    model_in = cfg.model.name
    if stage.model_from != ORIGINAL and not Path(model_in).exists():
        raise UnlearnkitError(f"stage {stage.name!r} starts from {model_in}, which stage {stage.model_from!r} did not leave.")
    if state == "resume":
        print(f"    resuming from the last checkpoint in {stage.folder / 'checkpoints'}", flush=True)
    # A folder without checkpoint or summary is the start of an interrupted run: start it again.
    summary = run_unlearning(cfg, resume=state == "resume", overwrite=state == "partial")
    if summary.get("status") != "completed":
        print(f"    note: {stage.name} {summary.get('status')}: {summary.get('reason')}", flush=True)
    return summary


def _run_eval_stage(exp: Experiment, stage: ResolvedStage) -> dict:
    from unlearnkit.reports.evaluation import write_report
    from unlearnkit.evaluation.suite import run_eval

    suites = list(stage.eval_suites)
    model = exp.model_path(stage.model_from)
    original = exp.cfg.original
    if stage.model_from == ORIGINAL and "normal" in suites:
        # The original compared with itself is identical by definition: not worth a generation pass.
        suites.remove("normal")
    if not suites:
        raise ConfigError(f"stage {stage.name!r} has no suite left to run on the original model.")
    # Everything the stages behind this model trained on is excluded from its held-out sets.
    result = run_eval(model, suites, stage.eval_options, original=original if "normal" in suites else None,
                      trained_on=exp.lineage(stage.model_from))
    result["label"] = stage.name
    result["stage"] = stage.name
    stage.folder.mkdir(parents=True, exist_ok=True)
    write_report(result, stage.folder)
    return result


def run_experiment(exp: Experiment | str | Path, overrides: list[str] | None = None, from_stage: str | None = None) -> dict:
    """Run every stage not yet done, in order, then write ``report.md`` and ``report.json``.

    ``from_stage``: rerun that stage and every later one (their folders are
    replaced). Returns the report (what ``report.json`` holds), with
    ``stages[i]["action"]`` telling what this call did: ``ran``, ``resumed`` or
    ``skipped``.
    """
    from unlearnkit.rundir import atomic_write_text

    if not isinstance(exp, Experiment):
        exp = load_experiment(exp, overrides)
    exp.folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(exp.folder / "experiment.yaml",
                      yaml.safe_dump(exp.cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True))
    if from_stage is not None:
        start = exp.stage(from_stage).index
        for s in exp.stages[start:]:
            if s.folder.exists():
                print(f"--from {from_stage}: removing {s.folder}", flush=True)
                shutil.rmtree(s.folder)

    n = len(exp.stages)
    actions: dict[str, str] = {}
    t_all = time.time()
    for stage in exp.stages:
        state = stage_state(stage)
        model = exp.model_path(stage.model_from)
        head = f"[{stage.index + 1}/{n}] {stage.name} ({stage.kind}"
        head += f", model from {stage.model_from})" if stage.model_from == ORIGINAL else f", model from stage {stage.model_from})"
        if state == "done":
            _check_fingerprint(stage)
            if not (stage.folder / STAGE_RECORD).is_file():
                _write_record(stage, None, model)
            print(f"{head}: done earlier, skipped ({_done_marker(stage)})", flush=True)
            actions[stage.name] = "skipped"
            continue
        if state in ("resume", "partial"):
            _check_fingerprint(stage)
        print(f"{head} -> {stage.folder}", flush=True)
        t0 = time.time()
        if stage.kind == "eval":
            _run_eval_stage(exp, stage)
        else:
            _run_training(exp, stage, state)
        _release_memory()
        _write_record(stage, time.time() - t0, model)
        actions[stage.name] = "resumed" if state == "resume" else "ran"
        print(f"[{stage.index + 1}/{n}] {stage.name}: finished in {time.time() - t0:.0f} s", flush=True)
    report = write_experiment_report(exp, actions)
    print(f"\n{report['markdown_table']}\nExperiment finished in {time.time() - t_all:.0f} s. "
          f"Wrote {exp.folder / 'report.md'} and report.json.", flush=True)
    return report


