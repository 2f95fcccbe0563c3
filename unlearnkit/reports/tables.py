"""Formatting shared by every report: flat metric names, values with their intervals, Markdown tables."""

from __future__ import annotations

import math
from typing import Any

_NOT_METRICS = {"samples", "generations"}


def flatten_metrics(results: dict, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a nested result as ``{"a.b.c": value}`` (lists and samples skipped).

    None is kept (a metric that could not be computed), booleans are not.
    """
    out: dict[str, float] = {}
    for key, value in results.items():
        if key in _NOT_METRICS:
            continue
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(flatten_metrics(value, name))
        elif value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
            out[name] = value
    return out


def flatten_intervals(results: dict, prefix: str = "") -> dict[str, list[float]]:
    """95% intervals by the dotted name of the metric they belong to.

    A result keeps an interval beside its metric, as ``X_ci95`` (a ``[lo, hi]``
    list, or a dict of them keyed like ``X``'s dict): ``harm.unseen.harmful_rate_ci95.refusal``
    is the interval of ``harm.unseen.harmful_rate.refusal``.
    """
    out: dict[str, list[float]] = {}
    for key, value in results.items():
        if key in _NOT_METRICS:
            continue
        key = str(key)
        if key.endswith("_ci95"):
            name = f"{prefix}.{key[:-5]}" if prefix else key[:-5]
            if isinstance(value, list) and len(value) == 2:
                out[name] = value
            elif isinstance(value, dict):
                out.update({f"{name}.{k}": v for k, v in value.items() if isinstance(v, list) and len(v) == 2})
        elif isinstance(value, dict):
            out.update(flatten_intervals(value, f"{prefix}.{key}" if prefix else key))
    return out


def with_ci(value: Any, ci: list[float] | None) -> str:
    text = fmt_value(value)
    if ci is None or value is None:
        return text
    return f"{text} [{fmt_value(float(ci[0]))}, {fmt_value(float(ci[1]))}]"


def fmt_value(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


def _cell(text: str) -> str:
    # A pipe or a newline would break the Markdown table.
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(fmt_value(v) if not isinstance(v, str) else v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def _collect_samples(results: dict, prefix: str = "") -> list[tuple[str, dict]]:
    out = []
    for key, value in results.items():
        name = f"{prefix}.{key}" if prefix else key
        if key == "samples" and isinstance(value, list):
            out.extend((prefix, s) for s in value if isinstance(s, dict))
        elif isinstance(value, dict):
            out.extend(_collect_samples(value, name))
    return out
