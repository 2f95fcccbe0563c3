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

from __future__ import annotations

import copy
import gc
import hashlib
import json
import re
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from unlearnkit.cliargs import add_run_flags, add_set
from unlearnkit.errors import ConfigError, UnlearnkitError
from unlearnkit.evaluation.options import EvalOptions

REPORT_FORMAT = "unlearnkit-experiment-report/1"
STAGE_RECORD = "stage.json"
ORIGINAL = "original"
TRAINING_KINDS = ("finetune", "unlearn")

# The paper's table: (metric in eval.json, column label).
REPORT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("memorisation.rouge_l", "Book ROUGE-L"),
    ("memorisation.bleu", "Book BLEU"),
    ("memorisation.cosine", "Book embedding cosine"),
    ("normal.similarity_cosine", "Normal similarity to original (cosine)"),
    ("normal.similarity_rouge_l", "Normal similarity to original (ROUGE-L)"),
    ("perplexity.perplexity", "Retain perplexity"),
)
# The original model compared with itself: identical by definition (greedy decoding).
_SELF_SIMILARITY = {"normal.similarity_cosine": 1.0, "normal.similarity_rouge_l": 1.0}
_NAME = r"^[A-Za-z0-9._-]+$"


def _default_suites() -> list[str]:
    return ["memorisation", "normal", "perplexity"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EvalSettings(_Strict):
    """What an evaluation stage measures: suites and their options (docs/evaluation.md)."""

    suites: list[str] = Field(default_factory=_default_suites, min_length=1)
    options: EvalOptions = Field(default_factory=EvalOptions)

    @field_validator("suites")
    @classmethod
    def _registered(cls, suites: list[str]) -> list[str]:
        from unlearnkit.evaluation.registry import SUITE_REGISTRY, get_suite

        for name in suites:
            if name not in SUITE_REGISTRY and ":" not in name:
                raise ValueError(f"unknown suite {name!r}; choose from {', '.join(SUITE_REGISTRY)}")
            get_suite(name)
        return suites


class StageSpec(_Strict):
    name: str = Field(pattern=_NAME)
    kind: Literal["finetune", "unlearn", "eval"]
    # A run config (finetune/unlearn) or eval settings (eval): a path, or the mapping inline.
    # Left out: an eval stage uses the experiment's `eval` section; a training stage must give one.
    config: str | dict[str, Any] | None = None
    # --set style overrides of the stage's config (values read as YAML; ${vars} substituted).
    set: list[str] = Field(default_factory=list)
    # The model this stage starts from (training) or measures (eval): an earlier
    # finetune/unlearn stage, or "original". Default: the latest earlier training
    # stage, else the original model.
    model_from: str | None = None


class ReportRow(_Strict):
    label: str = Field(min_length=1)
    stage: str  # an eval stage


class ReportSpec(_Strict):
    # Rows of the table; default: every eval stage, labelled Original / Finetuned / Unlearned
    # after the kind of the stage whose model it measures.
    rows: list[ReportRow] | None = None


class ExperimentConfig(_Strict):
    name: str = Field(pattern=_NAME)
    output_dir: str = "runs"
    # The original model: an alias, a local folder, a .gguf file or a hub id.
    original: str = Field(min_length=1)
    # Values for ${name} in this file and in the stage configs it reads.
    vars: dict[str, str | int | float | bool | None] = Field(default_factory=dict)
    eval: EvalSettings = Field(default_factory=EvalSettings)
    stages: list[StageSpec] = Field(min_length=1)
    report: ReportSpec = Field(default_factory=ReportSpec)

    @property
    def folder(self) -> Path:
        return Path(self.output_dir) / self.name


# --------------------------------------------------------------------------- variables

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def substitute(value: Any, variables: dict[str, Any], where: str) -> Any:
    """``value`` with every ``${name}`` replaced from ``variables`` (recursively).

    A string that is exactly ``${name}`` takes the variable's value with its
    type; inside a longer string the value is written as text. ``where`` names
    the key path for errors.
    """
    if isinstance(value, dict):
        return {k: substitute(v, variables, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, variables, f"{where}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def lookup(name: str):
        if name not in variables:
            known = ", ".join(sorted(variables)) or "none"
            raise ConfigError(f"{where}: ${{{name}}} is not defined in vars (defined: {known}).")
        if variables[name] is None:
            raise ConfigError(f"{where}: vars.{name} is not set; give it with --set vars.{name}=VALUE.")
        return variables[name]

    whole = _VAR.fullmatch(value)
    if whole:
        return lookup(whole.group(1))
    return _VAR.sub(lambda m: str(lookup(m.group(1))), value)


# --------------------------------------------------------------------------- loading


def _format(err: ValidationError, source: str | None, prefix: tuple = ()) -> str:
    from unlearnkit.config import format_errors

    return format_errors(err, prefix=prefix, source=source).replace("invalid config", "invalid experiment", 1)


def load_experiment(path: str | Path | None = None, overrides: list[str] | None = None, raw: dict | None = None) -> "Experiment":
    """Load, override (``--set``), substitute ``${vars}`` and validate an experiment.

    Every stage's config is resolved and validated here too, so a mistake in the
    last stage is reported before the first one trains for hours.
    """
    from unlearnkit.config import apply_overrides, load_raw

    source = str(path) if path is not None else None
    if raw is None:
        if path is None:
            raise ConfigError("give an experiment file (or a raw mapping).")
        raw = load_raw(path, what="experiment file", sections="keys (name, original, stages, ...)")
    raw = apply_overrides(raw, overrides or [])
    variables = raw.get("vars") or {}
    if not isinstance(variables, dict):
        raise ConfigError(f"invalid experiment{f' in {source}' if source else ''}: vars: must be a mapping of names to values.")
    resolved = {k: (v if k == "vars" else substitute(v, variables, k)) for k, v in raw.items()}
    try:
        cfg = ExperimentConfig.model_validate(resolved)
    except ValidationError as err:
        raise ConfigError(_format(err, source)) from None
    exp = Experiment(cfg, Path(path).parent if path is not None else None, source)
    exp.resolve()
    return exp


@dataclass
class ResolvedStage:
    spec: StageSpec
    index: int
    folder: Path
    model_from: str  # "original" or an earlier training stage
    run_config: Any = None  # RunConfig (training stages)
    eval_suites: list[str] | None = None  # eval stages
    eval_options: Any = None  # EvalOptions (eval stages)
    fingerprint: str = ""
    reference: str | None = None  # an earlier eval stage whose result this one reads (TOFU's retain model)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def kind(self) -> str:
        return self.spec.kind


class Experiment:
    """A validated experiment with every stage resolved to a run config or eval settings."""

    def __init__(self, cfg: ExperimentConfig, base_dir: Path | None = None, source: str | None = None):
        self.cfg = cfg
        self.base_dir = base_dir
        self.source = source
        self.stages: list[ResolvedStage] = []

    @property
    def folder(self) -> Path:
        return self.cfg.folder

    def _where(self) -> str:
        return f" in {self.source}" if self.source else ""

    def _error(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"invalid experiment{self._where()}: {key}: {message}")

    def _read_stage_file(self, key: str, value: str) -> tuple[dict, str]:
        """A stage config file: relative to the working directory, else to the experiment file."""
        candidates = [Path(value).expanduser()]
        if self.base_dir is not None and not Path(value).is_absolute():
            candidates.append(self.base_dir / value)
        for p in candidates:
            if p.is_file():
                try:
                    data = yaml.safe_load(p.read_text()) or {}
                except yaml.YAMLError as exc:
                    raise self._error(key, f"{p} is not valid YAML: {exc}") from None
                if not isinstance(data, dict):
                    raise self._error(key, f"{p} must hold a mapping.")
                return data, str(p)
        raise self._error(key, f"config file {value} does not exist (looked in the working directory"
                          f"{' and beside the experiment file' if self.base_dir is not None else ''}).")

    def resolve(self) -> None:
        from unlearnkit.config import apply_overrides

        seen: dict[str, ResolvedStage] = {}
        variables = self.cfg.vars
        last_model = ORIGINAL
        for i, spec in enumerate(self.cfg.stages):
            key = f"stages[{i}]"
            if spec.name == ORIGINAL or spec.name in seen:
                raise self._error(f"{key}.name", f"{spec.name!r} is {'reserved' if spec.name == ORIGINAL else 'used by an earlier stage'}; "
                                  "give every stage its own name.")
            model_from = spec.model_from or last_model
            if model_from != ORIGINAL:
                upstream = seen.get(model_from)
                if upstream is None or upstream.kind not in TRAINING_KINDS:
                    earlier = [s.name for s in seen.values() if s.kind in TRAINING_KINDS]
                    raise self._error(f"{key}.model_from", f"{model_from!r} is not an earlier finetune or unlearn stage "
                                      f"(choose {', '.join([ORIGINAL, *earlier])}).")
                if spec.kind in TRAINING_KINDS and upstream.run_config.train.save != "merged":
                    raise self._error(f"{key}.model_from", f"stage {model_from!r} saves only its LoRA adapter "
                                      "(train.save: adapter); a later training stage starts from merged weights, "
                                      f"so give stage {model_from!r} train.save: merged.")
            sets = substitute(list(spec.set), variables, f"{key}.set")
            stage = ResolvedStage(spec, i, self.folder / spec.name, model_from)
            if spec.kind in TRAINING_KINDS:
                if spec.config is None:
                    raise self._error(f"{key}.config", f"a {spec.kind} stage needs a run config (a path or a mapping).")
                if isinstance(spec.config, str):
                    raw, where = self._read_stage_file(f"{key}.config", spec.config)
                else:
                    raw, where = copy.deepcopy(spec.config), f"{key}.config"
                raw = substitute(raw, variables, f"{key}.config")
                stage.run_config = self._run_config(stage, raw, sets, where)
                last_model = spec.name
            else:
                if spec.config is None:
                    raw, prefix = self.cfg.eval.model_dump(mode="json"), ("eval",)
                elif isinstance(spec.config, str):
                    raw, _ = self._read_stage_file(f"{key}.config", spec.config)
                    prefix = ("stages", i, "config")
                else:
                    raw, prefix = copy.deepcopy(spec.config), ("stages", i, "config")
                raw = substitute(apply_overrides(raw, sets), variables, f"{key}.config")
                try:
                    settings = EvalSettings.model_validate(raw)
                except ValidationError as err:
                    raise ConfigError(_format(err, self.source, prefix)) from None
                stage.eval_suites, stage.eval_options = list(dict.fromkeys(settings.suites)), settings.options
                if "tofu" in stage.eval_suites:  # tofu.reference may name an earlier eval stage
                    from unlearnkit.evaluation.tofu_suite import resolve_reference

                    stage.eval_options, stage.reference = resolve_reference(
                        settings.options, {n: s.folder for n, s in seen.items() if s.kind == "eval"})
            stage.fingerprint = self._fingerprint(stage, seen)
            seen[spec.name] = stage
            self.stages.append(stage)
        self._check_report(seen)

    def _run_config(self, stage: ResolvedStage, raw: dict, sets: list[str], where: str):
        from unlearnkit.config import apply_overrides, load_config

        kind = stage.kind
        try:
            raw = apply_overrides(raw, sets)
            if kind == "finetune" and "method" not in raw:
                raw["method"] = {"name": "finetune"}
            # The experiment decides where a stage writes and which model it starts from.
            model = raw.get("model") if raw.get("model") is not None else {}
            if not isinstance(model, dict):
                raise ConfigError("invalid config: model: must be a mapping.")
            raw.update(name=stage.name, output_dir=str(self.folder), model={**model, "name": self.model_path(stage.model_from)})
            cfg = load_config(raw=raw)
        except ConfigError as exc:
            detail = str(exc).removeprefix("invalid config: ")
            raise ConfigError(f"invalid experiment{self._where()}: stage {stage.name!r} ({where}): {detail}") from None
        method = cfg.method["name"]
        if kind == "finetune" and method != "finetune":
            raise self._error(f"stages[{stage.index}]", f"a finetune stage runs method finetune, but its config names {method!r}.")
        if kind == "unlearn" and method == "finetune":
            raise self._error(f"stages[{stage.index}]", "an unlearn stage needs an unlearning method (ga, gradient_difference, "
                              "llm_unlearn, ...), not finetune; use kind: finetune.")
        if cfg.train.save == "none":
            raise self._error(f"stages[{stage.index}]", "train.save is none, so no later stage could use its model; "
                              "use merged (or adapter).")
        return cfg

    def model_path(self, model_from: str) -> str:
        """The model a stage starts from: the original, or an earlier stage's saved model.

        A merged ``model/`` is what later stages load (no new loading code: it is an
        ordinary model folder); an ``adapter/`` is used when the stage saved only that.
        """
        if model_from == ORIGINAL:
            return self.cfg.original
        upstream = next(s for s in self.stages if s.name == model_from)
        save = upstream.run_config.train.save
        return str(upstream.folder / ("adapter" if save == "adapter" else "model"))

    def lineage(self, model_from: str) -> list:
        """The run configs of every training stage behind a model, nearest first."""
        chain = []
        while model_from != ORIGINAL:
            upstream = next(s for s in self.stages if s.name == model_from)
            chain.append(upstream.run_config)
            model_from = upstream.model_from
        return chain

    def _fingerprint(self, stage: ResolvedStage, seen: dict[str, ResolvedStage]) -> str:
        """A hash of everything that decides a stage's result (its config and its input model's)."""
        if stage.run_config is not None:
            body = stage.run_config.model_dump(mode="json")
            body.pop("name"), body.pop("output_dir")
            body["model"]["name"] = None  # stands in the upstream entry below
            body["train"].pop("progress", None)
        else:
            body = {"suites": stage.eval_suites, "options": stage.eval_options.model_dump(mode="json")}
            body["options"].pop("progress", None)
            body["original"] = self.cfg.original
            if stage.reference is not None:  # a rerun of the reference stage invalidates this one
                body["options"]["tofu"]["reference"] = seen[stage.reference].fingerprint
        upstream = seen[stage.model_from].fingerprint if stage.model_from != ORIGINAL else f"original:{self.cfg.original}"
        payload = json.dumps({"kind": stage.kind, "body": body, "from": upstream}, sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def _check_report(self, seen: dict[str, ResolvedStage]) -> None:
        for i, row in enumerate(self.cfg.report.rows or []):
            stage = seen.get(row.stage)
            if stage is None or stage.kind != "eval":
                evals = [s.name for s in self.stages if s.kind == "eval"]
                raise self._error(f"report.rows[{i}].stage", f"{row.stage!r} is not an eval stage (choose {', '.join(evals) or 'none'}).")

    def stage(self, name: str) -> ResolvedStage:
        for s in self.stages:
            if s.name == name:
                return s
        raise ConfigError(f"no stage named {name!r} (stages: {', '.join(s.name for s in self.stages)}).")

    def report_rows(self) -> list[tuple[str, ResolvedStage]]:
        """(label, eval stage) for each row of the table."""
        if self.cfg.report.rows:
            return [(r.label, self.stage(r.stage)) for r in self.cfg.report.rows]
        evals = [s for s in self.stages if s.kind == "eval"]
        kind_label = {ORIGINAL: "Original", "finetune": "Finetuned", "unlearn": "Unlearned"}
        kinds = [ORIGINAL if s.model_from == ORIGINAL else self.stage(s.model_from).kind for s in evals]
        rows = []
        for s, k in zip(evals, kinds):
            label = kind_label[k]
            if kinds.count(k) > 1:  # several unlearned models: name each by its stage
                label = f"{label} ({s.model_from})"
            rows.append((label, s))
        return rows


# --------------------------------------------------------------------------- running


def _done_marker(stage: ResolvedStage) -> Path:
    return stage.folder / ("eval.json" if stage.kind == "eval" else "summary.json")


def stage_state(stage: ResolvedStage) -> str:
    """``done``, ``resume`` (a training stage with a checkpoint), ``partial`` or ``todo``."""
    if _done_marker(stage).is_file():
        return "done"
    if stage.kind != "eval":
        from unlearnkit.train import resumable_leftover

        has_ckpt = (stage.folder / "checkpoints").is_dir() and any(
            p.name.startswith("step-") for p in (stage.folder / "checkpoints").iterdir())
        # A stage killed after a checkpoint may have left only its temporary folder.
        if has_ckpt or (not stage.folder.exists() and resumable_leftover(stage.folder) is not None):
            return "resume"
    return "partial" if stage.folder.exists() else "todo"


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
    from unlearnkit.evaluation.report import write_report
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


# --------------------------------------------------------------------------- report


def _training_summary(stage: ResolvedStage) -> dict | None:
    path = stage.folder / "summary.json"
    if not path.is_file():
        return None
    s = json.loads(path.read_text())
    return {k: s.get(k) for k in ("status", "reason", "steps", "final_terms", "train_seconds", "model_path")}


def write_experiment_report(exp: Experiment, actions: dict[str, str] | None = None) -> dict:
    """``report.md`` + ``report.json`` in the experiment folder: the paper's table, and
    ``compare.md/json/png`` with every metric side by side (:func:`~unlearnkit.evaluation.report.compare`)."""
    from unlearnkit.evaluation.report import compare, load_details, markdown_table, perplexity_change_row
    from unlearnkit.rundir import atomic_write_json, atomic_write_text

    rows_spec = exp.report_rows()
    missing = [s.name for _, s in rows_spec if not (s.folder / "eval.json").is_file()]
    if missing:
        raise UnlearnkitError(f"the report needs the eval stages {', '.join(missing)}, which have not run.")
    rows = []
    for label, stage in rows_spec:
        metrics = json.loads((stage.folder / "eval.json").read_text()).get("metrics", {})
        values: dict[str, float | None] = {}
        notes = []
        for key, column in REPORT_COLUMNS:
            value = metrics.get(key)
            if value is None and stage.model_from == ORIGINAL and key in _SELF_SIMILARITY:
                value = _SELF_SIMILARITY[key]
                notes.append("similarity of the original to itself is 1 by definition")
            values[column] = value
        rows.append({"label": label, "stage": stage.name, "model": exp.model_path(stage.model_from),
                     "values": values, "metrics": metrics, "notes": sorted(set(notes))})
    columns = [c for _, c in REPORT_COLUMNS]
    # Drop columns no row measured (e.g. no normal suite asked for).
    columns = [c for c in columns if any(r["values"][c] is not None for r in rows)]
    cells = [[r["label"], *[r["values"][c] for c in columns]] for r in rows]
    # The retain perplexity change of each row against the first (the original), with a
    # paired bootstrap interval over the same held-out texts.
    details = [d for _, s in rows_spec for d in load_details(s.folder / "eval.json")]
    change = perplexity_change_row(details)
    header = ["Model", *columns]
    if change is not None and any(c != "–" for c in change[1:]):
        header.append(f"Retain perplexity change vs {rows[0]['label']} (95% interval)")
        for row, c in zip(cells, change):
            row.append(c)
    table = markdown_table(header, cells)
    from unlearnkit.evaluation.tofu_report import tofu_table

    tofu = tofu_table([(r["label"], r["stage"], s.folder / "eval.json") for r, (_, s) in zip(rows, rows_spec)])
    table = tofu or table
    if not rows_spec:
        table = "No eval stage: the experiment has no table (add a stage of kind eval, or report.rows)."
    else:
        compare(
            [s.folder / "eval.json" for _, s in rows_spec], out_dir=exp.folder, labels=[label for label, _ in rows_spec]
        )
    stages = []
    for s in exp.stages:
        record = s.folder / STAGE_RECORD
        info = json.loads(record.read_text()) if record.is_file() else {}
        stages.append({"name": s.name, "kind": s.kind, "model_from": s.model_from, "folder": str(s.folder),
                       "state": stage_state(s), "action": (actions or {}).get(s.name), "seconds": info.get("seconds"),
                       "training": _training_summary(s) if s.kind != "eval" else None})
    report = {
        "format": REPORT_FORMAT,
        "experiment": exp.cfg.name,
        "original": exp.cfg.original,
        "columns": columns,
        "column_metrics": {c: k for k, c in REPORT_COLUMNS if c in columns},
        "rows": rows,
        "stages": stages,
        "markdown_table": table,
        "tofu": tofu is not None,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    atomic_write_json(exp.folder / "report.json", report)
    atomic_write_text(exp.folder / "report.md", _report_markdown(exp, report))
    from unlearnkit.evaluation.html_reports import write_experiment_html

    write_experiment_html(exp.folder, _report_markdown(exp, report), [(label, s.folder) for label, s in rows_spec],
                          [(s.name, s.folder) for s in exp.stages if s.kind != "eval"])
    return report


def _report_markdown(exp: Experiment, report: dict) -> str:
    parts = [f"# Experiment `{exp.cfg.name}`\n", f"Original model: `{exp.cfg.original}`  ",
             f"Created: {report['created']}\n", report["markdown_table"]]
    notes = sorted({n for r in report["rows"] for n in r["notes"]})
    from unlearnkit.evaluation.tofu_report import TOFU_NOTE

    parts.append(TOFU_NOTE + "\n" if report.get("tofu") else
        "Book columns: the model continues held-in prompts of the book greedily; ROUGE-L, BLEU and the "
        "MiniLM embedding cosine compare its continuation with the true text (finetuning should raise them, "
        "unlearning bring them back down). Normal similarity: answers to normal prompts compared with the "
        "original model's (1 = unchanged). Retain perplexity: held-out retain text (lower is better; it "
        "should barely move)."
        + (f" Note: {'; '.join(notes)}." if notes else "")
        + " Every metric side by side: `compare.md`.\n"
    )
    parts.append("## Stages\n")
    from unlearnkit.evaluation.report import markdown_table

    stage_rows = []
    for s in report["stages"]:
        t = s.get("training") or {}
        detail = ""
        if t:
            final = t.get("final_terms") or {}
            detail = f"{t.get('status')}, {t.get('steps')} steps" + (
                f", final forget NLL {final['forget_nll']:.3f}" if isinstance(final.get("forget_nll"), (int, float)) else "")
        stage_rows.append([s["name"], s["kind"], s["model_from"], detail or "", s["seconds"], f"`{s['folder']}`"])
    parts.append(markdown_table(["stage", "kind", "model from", "result", "seconds", "folder"], stage_rows))
    return "\n".join(parts) + "\n"


# --------------------------------------------------------------------------- CLI


def cmd_finetune(args) -> int:
    """``unlearnkit finetune CONFIG``: ``unlearn`` for a config whose method is ``finetune``."""
    from unlearnkit.training.commands import cmd_unlearn
    from unlearnkit.config import apply_overrides, load_raw

    raw = apply_overrides(load_raw(args.config), args.overrides)
    method = raw.get("method")
    name = method.get("name") if isinstance(method, dict) else method
    if name is None:  # no method named: this command's
        args.overrides = [*args.overrides, "method.name=finetune"]
    elif name != "finetune":
        raise ConfigError(f"{args.config}: method.name is {name!r}; `unlearnkit finetune` runs method finetune "
                          "(use `unlearnkit unlearn` for unlearning methods).")
    return cmd_unlearn(args)


def cmd_run(args) -> int:
    exp = load_experiment(args.experiment, args.overrides)
    if args.plan:
        print(f"Experiment {exp.cfg.name} -> {exp.folder}")
        for s in exp.stages:
            print(f"  [{s.index + 1}/{len(exp.stages)}] {s.name:<20} {s.kind:<8} from {s.model_from:<16} {stage_state(s)}")
        return 0
    run_experiment(exp, from_stage=args.from_stage)
    return 0


def add_commands(subparsers) -> None:
    """Add ``finetune`` and ``run`` to the CLI's subparsers."""
    p = subparsers.add_parser(
        "finetune", help="finetune a model on a text (method finetune, e.g. LoRA on a book) from a config",
        description="The same run as `unlearnkit unlearn`, for a config whose method is finetune (set when the "
        "config names no method): minimise the NLL of data.forget, the text to learn.",
    )
    p.add_argument("config")
    add_set(p)
    add_run_flags(p)
    p.set_defaults(func=cmd_finetune)

    p = subparsers.add_parser(
        "run", help="run an experiment: stages (finetune, eval, unlearn, eval) in order, then one report",
        description="Each stage writes OUTPUT_DIR/NAME/STAGE/. Stages already done are skipped; an interrupted "
        "training stage resumes from its last checkpoint. The report (report.md, report.json) holds the table "
        "Original / Finetuned / Unlearned. See docs/copyright.md.",
    )
    p.add_argument("experiment")
    add_set(p, "override an experiment key, e.g. --set vars.book=my_book.txt, --set output_dir=/tmp/x "
                   "(repeatable; the value is read as YAML)")
    p.add_argument("--from", dest="from_stage", metavar="STAGE", help="rerun STAGE and every stage after it")
    p.add_argument("--plan", action="store_true", help="list the stages and their state, run nothing")
    p.set_defaults(func=cmd_run)
