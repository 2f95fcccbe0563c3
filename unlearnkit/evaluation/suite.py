"""Evaluation: run a model on the registered suites and collect every metric.

:func:`run_eval` is the one entry point (the ``unlearnkit eval`` command calls
it). Each suite is one module under :mod:`unlearnkit.evaluation.suites` (the
TOFU and over-refusal suites in their own modules), registered in
:mod:`unlearnkit.evaluation.registry`; what they share is
:mod:`unlearnkit.evaluation.context`. Suites:

- ``harm``: answers to harmful prompts — the forget prompts (those trained on,
  and the held-out ones when the forget source has a holdout) and unseen ones
  (AdvBench by default) — judged by every configured judge: harmful rate per
  judge per set, mean harm probability, share of empty answers, distinct-1/2.
- ``normal``: answers to normal prompts (held-out TruthfulQA questions):
  similarity to the ORIGINAL model's answers (MiniLM cosine, ROUGE-L), fluency
  (perplexity of the answers under the original model) and distinct-1/2.
  Needs the original model.
- ``truthfulqa``: TruthfulQA MC1 and MC2.
- ``perplexity``: perplexity of retain text (C4 chunks by default).
- ``memorisation``: greedy continuation of a book's passages vs the true text.
- ``overrefusal``: refusal rate on the project's held-out benign prompts with
  alarming words (see :mod:`unlearnkit.evaluation.overrefusal`).

Data sets are :class:`~unlearnkit.data.spec.DataSourceConfig` s. A source with a
``holdout`` is split exactly as training splits it, and the evaluation uses the
HELD-OUT part (for ``forget_prompts`` both parts, as two sets). From a run
config (:func:`options_for_run`) the run's own held-out data is used, so no
evaluation item was trained on.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from unlearnkit.data.spec import parse_spec
from unlearnkit.errors import ConfigError, DataError, UnlearnkitError
from unlearnkit.evaluation.context import SuiteContext, recipe_of
from unlearnkit.evaluation.options import EVAL_FORMAT, EvalOptions
from unlearnkit.evaluation.registry import SuiteRun, get_suite, suite_names
from unlearnkit.paths import data_root

# The registered suites (unlearnkit.evaluation.registry); EXTRA_SUITES run only when named (attack: slow).
SUITES: tuple[str, ...] = suite_names()
EXTRA_SUITES: tuple[str, ...] = tuple(n for n in suite_names(True) if n not in SUITES)


# --------------------------------------------------------------------------- run configs


def options_for_run(cfg, options: EvalOptions | None = None) -> EvalOptions:
    """Options pointed at a run config's own data, so nothing evaluated was trained on.

    - template: the run's ``data.template`` (when ``options.template`` is "auto");
    - forget prompts: the run's forget source (PKU, prompts, pairs), evaluated on
      its trained part and its held-out part; a book (``text``) forget source
      becomes the memorisation set instead (as prompt/continuation pairs);
    - normal prompts: a TruthfulQA retain source with a holdout (its held-out questions);
    - perplexity texts: a text retain source with a holdout (its held-out chunks).
    """
    options = (options or EvalOptions()).model_copy(deep=True)
    update: dict[str, Any] = {}
    if options.template == "auto":
        update["template"] = cfg.data.template
    forget = cfg.data.forget
    if forget is not None:
        recipe = recipe_of(forget)
        if recipe == "text":
            update["memorisation_pairs"] = forget.model_copy(update={"mode": "pairs", "holdout": 0, "limit": None})
        elif recipe in ("pku_saferlhf", "prompts", "generic", None):
            update["forget_prompts"] = forget
    for src in cfg.data.retain_sources:
        recipe = recipe_of(src)
        if recipe == "truthfulqa" and src.holdout:
            update.setdefault("normal_prompts", src)
        elif recipe == "text" and src.holdout and src.mode == "chunks":
            update.setdefault("perplexity_texts", src)
    return options.model_copy(update=update)


def default_suites(has_original: bool, cfg=None) -> list[str]:
    """harm, overrefusal, truthfulqa, perplexity; normal when an original model is known;
    memorisation (instead of overrefusal) when the run forgets a book."""
    book = cfg is not None and cfg.data.forget is not None and recipe_of(cfg.data.forget) == "text"
    suites = ["harm"] if book else ["harm", "overrefusal"]
    if has_original:
        suites.append("normal")
    suites += ["truthfulqa", "perplexity"]
    if book:
        suites.append("memorisation")
    return suites


# --------------------------------------------------------------------------- models


def load_for_eval(spec, base=None):
    """``(model, tokenizer, owned, description)`` for a model spec.

    ``spec``: a ``(model, tokenizer)`` pair (used as is, not owned), a
    :class:`~unlearnkit.models.ModelConfig`, or a name (alias, folder, .gguf,
    hub id). A folder holding a LoRA adapter (``adapter_config.json``) is put on
    its base model: ``base`` (a ModelConfig, e.g. the run's) or the base named
    in the adapter's config. A name inherits ``base``'s dtype/device/trust
    settings, never its LoRA wrapping.
    """
    from unlearnkit.models import LoraConfig, ModelConfig, load_model

    if isinstance(spec, (tuple, list)):
        if len(spec) != 2:
            raise UnlearnkitError("a loaded model is passed as a (model, tokenizer) pair.")
        model, tokenizer = spec
        return model, tokenizer, False, getattr(getattr(model, "config", None), "name_or_path", None) or type(model).__name__
    if isinstance(spec, ModelConfig):
        cfg = spec
    else:
        template = base.model_copy(update={"lora": LoraConfig()}) if isinstance(base, ModelConfig) else ModelConfig()
        cfg = template.model_copy(update={"name": str(spec), "lora": LoraConfig()})
    folder = Path(cfg.name).expanduser()
    if (folder / "adapter_config.json").is_file():
        from peft import PeftModel

        adapter_cfg = json.loads((folder / "adapter_config.json").read_text())
        base_name = base.name if isinstance(base, ModelConfig) else adapter_cfg.get("base_model_name_or_path")
        if not base_name:
            raise UnlearnkitError(f"{folder} is a LoRA adapter that does not name its base model; pass the run config.")
        model, tokenizer = load_model(cfg.model_copy(update={"name": base_name}))
        model = PeftModel.from_pretrained(model, str(folder)).eval()
        return model, tokenizer, True, f"{folder} (LoRA adapter on {base_name})"
    model, tokenizer = load_model(cfg)
    return model, tokenizer, True, cfg.name


def resolve_template(template: str, tokenizer) -> str:
    if template != "auto":
        return template
    return "chat" if getattr(tokenizer, "chat_template", None) else "qa"


def _trained_content(run_config, trained_on, tokenizer):
    """The TrainedContent of a run config and any further runs (configs or folders), or None."""
    from unlearnkit.evaluation.exclusion import TrainedContent

    sources = ([run_config] if run_config is not None else []) + list(trained_on or [])
    content = None
    for src in sources:
        if isinstance(src, (str, Path)):
            part = TrainedContent.from_folder(src)
            if part is None:
                raise DataError(f"{src} keeps no trained sets (data/forget.jsonl ...); pass the run's config instead.")
        else:
            part = TrainedContent.from_run(src, tokenizer)
        content = part if content is None else content.merge(part)
    return content


def check_suite_data(suites: list[str], options: EvalOptions) -> None:
    """Every data set the chosen suites need is set and, when local, exists: checked before any suite runs.

    The defaults are read from ``UNLEARNKIT_DATA`` (see :mod:`unlearnkit.paths`; the layout of unlearnkit's own
    checkout); elsewhere the error names the option to set.
    """
    defaults = EvalOptions()
    for suite in suites:
        names = get_suite(suite).data
        given = [n for n in names if getattr(options, n) is not None]
        if names and not given:
            keys = " or ".join(f"--set {n}.spec=RECIPE:PATH" for n in names)
            raise ConfigError(f"the {suite} suite has no data: {' and '.join(names)} {'are' if len(names) > 1 else 'is'} "
                              f"null; give {keys}, or leave the suite out with --suite.")
        for name in given:
            src = getattr(options, name)
            _, location = parse_spec(src.spec)
            p = Path(location).expanduser()
            looks_local = p.suffix.lower() in {".json", ".jsonl", ".csv", ".tsv", ".parquet", ".txt"} or location.startswith(
                (".", "/", "~"))
            if looks_local and not p.exists():
                default = getattr(defaults, name)
                why = (f" (the default, read from UNLEARNKIT_DATA={data_root()}, the folder of the default data sets)"
                       if default is not None and default.spec == src.spec else "")
                raise DataError(
                    f"{name}: no such file: {location}{why}; give yours with --set {name}.spec=RECIPE:PATH "
                    f"(eval.suite.{name} in a run config), turn it off with --set {name}=null, or leave the {suite} "
                    "suite out with --suite."
                )


def run_eval(
    model,
    suites: list[str] | None = None,
    options: EvalOptions | dict | None = None,
    *,
    original=None,
    run_config=None,
    trained_on: list | None = None,
) -> dict:
    """Evaluate ``model`` on ``suites`` and return the result (what ``eval.json`` holds).

    ``model`` / ``original``: a model spec, a ModelConfig or a ``(model,
    tokenizer)`` pair. ``original`` is needed by the ``normal`` suite.
    ``run_config``: a :class:`~unlearnkit.config.RunConfig` whose held-out data
    and template the evaluation should use (see :func:`options_for_run`).
    ``trained_on``: further run configs or run folders whose training data the
    model has seen (the earlier stages of an experiment). Every held-out and
    evaluation set loses the items that ``run_config`` or ``trained_on`` trained
    on (by normalised prompt, question or response; raw texts by a shared
    13-word span), and each set reports how many it dropped
    (``excluded_trained``); without either, everything is scored and the result
    says so (``trained_exclusion.applied`` false).
    ``suites``: default :func:`default_suites`. The result holds ``results``
    (nested, per suite), ``metrics`` (flat dotted names, for ``compare``),
    ``seconds`` per suite, the options and the judges used.
    """
    from unlearnkit.reports.evaluation import flatten_metrics
    from unlearnkit.rundir import git_commit, package_versions

    if isinstance(options, dict):
        options = EvalOptions.model_validate(options)
    options = options or EvalOptions()
    if run_config is not None:
        options = options_for_run(run_config, options)
    suites = list(suites) if suites else default_suites(original is not None, run_config)
    suites = list(dict.fromkeys(suites))  # no suite twice
    chosen = {}
    for name in suites:
        try:
            chosen[name] = get_suite(name)
        except ConfigError:
            raise ConfigError(f"unknown suite {name!r}; choose from {', '.join(SUITES + EXTRA_SUITES)}, "
                              "or name your own as module.path:SUITE.") from None
    for name, suite in chosen.items():
        if suite.needs_original and original is None:
            raise ConfigError(f"the {name} suite compares with the original model; give the original model (--original).")
    check_suite_data(suites, options)
    base_cfg = run_config.model if run_config is not None else None

    t_start = time.time()
    lm, tokenizer, owned, model_desc = load_for_eval(model, base_cfg)
    template = resolve_template(options.template, tokenizer)
    trained = _trained_content(run_config, trained_on, tokenizer)
    ctx = SuiteContext(lm, tokenizer, options, template, trained)
    holder = {"model": lm, "owned": owned}
    del lm  # the holder is the one reference, so the normal suite can release it

    judges: dict = {}
    judge_info: dict = {}
    if any(s.needs_judges for s in chosen.values()):
        from unlearnkit.evaluation.judges import default_judges, get_judge, judge_label

        for spec in options.judges if options.judges is not None else default_judges():
            label = judge_label(spec)
            judges[label] = get_judge(spec)
        if not judges:
            raise ConfigError("the harm suite needs at least one judge (judges: [refusal]).")

    results: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    # A suite that releases the model under test (normal: it loads the original) runs last.
    env = SuiteRun(ctx=ctx, judges=judges, holder=holder, original=original, base_cfg=base_cfg, run_config=run_config)
    for suite in sorted(suites, key=lambda s: chosen[s].runs_last):
        t0 = time.time()
        results[suite] = chosen[suite].run(env)
        seconds[suite] = round(time.time() - t0, 2)
    judge_info = {label: j.describe() for label, j in judges.items()}
    results = {s: results[s] for s in suites}  # the order asked for
    seconds["total"] = round(time.time() - t_start, 2)

    original_desc = None
    if original is not None:
        original_desc = original if isinstance(original, str) else getattr(original, "name", None) or "(in-memory model)"
    return {
        "format": EVAL_FORMAT,
        "model": model_desc,
        "original": original_desc,
        "suites": suites,
        "template": template,
        "judges": judge_info,
        "trained_exclusion": {
            "applied": trained is not None,
            "sources": trained.sources if trained is not None else [],
            "note": ("items the model was trained on are dropped from every held-out set (see excluded_trained)"
                     if trained is not None else
                     "no training data known (a model unlearnkit did not train, or no run config given): every item scored"),
        },
        "results": results,
        "metrics": flatten_metrics(results),
        "seconds": seconds,
        "options": options.model_dump(mode="json"),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "packages": package_versions(),
        "git_commit": git_commit(),
    }
