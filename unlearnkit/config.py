"""Run configuration: YAML in, validated by pydantic, unknown keys rejected.

One model per concern (model, data, method, train, eval). Errors name the full
path of the key at fault (``train.lr``, ``data.forget.subset``) and the file.
Any key can be overridden from the command line with ``--set a.b.c=value``
(the value is read as YAML, so ``1e-4``, ``true`` and ``[q_proj, v_proj]`` work).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, model_validator

from unlearnkit.data.spec import DataSourceConfig
from unlearnkit.evaluation.options import EvalOptions
from unlearnkit.errors import ConfigError
from unlearnkit.models import ModelConfig
from unlearnkit.trackers import TrackerName


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _one_or_many(value: Any) -> str:
    return "many" if isinstance(value, (list, tuple)) else "one"


# One source or a list of them. The input's shape picks the branch, so an error
# names only that branch's key (data.retain.limit, data.retain[1].spec) instead of
# reporting both union members under their type names.
_UNION_TAGS = ("one", "many")
OneOrManySources = Annotated[
    Union[Annotated[DataSourceConfig, Tag("one")], Annotated[list[DataSourceConfig], Tag("many")]],
    Discriminator(_one_or_many),
]


class DataConfig(Strict):
    template: Literal["qa", "chat", "raw"] = "qa"
    max_length: int = Field(512, ge=8, le=131072)
    # An example longer than max_length: cut its answer's tail (a prompt that does
    # not fit drops the example), drop it, or refuse the data. Counted in summary.json.
    truncation: Literal["answer_first", "drop", "error"] = "answer_first"
    # Data to forget (harmful answers, a book's passages).
    forget: DataSourceConfig | None = None
    # Data whose behaviour must be kept (KL or cross-entropy anchor): one
    # source, or a list whose examples are mixed (e.g. QA pairs and web text).
    retain: OneOrManySources | None = None
    # Pool of normal answers for the random-mismatch term (llm_unlearn); the
    # retain set when not given.
    random: DataSourceConfig | None = None
    # Alternative answers to the forget prompts, for methods that prefer one
    # (dpo): a forget prompt's own answer here when the set has that prompt (the
    # PKU safe answer), else a seeded draw (refusals, "I don't know" answers; the
    # `answers` recipe reads one per line). Examples whose prompt or answer is
    # in a held-out set are left out.
    alternative: DataSourceConfig | None = None
    # The leak audit stops a run whose held-out or evaluation sets share a
    # normalised prompt or response with a trained set; true lets it run (for a
    # deliberate in-distribution check) and still records the counts.
    allow_overlap: bool = False

    @property
    def retain_sources(self) -> list[DataSourceConfig]:
        if self.retain is None:
            return []
        return list(self.retain) if isinstance(self.retain, list) else [self.retain]


class TrainConfig(Strict):
    max_steps: int = Field(1000, ge=1)
    # Alternative to max_steps: passes over the forget set (may be fractional).
    # The run derives max_steps = ceil(epochs x batches per epoch / grad_accum)
    # once the data is loaded; its saved config.yaml records that max_steps.
    epochs: float | None = Field(None, gt=0)
    batch_size: int = Field(2, ge=1)
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(2e-6, gt=0, le=1.0)
    weight_decay: float = Field(0.0, ge=0)
    scheduler: Literal["linear", "cosine", "constant"] = "linear"
    warmup_steps: int = Field(0, ge=0)
    max_grad_norm: float | None = Field(1.0, gt=0)
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    gradient_checkpointing: bool | Literal["auto"] = "auto"
    # Stop when the forget set's mean answer NLL (a positive cross-entropy)
    # reaches this value: the published max_bad_loss, with the sign that fires.
    max_forget_loss: float | None = Field(None, gt=0)
    # Reference model for KL terms: "auto" = the adapter disabled under LoRA, a
    # frozen copy in full-parameter mode.
    reference_dtype: Literal["same", "float32", "bfloat16", "float16"] = "same"
    reference_device: str | None = None
    save_every: int | None = Field(None, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    log_every: int = Field(1, ge=1)
    save: Literal["merged", "adapter", "none"] = "merged"
    threads: int | None = Field(None, ge=1)
    progress: bool = True
    # Experiment trackers (accelerate's log_with): losses, lr, grad norm, eval figures. docs/outputs.md.
    report_to: list[TrackerName] = Field(default_factory=list)
    # Upload the saved model (merged or adapter) with its model card to this hub repo once the run finished.
    push_to_hub: bool = False
    hub_repo_id: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
    hub_private: bool = True

    @model_validator(mode="before")
    @classmethod
    def _null_max_steps_is_unset(cls, data: Any) -> Any:
        # `--set train.max_steps=null` switches a config with max_steps to epochs.
        if isinstance(data, dict) and "max_steps" in data and data["max_steps"] is None:
            data = {k: v for k, v in data.items() if k != "max_steps"}
        return data

    @model_validator(mode="after")
    def _steps_or_epochs(self):
        if self.epochs is not None and "max_steps" in self.model_fields_set:
            raise ValueError("give train.epochs or train.max_steps, not both (set the other one to null)")
        if self.push_to_hub and (self.hub_repo_id is None or self.save == "none"):
            raise ValueError("push_to_hub needs hub_repo_id (e.g. you/my-unlearned-model) and a saved "
                             "model (save: merged or adapter)")
        return self


class EvalConfig(Strict):
    # Measure before and after the run, on held-out forget data and the sets below.
    enabled: bool = True
    batch_size: int = Field(8, ge=1)
    # Named sets whose mean answer NLL is measured (raw text: perplexity).
    nll: dict[str, DataSourceConfig] = Field(default_factory=dict)
    # Options of `unlearnkit eval CONFIG` (data sets, judges, generation); see docs/evaluation.md.
    suite: EvalOptions = Field(default_factory=EvalOptions)


class RunConfig(Strict):
    name: str = Field("run", min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    output_dir: str = "runs"
    seed: int = 42
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    method: dict[str, Any] = Field(default_factory=lambda: {"name": "llm_unlearn"})
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @model_validator(mode="after")
    def _method_named(self):
        if "name" not in self.method:
            raise ValueError("method.name is required (e.g. llm_unlearn, ga, gradient_difference, sku)")
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    def method_params(self):
        """The method's typed parameters (validated when the config is loaded)."""
        from unlearnkit.methods import get_method

        cls = get_method(self.method["name"])
        params = {k: v for k, v in self.method.items() if k != "name"}
        return cls.Params.model_validate(params)


def _key_path(loc: tuple) -> str:
    """``data.retain[0].spec`` from pydantic's loc, without the union branch tags."""
    out = ""
    for i, part in enumerate(loc):
        if part in _UNION_TAGS and i > 0 and loc[i - 1] == "retain":
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def format_errors(err: ValidationError, prefix: tuple = (), source: str | None = None) -> str:
    lines = []
    for e in err.errors():
        path = _key_path((*prefix, *e["loc"]))
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "missing":
            msg = "required key is missing"
        else:
            msg = e["msg"].removeprefix("Value error, ")
            if "input" in e and not isinstance(e["input"], (dict, list)):
                msg += f" (got {e['input']!r})"
        lines.append(f"{path}: {msg}" if path else msg)
    where = f" in {source}" if source else ""
    return f"invalid config{where}: " + "; ".join(lines)


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r} must look like key.path=value (e.g. train.lr=1e-4).")
    key, _, raw = item.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {item!r} has an empty key part.")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {item!r}: the value is not valid YAML ({exc}).") from None
    return key.split("."), value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    out = copy.deepcopy(raw)
    for item in overrides:
        path, value = parse_override(item)
        node = out
        for i, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: {'.'.join(path[: i + 1])} is a value, not a section.")
            node = child
        node[path[-1]] = value
    return out


def load_raw(path: str | Path, what: str = "config file",
             sections: str = "sections (model, data, method, train, eval)") -> dict:
    """A YAML file that must hold a mapping; errors name the file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} {p} does not exist.")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {p} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {p} must hold a mapping of {sections}.")
    return data


def validate(raw: dict, source: str | None = None) -> RunConfig:
    try:
        cfg = RunConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_errors(err, source=source)) from None
    from unlearnkit.methods import get_method

    name = cfg.method["name"]
    try:
        get_method(name)
    except ConfigError as err:
        raise ConfigError(f"invalid config{f' in {source}' if source else ''}: method.name: {err}") from None
    try:
        params = cfg.method_params()
    except ValidationError as err:
        raise ConfigError(format_errors(err, prefix=("method",), source=source)) from None
    # Store the filled-in parameters so that the resolved config shows every default.
    cfg.method = {"name": name, **params.model_dump(mode="json")}
    check_forget_stop(cfg, f" in {source}" if source else "")
    _check_files(cfg, source)
    return cfg


def _check_files(cfg: RunConfig, source: str | None) -> None:
    """Local data files named in the config must exist (hub names are checked on load)."""
    from unlearnkit.data.spec import parse_spec

    where = f" in {source}" if source else ""
    sets = {f"data.{k}": getattr(cfg.data, k) for k in ("forget", "random", "alternative")}
    if isinstance(cfg.data.retain, list):
        sets.update({f"data.retain[{i}]": ds for i, ds in enumerate(cfg.data.retain)})
    else:
        sets["data.retain"] = cfg.data.retain
    sets.update({f"eval.nll.{k}": v for k, v in cfg.eval.nll.items()})
    def looks_local(location: str) -> bool:
        return Path(location).suffix.lower() in {".json", ".jsonl", ".csv", ".parquet", ".txt"} or location.startswith(
            (".", "/", "~"))

    for key, ds in sets.items():
        if ds is None:
            continue
        _, location = parse_spec(ds.spec)
        if looks_local(location) and not Path(location).expanduser().exists():
            raise ConfigError(f"invalid config{where}: {key}.spec: data file {location} does not exist.")
        if not Path(location).expanduser().is_file():
            continue  # a hub data set: its `also` entries are hub configs, checked on load
        for i, entry in enumerate(ds.also):
            _, other = parse_spec(entry)
            if not Path(other).expanduser().is_file():
                raise ConfigError(f"invalid config{where}: {key}.also[{i}]: data file {other} does not exist "
                                  f"(the source {ds.spec} is a local file, so its also entries are files too).")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, raw: dict | None = None) -> RunConfig:
    """Load, override and validate a config; ``raw`` replaces reading ``path``."""
    data = raw if raw is not None else (load_raw(path) if path else {})
    data = apply_overrides(data, overrides or [])
    return validate(data, source=str(path) if path else None)


def check_for_unlearn(cfg: RunConfig, source: str | None = None) -> None:
    """What ``unlearnkit unlearn`` needs beyond a valid config, checked without loading anything."""
    from unlearnkit.methods import get_method

    where = f" in {source}" if source else ""
    if cfg.data.forget is None:
        raise ConfigError(f"invalid config{where}: data.forget is required: the examples to unlearn.")
    method = get_method(cfg.method["name"])(cfg.method_params())
    if "retain" in method.batch_needs and not cfg.data.retain_sources:
        raise ConfigError(f"invalid config{where}: method {method.name} needs data.retain (normal data to keep).")
    from unlearnkit.trackers import check_trackers

    check_trackers(cfg.train.report_to, where)


def summarise_config(cfg: RunConfig) -> list[str]:
    """A few lines saying what a run will do (``config check``); ``dump_config`` gives every key."""
    from unlearnkit.data.spec import DataSourceConfig

    def opts(model: BaseModel, skip: tuple = ()) -> str:
        items = {k: v for k, v in model.model_dump(mode="json", exclude_defaults=True).items() if k not in skip}
        return ", ".join(f"{k}={v}" for k, v in items.items())

    def source(ds: DataSourceConfig) -> str:
        extra = opts(ds, ("spec",))
        return ds.spec + (f" ({extra})" if extra else "")

    m = cfg.model
    lora = f"LoRA r={m.lora.r}, alpha={m.lora.alpha:g}" if m.lora.enabled else "full-parameter"
    params = {k: v for k, v in cfg.method.items() if k != "name"}
    t = cfg.train
    steps = f"epochs={t.epochs:g}" if t.epochs is not None else f"max_steps={t.max_steps}"
    lines = [
        f"run: {cfg.name} -> {cfg.run_dir} (seed {cfg.seed})",
        f"model: {m.name} ({lora}, dtype {m.dtype}, device {m.device})",
        f"method: {cfg.method['name']}" + (f" ({', '.join(f'{k}={v}' for k, v in params.items())})" if params else ""),
        f"data: template {cfg.data.template}, max_length {cfg.data.max_length}, truncation {cfg.data.truncation}",
    ]
    lines.append(f"  forget: {source(cfg.data.forget)}" if cfg.data.forget else "  forget: (none)")
    for i, ds in enumerate(cfg.data.retain_sources):
        lines.append(f"  retain[{i}]: {source(ds)}" if isinstance(cfg.data.retain, list) else f"  retain: {source(ds)}")
    for key in ("random", "alternative"):
        if getattr(cfg.data, key) is not None:
            lines.append(f"  {key}: {source(getattr(cfg.data, key))}")
    lines.append(f"train: {steps}, batch_size={t.batch_size}, grad_accum={t.grad_accum}, lr={t.lr:g} ({t.scheduler}), "
                 f"save={t.save}" + (f", save_every={t.save_every}" if t.save_every else "")
                 + (f", report_to={','.join(t.report_to)}" if t.report_to else "")
                 + (f", push_to_hub={t.hub_repo_id}" if t.push_to_hub else ""))
    ev = cfg.eval
    lines.append(f"eval: {'before and after the run' if ev.enabled else 'off'}"
                 + (f", nll sets: {', '.join(ev.nll)}" if ev.nll else ""))
    return lines


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def check_forget_stop(cfg: RunConfig, where: str = "") -> None:
    """``train.max_forget_loss`` is a ceiling on a RISING forget NLL; refuse it where the NLL falls."""
    from unlearnkit.methods import get_method

    method = get_method(cfg.method["name"])
    if cfg.train.max_forget_loss is not None and method.forget_loss_falls:
        raise ConfigError(
            f"invalid config{where}: train.max_forget_loss: method {method.name} lowers the forget NLL "
            "(it learns data.forget), so a ceiling on it would stop the run at its first step; remove "
            "train.max_forget_loss (it guards the gradient-ascent methods) or use max_steps / epochs."
        )
