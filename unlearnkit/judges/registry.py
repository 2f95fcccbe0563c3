"""Judges by name: ``get_judge`` and the default set."""

from __future__ import annotations

import inspect
from typing import Any, Callable

from unlearnkit.errors import UnlearnkitError
from unlearnkit.judges.base import Judge, RefusalJudge
import unlearnkit.judges.classifier as _classifier
from unlearnkit.judges.classifier import JUDGE_META, JUDGE_WEIGHTS, ClassifierJudge
from unlearnkit.judges.guard import GuardJudge
from unlearnkit.judges.harmbench import HarmBenchJudge
from unlearnkit.judges.hf_classifier import HFClassifierJudge
from unlearnkit.judges.rubric import RubricJudge

JUDGES: dict[str, Callable[..., Judge]] = {
    "refusal": RefusalJudge,
    "classifier": ClassifierJudge,
    "hf_classifier": HFClassifierJudge,
    "guard": GuardJudge,
    "harmbench": HarmBenchJudge,
    "rubric": RubricJudge,
}
# The constructor argument a "name:VALUE" spec fills in.
_POSITIONAL = {"classifier": "path", "hf_classifier": "model", "guard": "model", "harmbench": "model", "rubric": "model"}


def default_judges() -> list[str]:
    """``refusal`` and ``classifier`` (the shipped judge); ``refusal`` alone when the package lacks it."""
    shipped = _classifier.default_judge_dir()
    if (shipped / JUDGE_WEIGHTS).is_file() and (shipped / JUDGE_META).is_file():
        return ["refusal", "classifier"]
    return ["refusal"]


def judge_label(spec: str | dict) -> str:
    """A short, stable name for a judge spec, used as its key in reports."""
    if isinstance(spec, str):
        return spec
    name = str(spec.get("name", "?"))
    target = spec.get(_POSITIONAL.get(name, ""), None)
    return f"{name}:{target}" if target else name


def _is_dotted(name: str) -> bool:
    """``module.path:ClassName`` (the module part has a dot or is not a judge's name)."""
    module, sep, attr = name.partition(":")
    return bool(sep and attr and module not in JUDGES and attr.isidentifier())


def _dotted_judge(path: str):
    from unlearnkit.registry import load_dotted

    return load_dotted(path, lambda obj: isinstance(obj, type) and issubclass(obj, Judge), "judge",
                       "a subclass of unlearnkit.judges.base.Judge")


def get_judge(spec: str | dict) -> Judge:
    """A judge from ``"name"``, ``"name:VALUE"`` (path or model id), ``{"name": ..., **options}``,
    or a user's own ``Judge`` subclass by dotted path (``"mypkg.judges:MyJudge"``, or as the
    mapping's ``name`` with its constructor's options)."""
    if isinstance(spec, str):
        name, _, value = spec.strip().partition(":")
        options: dict[str, Any] = {}
        if _is_dotted(spec.strip()):  # a user's judge class: module.path:ClassName
            name, value = spec.strip(), ""
        if value:
            if name not in _POSITIONAL:
                raise UnlearnkitError(f"judge {name!r} takes no ':' argument (got {spec!r}).")
            options[_POSITIONAL[name]] = value
    elif isinstance(spec, dict):
        options = dict(spec)
        name = str(options.pop("name", ""))
    else:
        raise UnlearnkitError(f"a judge spec is a name or a mapping with 'name', not {type(spec).__name__}.")
    factory = JUDGES.get(name) or (_dotted_judge(name) if _is_dotted(name) else None)
    if factory is None:
        raise UnlearnkitError(f"unknown judge {name!r}; choose one of {', '.join(JUDGES)}, "
                              "or name your own Judge subclass as module.path:ClassName.")
    accepted = set(inspect.signature(factory).parameters)
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise UnlearnkitError(
            f"judge {name!r} has no option {unknown[0]!r}; its options are {', '.join(sorted(accepted)) or 'none'}."
        )
    if name in ("hf_classifier", "guard", "rubric") and "model" not in options:
        raise UnlearnkitError(f"judge {name!r} needs a model: write '{name}:MODEL_ID_OR_PATH'.")
    return factory(**options)
