"""The evaluation-suite registry: each suite by name, a user's own by dotted path.

A suite is a :class:`Suite`: its name, the function that runs it on a
:class:`SuiteRun` (the model under test, its options, the judges, the original),
the evaluation options holding its data, and what it needs. ``run_eval``
dispatches through the registry; experiment validation and the CLI list its
names. A user's suite (``--suite mypkg.suites:MINE``) is a ``Suite`` object.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

from unlearnkit.registry import Registry


@dataclass
class SuiteRun:
    """What a suite's function receives."""

    ctx: Any  # unlearnkit.evaluation.context.SuiteContext: model, tokenizer, options, template, trained content
    judges: dict = field(default_factory=dict)
    holder: dict = field(default_factory=dict)  # {"model", "owned"}: lets a suite release the model under test
    original: Any = None
    base_cfg: Any = None
    run_config: Any = None


@dataclass(frozen=True)
class Suite:
    name: str
    run: Callable[[SuiteRun], dict]
    data: tuple[str, ...] = ()  # the EvalOptions fields it reads (at least one must be set)
    needs_original: bool = False
    needs_judges: bool = False
    by_name_only: bool = False  # slow: never a default, only when asked for by name
    runs_last: bool = False  # releases the model under test (normal)
    headline: tuple[str, ...] = ()  # its main metrics, for report columns


def lazy(module: str, function: str, call: Callable[[Callable, SuiteRun], dict]) -> Callable[[SuiteRun], dict]:
    """A suite function imported when the suite first runs (keeps ``import unlearnkit`` light)."""

    def run(env: SuiteRun) -> dict:
        return call(getattr(importlib.import_module(module), function), env)

    return run


SUITE_REGISTRY: Registry = Registry("suite", "suite", lambda obj: isinstance(obj, Suite), "an unlearnkit Suite")


def register_suite(suite: Suite) -> Suite:
    return SUITE_REGISTRY.register(suite, suite.name)


def get_suite(name: str) -> Suite:
    return SUITE_REGISTRY.resolve(name)


def suite_names(include_by_name_only: bool = False) -> tuple[str, ...]:
    return tuple(n for n, s in SUITE_REGISTRY.items() if include_by_name_only or not s.by_name_only)


_M = "unlearnkit.evaluation.suites."
for _suite in (
    Suite("harm", lazy(_M + "harm", "suite_harm", lambda f, e: f(e.ctx, e.judges)), ("forget_prompts", "unseen_prompts"),
          needs_judges=True, headline=("harm.unseen.harmful_rate",)),
    Suite("normal", lazy(_M + "normal", "suite_normal", lambda f, e: f(e.ctx, e.holder, e.original, e.base_cfg)),
          ("normal_prompts",), needs_original=True, runs_last=True, headline=("normal.similarity_cosine",)),
    Suite("truthfulqa", lazy(_M + "truthfulqa", "suite_truthfulqa", lambda f, e: f(e.ctx)), ("truthfulqa",), headline=("truthfulqa.mc1",)),
    Suite("perplexity", lazy(_M + "perplexity", "suite_perplexity", lambda f, e: f(e.ctx)), ("perplexity_texts",),
          headline=("perplexity.perplexity",)),
    Suite("memorisation", lazy(_M + "memorisation", "suite_memorisation", lambda f, e: f(e.ctx)), ("memorisation_pairs",),
          headline=("memorisation.rouge_l",)),
    Suite("overrefusal", lazy("unlearnkit.evaluation.overrefusal", "suite_overrefusal", lambda f, e: f(e.ctx)),
          ("overrefusal_prompts",), headline=("overrefusal.refusal_rate",)),
    Suite("tofu", lazy("unlearnkit.evaluation.tofu_suite", "suite_tofu", lambda f, e: f(e.ctx)),
          headline=("tofu.forget_quality", "tofu.model_utility")),
    Suite("attack", lazy("unlearnkit.attacks.run", "suite_attack", lambda f, e: f(e.ctx, e.original, e.run_config)),
          needs_original=True, by_name_only=True),
):
    register_suite(_suite)
