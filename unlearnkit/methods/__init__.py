"""Unlearning methods, registered by name (see :mod:`unlearnkit.methods.registry`)."""

from __future__ import annotations

from unlearnkit.methods.base import FinishContext, LossContext, Method, MethodParams
from unlearnkit.methods.registry import METHODS, get_method, load_dotted, register

# Importing the modules registers them.
from unlearnkit.methods import dpo, finetune, gradient_ascent, npo, rmu, simnpo, sku, undial  # noqa: E402,F401

__all__ = ["METHODS", "FinishContext", "LossContext", "Method", "MethodParams", "get_method", "load_dotted", "register"]
