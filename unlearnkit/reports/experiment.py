"""The experiment's report: the paper's table (or TOFU's), compare files and the HTML page."""

from __future__ import annotations

import json
from datetime import datetime, timezone

from unlearnkit.errors import UnlearnkitError
from unlearnkit.experiment.spec import (
    _SELF_SIMILARITY,
    ORIGINAL,
    REPORT_COLUMNS,
    REPORT_FORMAT,
    STAGE_RECORD,
    Experiment,
    ResolvedStage,
    stage_state,
)


def _training_summary(stage: ResolvedStage) -> dict | None:
    path = stage.folder / "summary.json"
    if not path.is_file():
        return None
    s = json.loads(path.read_text())
    return {k: s.get(k) for k in ("status", "reason", "steps", "final_terms", "train_seconds", "model_path")}


def write_experiment_report(exp: Experiment, actions: dict[str, str] | None = None) -> dict:
    """``report.md`` + ``report.json`` in the experiment folder: the paper's table, and
    ``compare.md/json/png`` with every metric side by side (:func:`~unlearnkit.reports.evaluation.compare`)."""
    from unlearnkit.reports.evaluation import compare, load_details, markdown_table, perplexity_change_row
    from unlearnkit.rundir import atomic_write_json, atomic_write_text

    rows_spec = exp.report_rows()
    missing = [s.name for _, s in rows_spec if not (s.folder / "eval.json").is_file()]
    if missing:
        raise UnlearnkitError(f"the report needs the eval stages {', '.join(missing)}, which have not run.")
    rows = []
    for label, stage in rows_spec:
        metrics = json.loads((stage.folder / "eval.json").read_text()).get("metrics", {})
        values: dict[str, float | None] = {}
        notes = []
        for key, column in REPORT_COLUMNS:
            value = metrics.get(key)
            if value is None and stage.model_from == ORIGINAL and key in _SELF_SIMILARITY:
                value = _SELF_SIMILARITY[key]
                notes.append("similarity of the original to itself is 1 by definition")
            values[column] = value
        rows.append({"label": label, "stage": stage.name, "model": exp.model_path(stage.model_from),
                     "values": values, "metrics": metrics, "notes": sorted(set(notes))})
    columns = [c for _, c in REPORT_COLUMNS]
    # Drop columns no row measured (e.g. no normal suite asked for).
    columns = [c for c in columns if any(r["values"][c] is not None for r in rows)]
    cells = [[r["label"], *[r["values"][c] for c in columns]] for r in rows]
    # The retain perplexity change of each row against the first (the original), with a
    # paired bootstrap interval over the same held-out texts.
    details = [d for _, s in rows_spec for d in load_details(s.folder / "eval.json")]
    change = perplexity_change_row(details)
    header = ["Model", *columns]
    if change is not None and any(c != "–" for c in change[1:]):
        header.append(f"Retain perplexity change vs {rows[0]['label']} (95% interval)")
        for row, c in zip(cells, change):
            row.append(c)
    table = markdown_table(header, cells)
    from unlearnkit.reports.tofu import tofu_table

    tofu = tofu_table([(r["label"], r["stage"], s.folder / "eval.json") for r, (_, s) in zip(rows, rows_spec)])
    table = tofu or table
    if not rows_spec:
        table = "No eval stage: the experiment has no table (add a stage of kind eval, or report.rows)."
    else:
        compare(
            [s.folder / "eval.json" for _, s in rows_spec], out_dir=exp.folder, labels=[label for label, _ in rows_spec]
        )
    stages = []
    for s in exp.stages:
        record = s.folder / STAGE_RECORD
        info = json.loads(record.read_text()) if record.is_file() else {}
        stages.append({"name": s.name, "kind": s.kind, "model_from": s.model_from, "folder": str(s.folder),
                       "state": stage_state(s), "action": (actions or {}).get(s.name), "seconds": info.get("seconds"),
                       "training": _training_summary(s) if s.kind != "eval" else None})
    report = {
        "format": REPORT_FORMAT,
        "experiment": exp.cfg.name,
        "original": exp.cfg.original,
        "columns": columns,
        "column_metrics": {c: k for k, c in REPORT_COLUMNS if c in columns},
        "rows": rows,
        "stages": stages,
        "markdown_table": table,
        "tofu": tofu is not None,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    atomic_write_json(exp.folder / "report.json", report)
    atomic_write_text(exp.folder / "report.md", _report_markdown(exp, report))
    from unlearnkit.reports.html_pages import write_experiment_html

    write_experiment_html(exp.folder, _report_markdown(exp, report), [(label, s.folder) for label, s in rows_spec],
                          [(s.name, s.folder) for s in exp.stages if s.kind != "eval"])
    return report


def _report_markdown(exp: Experiment, report: dict) -> str:
    parts = [f"# Experiment `{exp.cfg.name}`\n", f"Original model: `{exp.cfg.original}`  ",
             f"Created: {report['created']}\n", report["markdown_table"]]
    notes = sorted({n for r in report["rows"] for n in r["notes"]})
    from unlearnkit.reports.tofu import TOFU_NOTE

    parts.append(TOFU_NOTE + "\n" if report.get("tofu") else
        "Book columns: the model continues held-in prompts of the book greedily; ROUGE-L, BLEU and the "
        "MiniLM embedding cosine compare its continuation with the true text (finetuning should raise them, "
        "unlearning bring them back down). Normal similarity: answers to normal prompts compared with the "
        "original model's (1 = unchanged). Retain perplexity: held-out retain text (lower is better; it "
        "should barely move)."
        + (f" Note: {'; '.join(notes)}." if notes else "")
        + " Every metric side by side: `compare.md`.\n"
    )
    parts.append("## Stages\n")
    from unlearnkit.reports.evaluation import markdown_table

    stage_rows = []
    for s in report["stages"]:
        t = s.get("training") or {}
        detail = ""
        if t:
            final = t.get("final_terms") or {}
            detail = f"{t.get('status')}, {t.get('steps')} steps" + (
                f", final forget NLL {final['forget_nll']:.3f}" if isinstance(final.get("forget_nll"), (int, float)) else "")
        stage_rows.append([s["name"], s["kind"], s["model_from"], detail or "", s["seconds"], f"`{s['folder']}`"])
    parts.append(markdown_table(["stage", "kind", "model from", "result", "seconds", "folder"], stage_rows))
    return "\n".join(parts) + "\n"


