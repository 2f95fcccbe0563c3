"""Registries: methods, evaluation suites and the like, by name or by dotted path.

Each registry is a dict from a name to the registered class or object. A name
that is not registered but is written ``module.path:Attribute`` is imported, so
a user's own entry runs without editing the package.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from unlearnkit.errors import ConfigError


def load_dotted(path: str, check: Callable[[Any], bool], what: str, expected: str) -> Any:
    """The object ``module.path:Attribute`` names, checked by ``check`` (``expected`` says what it must be)."""
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
    if not check(obj):
        raise ConfigError(f"{what} {path!r}: {attr} is not {expected}.")
    return obj


class Registry(dict):
    """Name -> entry; ``get`` also resolves dotted paths. ``kind`` names the entries in errors."""

    def __init__(self, kind: str, what: str, check: Callable[[Any], bool], expected: str):
        super().__init__()
        self.kind, self.what, self.check, self.expected = kind, what, check, expected

    def register(self, entry, name: str | None = None):
        self[name or entry.name] = entry
        return entry

    def resolve(self, name: str):
        if name in self:
            return self[name]
        if ":" in name:
            return load_dotted(name, self.check, self.what, self.expected)
        raise ConfigError(f"unknown {self.kind} {name!r}; choose one of {', '.join(sorted(self))}, "
                          "or name your own as module.path:ClassName.")
