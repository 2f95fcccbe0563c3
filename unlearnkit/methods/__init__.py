"""Unlearning methods, registered by name."""

from __future__ import annotations

from unlearnkit.errors import ConfigError
from unlearnkit.methods.base import FinishContext, LossContext, Method, MethodParams

METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    METHODS[cls.name] = cls
    return cls


def load_dotted(path: str, base: type, what: str):
    """The class ``module.path:ClassName`` names, checked to be a subclass of ``base``.

    Lets a user's own method (or suite, or judge) run without editing the package.
    """
    import importlib

    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"{what} {path!r}: a dotted path is written module.path:ClassName.")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"{what} {path!r}: cannot import {module_name} ({exc}).") from None
    obj = getattr(module, attr, None)
    if obj is None:
        raise ConfigError(f"{what} {path!r}: {module_name} has no {attr}.")
    if not (isinstance(obj, type) and issubclass(obj, base)):
        raise ConfigError(f"{what} {path!r}: {attr} is not a subclass of {base.__module__}.{base.__name__}.")
    return obj


def get_method(name: str) -> type[Method]:
    """A registered method by name, or a user's own by dotted path (``mypkg.npo:NPO``)."""
    if name in METHODS:
        return METHODS[name]
    if ":" in name:
        cls = load_dotted(name, Method, "method.name")
        if not getattr(cls, "name", None):
            raise ConfigError(f"method.name {name!r}: the class sets no `name`.")
        return cls
    raise ConfigError(f"unknown method {name!r}; choose one of {', '.join(sorted(METHODS))}, "
                      "or name your own as module.path:ClassName.")


# Importing the modules registers them.
from unlearnkit.methods import dpo, finetune, gradient_ascent, npo, rmu, simnpo, sku, undial  # noqa: E402,F401

__all__ = ["METHODS", "FinishContext", "LossContext", "Method", "MethodParams", "get_method", "load_dotted", "register"]
