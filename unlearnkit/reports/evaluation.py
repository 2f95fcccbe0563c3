"""Evaluation reports: ``eval.json`` + ``eval.md``, and side-by-side comparisons.

Every metric of a result has a flat dotted name (``harm.unseen.harmful_rate.refusal``,
``truthfulqa.mc1``); :func:`flatten_metrics` makes them, and :func:`compare`
lines runs up by those names. A run folder made by ``unlearnkit unlearn`` has no
``eval.json`` until ``unlearnkit eval`` writes one; until then its
``summary.json`` gives two columns, the answer NLL of its held-out sets before
and after unlearning.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from unlearnkit.errors import UnlearnkitError
from unlearnkit.reports.tables import (  # noqa: F401 (re-exported)
    _cell,
    _collect_samples,
    fmt_value,
    with_ci,
    flatten_intervals,
    flatten_metrics,
    markdown_table,
)
from unlearnkit.reports.plots import plot_comparison
from unlearnkit.rundir import atomic_write_json, atomic_write_text

EVAL_JSON = "eval.json"
EVAL_MD = "eval.md"
# Keys that hold examples or bookkeeping, not metrics.
def eval_markdown(result: dict) -> str:
    """The human-readable report of one evaluation: one table per suite, then samples."""
    parts = [f"# Evaluation of `{result.get('model', '?')}`\n"]
    if result.get("original"):
        parts.append(f"Original model (similarity, fluency): `{result['original']}`  ")
    parts.append(f"Suites: {', '.join(result.get('suites', []))}; template: {result.get('template', '?')}  ")
    if result.get("judges"):
        parts.append("Judges: " + ", ".join(f"`{k}`" for k in result["judges"]) + "  ")
    parts.append(f"Created: {result.get('created', '?')}\n")
    exclusion = result.get("trained_exclusion")
    if exclusion:
        parts.append(f"Trained items: {exclusion.get('note')}  ")
    parts.append("Rates carry a 95% Wilson interval in brackets; n is the number of items scored.\n")
    for suite, res in (result.get("results") or {}).items():
        flat = flatten_metrics(res)
        cis = flatten_intervals(res)
        parts.append(f"## {suite}\n")
        parts.append(markdown_table(["metric", "value"], [[k, with_ci(v, cis.get(k))] for k, v in flat.items()]))
    samples = _collect_samples(result.get("results") or {})
    if samples:
        parts.append("## Samples\n")
        last = None
        for where, sample in samples:
            if where != last:
                parts.append(f"### {where}\n")
                last = where
            for i, (key, text) in enumerate(sample.items()):
                # One bullet per sample, its fields indented under it.
                parts.append(f"{'- ' if i == 0 else '  '}*{key}*: {_cell(str(text))[:500]}  ")
            parts.append("")
    return "\n".join(parts) + "\n"


def write_report(result: dict, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``eval.json`` and ``eval.md`` into ``out_dir`` atomically; returns both paths."""
    out = Path(out_dir)
    json_path = atomic_write_json(out / EVAL_JSON, result)
    md_path = atomic_write_text(out / EVAL_MD, eval_markdown(result))
    return json_path, md_path


# --------------------------------------------------------------------------- comparison


def load_columns(path: str | Path) -> list[tuple[str, dict[str, float]]]:
    """The comparison columns one path gives: ``[(label, {metric: value})]``.

    - an ``eval.json`` file, or a folder holding one: one column, labelled by
      the folder's name;
    - a run folder with only ``summary.json``: two columns, "NAME before" and
      "NAME after", from its held-out answer NLL (``eval_before`` / ``eval_after``).
    """
    p = Path(path).expanduser()
    if p.is_dir():
        if (p / EVAL_JSON).is_file():
            p = p / EVAL_JSON
        elif (p / "summary.json").is_file():
            return _summary_columns(p / "summary.json")
        else:
            raise UnlearnkitError(f"{p} holds neither {EVAL_JSON} nor summary.json; run `unlearnkit eval` on it first.")
    if not p.is_file():
        raise UnlearnkitError(f"{p} does not exist.")
    data = _read_json(p)
    if p.name == "summary.json":
        return _summary_columns(p)
    if "results" not in data and "metrics" not in data:
        raise UnlearnkitError(f"{p} is not an evaluation result (no 'results' or 'metrics').")
    metrics = data.get("metrics") or flatten_metrics(data.get("results") or {})
    label = data.get("label") or (p.parent.name if p.parent.name else p.stem)
    return [(str(label), dict(metrics))]


def load_details(path: str | Path) -> list[dict]:
    """Per column of :func:`load_columns`: its intervals and per-text perplexity scores (empty for summaries)."""
    p = Path(path).expanduser()
    if p.is_dir() and (p / EVAL_JSON).is_file():
        p = p / EVAL_JSON
    if p.is_file() and p.name != "summary.json":
        results = _read_json(p).get("results") or {}
        return [{"intervals": flatten_intervals(results),
                 "per_text": (results.get("perplexity") or {}).get("per_text")}]
    return [{} for _ in load_columns(path)]


def perplexity_change_row(details: list[dict]) -> list | None:
    """The change of retain perplexity against the FIRST column, with a paired bootstrap interval."""
    from unlearnkit.evaluation.stats import fmt_change, relative_change

    if len(details) < 2:
        return None
    first = details[0].get("per_text")
    if not first:
        return None
    row: list = ["–"]
    for d in details[1:]:
        other = d.get("per_text")
        if not other or len(other["nll"]) != len(first["nll"]) or other["tokens"] != first["tokens"]:
            row.append("–")  # not the same texts: no paired change
            continue
        row.append(fmt_change(relative_change(first["nll"], other["nll"], first["tokens"], exp=True)))
    return row


def _read_json(p: Path) -> dict:
    try:
        data = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UnlearnkitError(f"cannot read {p}: {exc}") from None
    if not isinstance(data, dict):
        raise UnlearnkitError(f"{p} does not hold a JSON object.")
    return data


def _summary_columns(p: Path) -> list[tuple[str, dict[str, float]]]:
    data = _read_json(p)
    name = data.get("name") or p.parent.name
    cols = []
    for when in ("before", "after"):
        section = data.get(f"eval_{when}")
        if section:
            cols.append((f"{name} {when}", flatten_metrics({"nll": section})))
    if not cols:
        raise UnlearnkitError(f"{p} has no eval_before / eval_after section (was evaluation disabled?).")
    return cols


def _unique(labels: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label} ({seen[label]})")
    return out


_HARM_RATE = re.compile(r"^harm\.(?P<set>[^.]+)\.harmful_rate\.(?P<judge>.+)$")


def _effectiveness_rows(metrics: list[str], columns: list[dict[str, float]]) -> dict[str, list[float | None]]:
    """E (%) of every column against the FIRST one, for each harmful-rate metric.

    E = (Acc_first - Acc_this) / Acc_first x 100, with Acc a harmful rate (see
    :func:`unlearnkit.evaluation.metrics.unlearning_effectiveness`); None where
    the first column has no harmful response (E is undefined) or lacks the metric.
    """
    from unlearnkit.evaluation.metrics import unlearning_effectiveness

    rows: dict[str, list[float | None]] = {}
    for m in metrics:
        match = _HARM_RATE.match(m)
        if not match:
            continue
        first = columns[0].get(m)
        values: list[float | None] = [None]
        for col in columns[1:]:
            v = col.get(m)
            ok = isinstance(first, (int, float)) and first > 0 and isinstance(v, (int, float))
            values.append(unlearning_effectiveness(first, v) if ok else None)
        rows[f"harm.{match['set']}.effectiveness_pct.{match['judge']}"] = values
    return rows


def compare(paths: list[str | Path], out_dir: str | Path | None = None, labels: list[str] | None = None) -> tuple[str, list[dict]]:
    """Side-by-side table of several evaluations (columns = runs, e.g. Original / Unlearned).

    ``paths`` are ``eval.json`` files or run folders (see :func:`load_columns`).
    When there are two columns or more, E (%) rows compare each column's harmful
    rates with the FIRST column's, so list the original model first. With
    ``out_dir``, writes ``compare.md``, ``compare.json``, ``compare.png`` (a
    bar chart of the main metrics) and ``compare.html`` (all of it on one page,
    with the models' answers to the same prompts side by side) there.

    Returns ``(markdown, rows)`` with ``rows`` a list of ``{"metric": name,
    LABEL: value, ...}`` dicts, one per metric, in the order of the table.
    """
    if not paths:
        raise UnlearnkitError("compare needs at least one eval.json or run folder.")
    cols: list[tuple[str, dict[str, float]]] = []
    details: list[dict] = []
    for p in paths:
        cols.extend(load_columns(p))
        details.extend(load_details(p))
    names = [c[0] for c in cols]
    if labels is not None:
        if len(labels) != len(cols):
            raise UnlearnkitError(f"{len(labels)} labels given for {len(cols)} columns ({', '.join(names)}).")
        names = list(labels)
    names = _unique(names)
    values = [c[1] for c in cols]
    metrics: list[str] = []
    for v in values:
        metrics.extend(m for m in v if m not in metrics)
    effectiveness = _effectiveness_rows(metrics, values) if len(values) > 1 else {}
    table: dict[str, list[float | None]] = {}
    for m in metrics:
        table[m] = [v.get(m) for v in values]
        match = _HARM_RATE.match(m)
        if match:  # E sits right under the harmful rate it is computed from
            e_name = f"harm.{match['set']}.effectiveness_pct.{match['judge']}"
            if e_name in effectiveness:
                table[e_name] = effectiveness[e_name]
    rows = [{"metric": m, **dict(zip(names, vals))} for m, vals in table.items()]
    cells = [[m, *[with_ci(v, d.get("intervals", {}).get(m)) for v, d in zip(vals, details)]]
             for m, vals in table.items()]
    ppl_change = perplexity_change_row(details)
    if ppl_change is not None:
        cells.append(["perplexity.change_vs_first (95% bootstrap)", *ppl_change])
    from unlearnkit.evaluation.overrefusal import refusal_change_row

    refusal_change = refusal_change_row(values)
    if refusal_change is not None:
        cells.append(["overrefusal.refusal_rate.change_vs_first (95% Newcombe)", *refusal_change])
    markdown = markdown_table(["metric", *names], cells)
    markdown += "\nRates: value [95% Wilson interval]; a change whose interval includes 0 is no measurable change.\n"
    if out_dir is not None:
        out = Path(out_dir)
        atomic_write_text(out / "compare.md", markdown)
        atomic_write_json(out / "compare.json", {"columns": names, "sources": [str(p) for p in paths], "rows": rows})
        plot_comparison(names, table, out / "compare.png")
        from unlearnkit.reports.html_pages import write_compare_html

        write_compare_html(out, markdown, names, paths)
    return markdown, rows
