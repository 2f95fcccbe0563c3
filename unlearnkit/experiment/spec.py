"""The experiment file: its schema, ``${vars}``, and the stages resolved to run configs with fingerprints."""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from unlearnkit.errors import ConfigError
from unlearnkit.evaluation.options import EvalOptions
from unlearnkit.stagecache import fingerprint

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
        return fingerprint({"kind": stage.kind, "body": body, "from": upstream})

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


# --------------------------------------------------------------------------- state on disk


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
