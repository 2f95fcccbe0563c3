"""The HTML reports of a run (``report.html``), an experiment (``report.html``) and ``compare`` (``compare.html``).

Each one renders the Markdown that the same folder's Markdown report is made
of, with the charts inline and example answers side by side; see
:mod:`unlearnkit.reports.html`.
"""

from __future__ import annotations

import json
from pathlib import Path

from unlearnkit.reports.html import aligned_answers, answers, eval_samples, markdown_to_html, write_page

RUN_HTML = "report.html"
COMPARE_HTML = "compare.html"


def _eval_json(path: Path) -> dict:
    p = path / "eval.json" if path.is_dir() else path
    if not p.is_file() or p.name == "summary.json":
        return {}
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _sample_blocks(result: dict) -> str:
    """One evaluation's samples: the normal suite's original / unlearned answers, each set's answers."""
    parts = []
    for where, samples in eval_samples(result).items():
        if where == "normal":
            rows = [{"prompt": s.get("prompt", ""), "before (original)": s.get("original", "–"),
                     "after": s.get("response", "–")} for s in samples]
            parts.append(answers(rows, ["before (original)", "after"], "Normal prompts: before and after"))
        else:
            rows = [{"prompt": s.get("prompt", ""), "answer": s.get("response", s.get("generated", "–")),
                     **({"true text": s["truth"]} if "truth" in s else {})} for s in samples]
            parts.append(answers(rows, ["true text", "answer"], f"Answers: {where}"))
    return "".join(parts)


def write_run_html(run_dir: str | Path) -> Path:
    """``report.html`` of a run folder: the card's text, the loss curves, the evaluation's example answers."""
    from unlearnkit.modelcard import run_markdown

    run_dir = Path(run_dir)
    markdown = run_markdown(run_dir)
    if (run_dir / "loss_curves.png").is_file():
        markdown += "\n## Loss curves\n\nEvery loss term at every logged step (log.jsonl).\n\n![loss curves](loss_curves.png)\n"
    body = markdown_to_html(markdown, run_dir)
    samples = _sample_blocks(_eval_json(run_dir))
    if samples:
        body += "<h2>Example answers</h2>" + samples
    return write_page(run_dir / RUN_HTML, f"unlearnkit run {run_dir.name}", body)


def _aligned_html(results: list[tuple[str, dict]]) -> str:
    blocks = aligned_answers([(label, r) for label, r in results if r])
    if not blocks:
        return ""
    labels = [label for label, _ in results]
    return "<h2>Example answers, side by side</h2>" + "".join(
        answers(rows, labels, f"{where}: the same prompts, every model") for where, rows in blocks.items())


def write_compare_html(out_dir: str | Path, markdown: str, labels: list[str], paths: list) -> Path:
    """``compare.html``: the comparison table, its chart, and the compared models' answers to the same prompts."""
    out_dir = Path(out_dir)
    text = f"# Comparison of {', '.join(f'`{label}`' for label in labels)}\n\n{markdown}\n![comparison](compare.png)\n"
    body = markdown_to_html(text, out_dir)
    results = [_eval_json(Path(p).expanduser()) for p in paths]
    if len(results) == len(labels):  # one column per path (a summary.json gives two: no samples anyway)
        body += _aligned_html(list(zip(labels, results)))
    return write_page(out_dir / COMPARE_HTML, "unlearnkit comparison", body)


def write_experiment_html(folder: str | Path, markdown: str, rows: list[tuple[str, Path]],
                          training: list[tuple[str, Path]]) -> Path:
    """``report.html`` of an experiment: its table, the comparison chart, each training stage's loss curves,
    and the rows' answers to the same prompts (Original / Finetuned / Unlearned)."""
    folder = Path(folder)
    text = markdown
    if (folder / "compare.png").is_file():
        text += "\n## Every metric\n\n![comparison](compare.png)\n"
    body = markdown_to_html(text, folder)
    for name, stage_dir in training:
        png = stage_dir / "loss_curves.png"
        if png.is_file():
            body += markdown_to_html(f"## Loss curves: {name}\n\n![loss curves of {name}]({png.name})", stage_dir)
    body += _aligned_html([(label, _eval_json(p)) for label, p in rows])
    return write_page(folder / RUN_HTML, f"unlearnkit experiment {folder.name}", body)
