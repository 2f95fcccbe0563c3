"""The data of a run: forget, retain, the answer pools, the held-out sets, and the leak audit."""

from __future__ import annotations

from dataclasses import dataclass, field

from unlearnkit.config import RunConfig
from unlearnkit.data.audit import audit, check_audit, prompt_key, response_key
from unlearnkit.data.spec import DataSourceConfig, describe, load_examples, parse_spec, split_holdout
from unlearnkit.data.types import Example
from unlearnkit.errors import ConfigError
from unlearnkit.methods import Method


@dataclass
class TrainData:
    forget: list[Example]
    retain: list[Example]
    random_pool: list[str]
    alternative: list[Example] = field(default_factory=list)
    heldout: dict[str, list[Example]] = field(default_factory=dict)
    descriptions: dict[str, dict] = field(default_factory=dict)
    audit: dict = field(default_factory=dict)


def _paired_safe(forget_cfg: DataSourceConfig, heldout: list[Example], tokenizer) -> list[Example]:
    """Safe answers to the held-out forget prompts (PKU-SafeRLHF), for selectivity.

    Every safe answer whose normalised prompt is a held-out prompt, from the
    whole file (deduplicated), so they come from the same held-out prompt groups.
    """
    keys = {prompt_key(e) for e in heldout}
    safe_cfg = forget_cfg.model_copy(update={"subset": "safe", "limit": None, "shuffle": False, "holdout": 0})
    return [e for e in load_examples(safe_cfg, tokenizer) if prompt_key(e) in keys]


def trained_sets(data: "TrainData") -> dict[str, list]:
    """Every set a run trains on, by name (what the leak audit checks held-out sets against)."""
    sets: dict[str, list] = {"forget": data.forget}
    if data.retain:
        sets["retain"] = data.retain
    if data.random_pool:
        sets["random_pool"] = [Example("", r) for r in data.random_pool]
    if data.alternative:
        sets["alternative"] = data.alternative
    return sets


def prepare_data(cfg: RunConfig, tokenizer, method: Method | type[Method]) -> TrainData:
    """Every set of a run: what ``method`` (an instance, or a class built with the run's parameters) trains on,
    and the held-out sets, audited against each other."""
    if isinstance(method, type):
        method = method(cfg.method_params())
    needs = method.batch_needs
    d = cfg.data
    if d.forget is None:
        raise ConfigError("data.forget is required: the examples to unlearn.")
    forget_all = load_examples(d.forget, tokenizer)
    forget, forget_held = split_holdout(forget_all, d.forget.holdout, d.forget.seed)
    data = TrainData(forget=list(forget), retain=[], random_pool=[])
    data.descriptions["forget"] = describe(forget)
    if forget_held:
        data.heldout["forget_heldout"] = list(forget_held)
        data.descriptions["forget_heldout"] = describe(forget_held)
        if d.forget.spec.startswith("pku_saferlhf:") or any("safe" in e.meta for e in forget_held[:1]):
            safe = _paired_safe(d.forget, forget_held, tokenizer)
            if safe:
                data.heldout["safe_heldout"] = safe
    sources = d.retain_sources
    if "retain" in needs and not sources:
        raise ConfigError(f"method {method.name} needs data.retain (normal data to keep).")
    for i, source in enumerate(sources):
        retain_all = load_examples(source, tokenizer)
        retain, retain_held = split_holdout(retain_all, source.holdout, source.seed)
        data.retain.extend(retain)
        # Each source is named by its recipe (retain_truthfulqa, retain_text).
        key = f"retain_{parse_spec(source.spec)[0] or i}"
        if key in data.descriptions:  # two sources of one recipe (two text corpora): number the later one
            key = f"{key}_{i}"
        data.descriptions[key] = describe(retain)
        if retain_held:
            data.heldout[f"{key}_heldout"] = list(retain_held)
            data.descriptions[f"{key}_heldout"] = describe(retain_held)
    if "random" in needs:
        if method.random_pool == "forget":
            data.random_pool = [e.response for e in data.forget]
        else:
            source = data.retain
            if d.random is not None:
                # The pool's held-out part is measured, never drawn as an answer.
                source, random_held = split_holdout(load_examples(d.random, tokenizer), d.random.holdout, d.random.seed)
                data.descriptions["random"] = describe(source)
                if random_held:
                    key = f"random_{parse_spec(d.random.spec)[0] or 'pool'}_heldout"
                    data.heldout[key] = list(random_held)
                    data.descriptions[key] = describe(random_held)
            # Answers to questions only: a raw text chunk is not an answer.
            data.random_pool = [e.response for e in source if e.prompt.strip() and e.response.strip()]
        if len(data.random_pool) < 2:
            raise ConfigError("the random-answer pool needs at least two non-empty answers (data.random or data.retain).")
    for name, ds in cfg.eval.nll.items():
        data.heldout[name] = list(load_examples(ds, tokenizer))
        data.descriptions[f"eval.{name}"] = describe(data.heldout[name])
    if "alternative" in needs:
        data.alternative = _alternative_answers(d.alternative, data.heldout, tokenizer, method.name)
        data.descriptions["alternative"] = describe(data.alternative)
    # The leak audit: no held-out set may share a prompt or response with a trained one.
    data.audit = audit(trained_sets(data), data.heldout)
    check_audit(data.audit, d.allow_overlap)
    return data




def _alternative_answers(source: DataSourceConfig | None, heldout: dict[str, list], tokenizer, method: str) -> list[Example]:
    """The alternative answers a preference method trains towards, without any held-out prompt or answer."""
    if source is None:
        raise ConfigError(f"method {method} needs data.alternative: the answers it prefers to the forget answers "
                          "(e.g. {spec: 'answers:refusals.txt'}, or the PKU file with subset: safe).")
    items = [e for e in load_examples(source, tokenizer) if e.response.strip()]
    held = [e for exs in heldout.values() for e in exs]
    held_prompts = {k for k in map(prompt_key, held) if k}
    held_answers = {k for k in map(response_key, held) if k}
    kept = [e for e in items if prompt_key(e) not in held_prompts and response_key(e) not in held_answers]
    if len(kept) < len(items):
        print(f"data.alternative: {len(items) - len(kept)} of {len(items)} answers left out (their prompt or answer "
              "is held out).", flush=True)
    if not kept:
        raise ConfigError(f"data.alternative ({source.spec}) has no answer left once held-out prompts are removed.")
    return kept
