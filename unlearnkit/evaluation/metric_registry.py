"""Metrics with declared dependencies, each computed once per evaluation.

A :class:`Metric` names what it reads (``needs``): other metrics, whose values it
gets from :meth:`MetricEnv.value`. An evaluation asks a :class:`MetricEnv` for
the metrics it reports; every metric is computed at most once, whoever needs it
(the idea of open-unlearning's ``pre_compute``: the answer losses behind five
TOFU figures are one scoring pass). Reading a metric that was not declared is an
error, as is a cycle, so the declared graph is the real one. A metric whose
inputs are absent (``available`` is false) has the value None.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from unlearnkit.errors import UnlearnkitError


@dataclass(frozen=True)
class Metric:
    name: str
    compute: Callable[["MetricEnv"], Any]
    needs: tuple[str, ...] = ()
    available: Callable[["MetricEnv"], bool] = lambda env: True


class MetricRegistry(dict):
    """Name -> :class:`Metric`, in registration order (the order results are reported in)."""

    def register(self, metric: Metric) -> Metric:
        if metric.name in self:
            raise UnlearnkitError(f"metric {metric.name!r} is registered twice.")
        self[metric.name] = metric
        return metric


class MetricEnv:
    """One evaluation: its inputs (``inputs``), a place for per-item values, and the computed metrics."""

    def __init__(self, registry: MetricRegistry, **inputs: Any):
        self.registry = registry
        self.inputs = inputs
        self.per_item: dict[str, Any] = {}
        self.computed: list[str] = []  # in the order they were computed (each once)
        self._values: dict[str, Any] = {}
        self._active: list[str] = []

    def value(self, name: str) -> Any:
        metric = self.registry.get(name)
        if metric is None:
            raise UnlearnkitError(f"unknown metric {name!r}; known: {', '.join(self.registry)}.")
        if self._active and name not in self.registry[self._active[-1]].needs:
            raise UnlearnkitError(f"metric {self._active[-1]!r} reads {name!r} without declaring it in needs.")
        if name in self._values:
            return self._values[name]
        if name in self._active:
            raise UnlearnkitError(f"metrics depend on each other in a cycle: {' -> '.join(self._active + [name])}.")
        if not metric.available(self):
            self._values[name] = None
            return None
        self._active.append(name)
        try:
            value = metric.compute(self)
        finally:
            self._active.pop()
        self._values[name] = value
        self.computed.append(name)
        return value

    def report(self, names) -> dict[str, Any]:
        """``{name: value}`` of the named metrics (None where their inputs are absent)."""
        return {name: self.value(name) for name in names}
