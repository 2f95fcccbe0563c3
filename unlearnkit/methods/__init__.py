"""Unlearning methods, registered by name."""

from __future__ import annotations

from unlearnkit.errors import ConfigError
from unlearnkit.methods.base import LossContext, Method, MethodParams

METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    METHODS[cls.name] = cls
    return cls


def get_method(name: str) -> type[Method]:
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; choose one of {', '.join(sorted(METHODS))}.")
    return METHODS[name]


# Importing the modules registers them.
from unlearnkit.methods import dpo, finetune, gradient_ascent, npo, rmu, simnpo, sku, undial  # noqa: E402,F401

__all__ = ["METHODS", "LossContext", "Method", "MethodParams", "get_method", "register"]
