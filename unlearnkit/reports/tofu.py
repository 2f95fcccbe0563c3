"""TOFU results tables, made from ``eval.json`` files of the ``tofu`` suite.

One row per model, with open-unlearning's columns: forget quality, model utility,
forget ROUGE, forget truth ratio and privacy leak (plus the membership AUC behind
it), each with its 95% interval where one is defined. ``unlearnkit report tofu
RUN...`` builds the table from experiment folders (every eval stage of the tofu
suite in them), eval stage folders or ``eval.json`` files; the experiment report
uses :func:`tofu_table` on its own rows.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from unlearnkit.errors import UnlearnkitError

# (metric in the tofu result, column label)
COLUMNS: tuple[tuple[str, str], ...] = (
    ("forget_quality", "Forget quality (KS p)"),
    ("model_utility", "Model utility"),
    ("forget_Q_A_ROUGE", "Forget ROUGE-L recall"),
    ("forget_truth_ratio", "Forget truth ratio"),
    ("privleak", "Privacy leak (%)"),
    ("mia_auc", "MIA AUC (min-k)"),
)

TOFU_NOTE = (
    "TOFU columns (docs/tofu.md): forget quality is the p-value of a two-sample KS test between this model's "
    "and the retain model's forget-set truth ratios (high = indistinguishable from a model that never saw the "
    "forget authors; a p-value has no interval); model utility is the harmonic mean of nine retain, "
    "real-author and world-fact figures; forget ROUGE-L recall of greedy answers; forget truth ratio "
    "mean of min(R, 1/R); privacy leak the relative gap of the membership-inference AUC (forget vs holdout) "
    "to the retain model's (0 = as the retain model). Brackets: 95% percentile-bootstrap intervals over items."
)


def _fmt(value, ci=None, pvalue: bool = False) -> str:
    if value is None:
        return "–"
    if pvalue:
        return f"{value:.3g}"
    digits = 1 if abs(value) >= 10 else 3
    text = f"{value:.{digits}f}"
    if ci:
        text += f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"
    return text


def tofu_result(eval_json: Path) -> dict | None:
    """The tofu suite's result in an ``eval.json``, or None when it has none."""
    data = json.loads(Path(eval_json).read_text())
    return (data.get("results") or {}).get("tofu")


def row_cells(label: str, res: dict) -> list[str]:
    cells = [label]
    for key, _ in COLUMNS:
        cells.append(_fmt(res.get(key), res.get(f"{key}_ci95"), pvalue=key == "forget_quality"))
    n = res.get("n") or {}
    cells.append(", ".join(f"{k} {v}" for k, v in n.items()))
    return cells


def table(rows: list[tuple[str, dict]]) -> str:
    """A Markdown table of (label, tofu result) rows."""
    from unlearnkit.reports.evaluation import markdown_table

    return markdown_table(["Model", *[c for _, c in COLUMNS], "n (items per set)"], [row_cells(l, r) for l, r in rows])


def tofu_table(rows: list[tuple[str, str, Path]]) -> str | None:
    """The experiment report's table for (label, stage, eval.json) rows; None when no row ran the tofu suite."""
    found = [(label, tofu_result(path)) for label, _, path in rows if Path(path).is_file()]
    found = [(label, res) for label, res in found if res is not None]
    return table(found) if found else None


# --------------------------------------------------------------------------- from run folders


def _stage_label(folder: Path, res: dict) -> tuple[int, str]:
    """(order, label) of an eval stage of an experiment: Retain, Finetuned, then Unlearned: METHOD."""
    record = folder / "stage.json"
    info = json.loads(record.read_text()) if record.is_file() else {}
    upstream = folder.parent / str(info.get("model_from", ""))
    up_record = upstream / "stage.json"
    kind = json.loads(up_record.read_text()).get("kind") if up_record.is_file() else None
    if res.get("is_reference"):
        return 0, "Retain"
    if kind == "unlearn":
        cfg = upstream / "config.yaml"
        method = (yaml.safe_load(cfg.read_text()) or {}).get("method", {}).get("name") if cfg.is_file() else None
        if method is None:
            return 2, f"Unlearned: {upstream.name}"
        # A sweep's tag (stage unlearn-npo-lr1e-3) stays in the label: two points of one method differ.
        tag = upstream.name.removeprefix(f"unlearn-{method}") if upstream.name.startswith(f"unlearn-{method}") else ""
        return 2, f"Unlearned: {method}{tag}"
    if kind == "finetune":
        return 1, "Finetuned"
    return 3, folder.name


def collect(paths: list[str | Path]) -> list[tuple[str, dict]]:
    """(label, tofu result) for every tofu eval found in ``paths``, each eval once."""
    found: dict[Path, tuple[tuple, str, dict]] = {}
    for i, raw in enumerate(paths):
        p = Path(raw)
        if p.is_file():
            candidates = [p]
        elif (p / "eval.json").is_file():
            candidates = [p / "eval.json"]
        elif p.is_dir():
            candidates = sorted(p.glob("*/eval.json"))
        else:
            raise UnlearnkitError(f"{p} is neither an eval.json, an eval stage folder nor an experiment folder.")
        for c in candidates:
            res = tofu_result(c)
            if res is None or c.resolve() in found:
                continue
            order, label = _stage_label(c.parent, res)
            found[c.resolve()] = ((i, order, label), label, res)
    if not found:
        raise UnlearnkitError(f"no eval.json with a tofu suite result in {', '.join(map(str, paths))}.")
    return [(label, res) for _, label, res in sorted(found.values(), key=lambda v: v[0])]


def add_commands(subparsers):
    """``unlearnkit report tofu RUN...``; returns the ``report`` command's subparsers for the other tables."""
    from unlearnkit.cliargs import add_table_command

    p = subparsers.add_parser("report", help="results tables made from run folders (report tofu RUN...)")
    sub = p.add_subparsers(dest="report_kind", required=True)
    add_table_command(sub, "tofu", lambda runs: table(collect(runs)), "RUN",
                      help="the TOFU table (forget quality, model utility, ...) from experiment folders",
                      description="One row per model: every eval stage of the tofu suite in the experiment folders "
                      "given (or eval stage folders / eval.json files), each once; a stage reused by several runs "
                      "appears once.")
    return sub
