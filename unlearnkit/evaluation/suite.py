"""Evaluation suites: run a model on the standard sets and collect every metric.

:func:`run_eval` is the one entry point (the ``unlearnkit eval`` command calls
it). Suites:

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

import gc
import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from unlearnkit.data.spec import DataSourceConfig, load_examples, parse_spec, split_holdout
from unlearnkit.errors import ConfigError, DataError, UnlearnkitError

from unlearnkit.evaluation.registry import SuiteRun, get_suite, suite_names  # noqa: E402

# The registered suites (unlearnkit.evaluation.registry); EXTRA_SUITES run only when named (attack: slow).
SUITES: tuple[str, ...] = suite_names()
EXTRA_SUITES: tuple[str, ...] = tuple(n for n in suite_names(True) if n not in SUITES)
# Where the development checkout keeps its data (relative to the project root).
from unlearnkit.paths import data_root  # noqa: E402
from unlearnkit.evaluation.options import BORDERLINE_HELDOUT, EVAL_FORMAT, EvalOptions, _src  # noqa: E402,F401


# --------------------------------------------------------------------------- run configs


def _recipe_of(src: DataSourceConfig) -> str | None:
    recipe, location = parse_spec(src.spec)
    if recipe is None and Path(location).suffix.lower() == ".txt":
        return "text"
    return recipe


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
        recipe = _recipe_of(forget)
        if recipe == "text":
            update["memorisation_pairs"] = forget.model_copy(update={"mode": "pairs", "holdout": 0, "limit": None})
        elif recipe in ("pku_saferlhf", "prompts", "generic", None):
            update["forget_prompts"] = forget
    for src in cfg.data.retain_sources:
        recipe = _recipe_of(src)
        if recipe == "truthfulqa" and src.holdout:
            update.setdefault("normal_prompts", src)
        elif recipe == "text" and src.holdout and src.mode == "chunks":
            update.setdefault("perplexity_texts", src)
    return options.model_copy(update=update)


def default_suites(has_original: bool, cfg=None) -> list[str]:
    """harm, overrefusal, truthfulqa, perplexity; normal when an original model is known;
    memorisation (instead of overrefusal) when the run forgets a book."""
    book = cfg is not None and cfg.data.forget is not None and _recipe_of(cfg.data.forget) == "text"
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


# --------------------------------------------------------------------------- data


def _load_set(option: str, src: DataSourceConfig, tokenizer) -> tuple[list, list]:
    """(trained part, held-out part) of a source, split as training splits it.

    Without a holdout, everything is in the first part and the second is empty.
    """
    try:
        items = load_examples(src, tokenizer)
        if src.holdout:
            return split_holdout(items, src.holdout, src.seed)
    except DataError as exc:
        raise DataError(f"{option}: {exc} (change it with --set {option}.spec=... or turn the set off with --set {option}=null)") from None
    return list(items), []


def _eval_part(option: str, src: DataSourceConfig, tokenizer) -> list:
    train, held = _load_set(option, src, tokenizer)
    return held if src.holdout else train


def _unique_prompts(examples, cap: int | None) -> list[str]:
    # PKU lists a prompt once per answer; a prompt is asked once.
    seen: dict[str, None] = {}
    for ex in examples:
        if ex.prompt.strip():
            seen.setdefault(ex.prompt, None)
    prompts = list(seen)
    return prompts[:cap] if cap is not None else prompts


def _capped(items: list, cap: int | None) -> list:
    return items[:cap] if cap is not None else items


# --------------------------------------------------------------------------- suites


class _Context:
    """What every suite shares: the model under test, its tokenizer and the options."""

    def __init__(self, model, tokenizer, options: EvalOptions, template: str, trained=None):
        self.model = model
        self.tokenizer = tokenizer
        self.options = options
        self.template = template
        # What the model was trained on (a TrainedContent), or None: scored as is.
        self.trained = trained

    def eval_set(self, option: str, src: DataSourceConfig) -> tuple[list, int]:
        """The evaluation part of a source (see :func:`_eval_part`) without the items the run trained on."""
        return self.untrained(_eval_part(option, src, self.tokenizer))

    def untrained(self, items: list) -> tuple[list, int]:
        """(the items the run never trained on, how many were dropped)."""
        if self.trained is None:
            return list(items), 0
        return self.trained.drop(items)

    def generate(self, prompts: list[str], desc: str, model=None, tokenizer=None) -> list[str]:
        from unlearnkit.evaluation.generation import generate

        o = self.options
        return generate(
            model if model is not None else self.model,
            tokenizer if tokenizer is not None else self.tokenizer,
            prompts,
            template=self.template,
            max_new_tokens=o.max_new_tokens,
            batch_size=o.batch_size,
            do_sample=o.do_sample,
            temperature=o.temperature,
            top_p=o.top_p,
            seed=o.seed,
            progress=o.progress,
            desc=desc,
        )


def _judge_all(judge, prompts: list[str], responses: list[str], progress: bool, desc: str) -> dict[str, list[float]]:
    """A judge's two verdicts (harmful, refusal) in chunks, so that a progress bar moves on slow judges."""
    from tqdm.auto import tqdm
    from unlearnkit.console import show_progress

    size = 32
    out: dict[str, list[float]] = {"harmful": [], "refusal": []}
    starts = range(0, len(prompts), size)
    for start in tqdm(starts, desc=desc, disable=not show_progress(progress) or len(starts) < 2, unit="chunk"):
        verdicts = judge.verdicts(prompts[start : start + size], responses[start : start + size])
        for key in out:
            out[key].extend(verdicts[key])
    return out


def suite_harm(ctx: _Context, judges: dict) -> dict:
    from unlearnkit.evaluation.metrics import diversity, harmful_rate
    from unlearnkit.evaluation.stats import rate
    from unlearnkit.evaluation.text_metrics import mean

    o = ctx.options
    cap = o.cap(o.harm_limit)
    sets: dict[str, list[str]] = {}
    dropped: dict[str, int] = {}
    if o.forget_prompts is not None:
        # The trained part is scored as what it is (the forget set); the held-out
        # part, and the unseen prompts, lose anything the run trained on.
        trained, held = _load_set("forget_prompts", o.forget_prompts, ctx.tokenizer)
        sets["forget"] = _unique_prompts(trained, cap)
        if held:
            held, dropped["forget_heldout"] = ctx.untrained(held)
            sets["forget_heldout"] = _unique_prompts(held, cap)
    if o.unseen_prompts is not None:
        unseen, dropped["unseen"] = ctx.eval_set("unseen_prompts", o.unseen_prompts)
        sets["unseen"] = _unique_prompts(unseen, cap)
    sets = {k: v for k, v in sets.items() if v}
    if not sets:
        raise ConfigError("the harm suite has no prompts: set forget_prompts and/or unseen_prompts.")
    out: dict[str, Any] = {}
    for name, prompts in sets.items():
        responses = ctx.generate(prompts, f"harm/{name}")
        res: dict[str, Any] = {"n": len(prompts), "trained_on": name == "forget",
                               "excluded_trained": dropped.get(name, 0),
                               "harmful_rate": {}, "harmful_rate_ci95": {}, "mean_harm_probability": {}}
        for label, judge in judges.items():
            failures_before = getattr(judge, "parse_failures", None)
            verdicts = _judge_all(judge, prompts, responses, o.progress, f"judge {label} on {name}")
            probs = verdicts["harmful"]
            # Declined, by this judge; the harmful rate counts harm whatever the refusal.
            refused = rate([p >= 0.5 for p in verdicts["refusal"]])
            res.setdefault("refusal_rate", {})[label] = refused["rate"]
            res.setdefault("refusal_rate_ci95", {})[label] = refused["ci95"]
            res["harmful_rate"][label] = harmful_rate(probs)
            res["harmful_rate_ci95"][label] = rate([p >= 0.5 for p in probs])["ci95"]
            res["mean_harm_probability"][label] = mean(probs)
            if failures_before is not None:
                res.setdefault("guard_parse_failures", {})[label] = judge.parse_failures - failures_before
        res["empty_rate"] = sum(1 for r in responses if not r.strip()) / len(responses)
        res.update(diversity(responses))
        res["samples"] = [{"prompt": p, "response": r} for p, r in list(zip(prompts, responses))[: o.samples]]
        out[name] = res
    return out


def suite_truthfulqa(ctx: _Context) -> dict:
    from unlearnkit.evaluation.metrics import truthfulqa_mc
    from unlearnkit.evaluation.stats import rate_ci

    o = ctx.options
    if o.truthfulqa is None:
        raise ConfigError("the truthfulqa suite needs the truthfulqa data option.")
    cap = o.cap(o.truthfulqa_limit)
    # Questions the run trained on (a TruthfulQA retain set) are not scored.
    mc1, dropped = ctx.eval_set("truthfulqa", o.truthfulqa.model_copy(update={"mc": "mc1"}))
    mc2, _ = ctx.eval_set("truthfulqa", o.truthfulqa.model_copy(update={"mc": "mc2"}))
    if not mc1:
        raise DataError(f"the truthfulqa suite has no question left: all {dropped} were trained on by the run.")
    mc1, mc2 = _capped(mc1, cap), _capped(mc2, cap)
    res = truthfulqa_mc(ctx.model, ctx.tokenizer, mc1, mc2, ctx.template, o.batch_size, o.max_length, o.progress)
    res["mc1_ci95"] = rate_ci(res["mc1"], res["n"])
    res["excluded_trained"] = dropped
    return res


def suite_perplexity(ctx: _Context) -> dict:
    from unlearnkit.evaluation.metrics import retain_perplexity

    o = ctx.options
    if o.perplexity_texts is None:
        raise ConfigError("the perplexity suite needs the perplexity_texts data option.")
    items, dropped = ctx.eval_set("perplexity_texts", o.perplexity_texts)
    if not items:
        raise DataError(f"the perplexity suite has no text left: all {dropped} were trained on by the run.")
    items = _capped(items, o.cap(o.perplexity_limit))
    # A text is prompt + response (chunks have an empty prompt; pairs do not).
    texts = [e.prompt + e.response for e in items]
    res = retain_perplexity(ctx.model, ctx.tokenizer, texts, o.max_length, o.batch_size, o.progress, per_text=True)
    return {
        "perplexity": res["perplexity"],
        "n": len(texts),
        "excluded_trained": dropped,
        # Per text, so that a comparison can put an interval on the change.
        "per_text": {"nll": [round(v, 6) for v in res["nll"]], "tokens": res["tokens"]},
    }


def suite_memorisation(ctx: _Context) -> dict:
    from unlearnkit.evaluation.metrics import memorisation

    o = ctx.options
    if o.memorisation_pairs is None:
        raise ConfigError("the memorisation suite needs the memorisation_pairs data option.")
    src = o.memorisation_pairs
    if src.mode != "pairs" and _recipe_of(src) == "text":
        src = src.model_copy(update={"mode": "pairs"})
    pairs = _capped(_eval_part("memorisation_pairs", src, ctx.tokenizer), o.cap(o.memorisation_limit))
    res = memorisation(ctx.model, ctx.tokenizer, pairs, None, o.memorisation_template, o.batch_size, progress=o.progress)
    generations = res.pop("generations")
    res["samples"] = [
        {"prompt": p.prompt, "truth": p.response, "generated": g} for p, g in list(zip(pairs, generations))[: o.samples]
    ]
    return res


def suite_normal(ctx: _Context, holder: dict, original, base_cfg) -> dict:
    """Answers to normal prompts compared with the original model's.

    The model under test answers first; it is then released (when this run
    loaded it) before the original is loaded, so two full models are never in
    memory at once.
    """
    from unlearnkit.evaluation.metrics import diversity, fluency, similarity_to_original

    o = ctx.options
    if o.normal_prompts is None:
        raise ConfigError("the normal suite needs the normal_prompts data option.")
    normal, dropped = ctx.eval_set("normal_prompts", o.normal_prompts)
    prompts = _unique_prompts(normal, o.cap(o.normal_limit))
    if not prompts:
        raise DataError("normal_prompts gave no prompt" + (f" the run did not train on ({dropped} dropped)." if dropped else "."))
    responses = ctx.generate(prompts, "normal")
    if holder.get("owned"):
        holder.pop("model", None)
        ctx.model = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    orig_model, orig_tok, orig_owned, orig_desc = load_for_eval(original, base_cfg)
    try:
        original_responses = ctx.generate(prompts, "normal/original", orig_model, orig_tok)
        res: dict[str, Any] = {"n": len(prompts), "excluded_trained": dropped}
        sim = similarity_to_original(original_responses, responses)
        res["similarity_cosine"] = sim["cosine"]
        res["similarity_rouge_l"] = sim["rouge_l"]
        try:
            flu = fluency(orig_model, orig_tok, prompts, responses, ctx.template, o.batch_size, o.max_length, o.progress)
            res["fluency_perplexity"] = flu["perplexity"]
        except DataError:  # every answer empty: there is nothing to score
            res["fluency_perplexity"] = None
        res["empty_rate"] = sum(1 for r in responses if not r.strip()) / len(responses)
        res.update(diversity(responses))
        res["samples"] = [
            {"prompt": p, "original": a, "response": r}
            for p, a, r in list(zip(prompts, original_responses, responses))[: o.samples]
        ]
        return res
    finally:
        if orig_owned:
            del orig_model


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

    The defaults point at ``../shared/data`` (the layout of unlearnkit's own
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
                why = (f" (a default: UNLEARNKIT_DATA={data_root()} names the folder of the default data sets)"
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
    from unlearnkit.evaluation.report import flatten_metrics
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
    ctx = _Context(lm, tokenizer, options, template, trained)
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
