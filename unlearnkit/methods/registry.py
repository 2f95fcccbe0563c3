"""The method registry: built-in methods by name, a user's own by dotted path (``mypkg.npo:NPO``)."""

from __future__ import annotations

from unlearnkit.errors import ConfigError
from unlearnkit.methods.base import Method
from unlearnkit.registry import Registry, load_dotted as _load_dotted

METHODS: Registry = Registry("method", "method.name", lambda obj: isinstance(obj, type) and issubclass(obj, Method),
                             "a subclass of unlearnkit.methods.base.Method")


def register(cls: type[Method]) -> type[Method]:
    return METHODS.register(cls)


def load_dotted(path: str, base: type, what: str):
    """The class ``module.path:ClassName`` names, checked to be a subclass of ``base``."""
    return _load_dotted(path, lambda obj: isinstance(obj, type) and issubclass(obj, base), what,
                        f"a subclass of {base.__module__}.{base.__name__}")


def get_method(name: str) -> type[Method]:
    """A registered method by name, or a user's own by dotted path (``mypkg.npo:NPO``)."""
    cls = METHODS.resolve(name)
    if not getattr(cls, "name", None):
        raise ConfigError(f"method.name {name!r}: the class sets no `name`.")
    return cls
