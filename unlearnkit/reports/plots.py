"""Every figure unlearnkit draws: training loss curves, the comparison chart, the demo's chart.

Figures are drawn off screen (the Agg backend, for servers) and written atomically.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable, Sequence


def pyplot():
    """``matplotlib.pyplot`` on the off-screen backend."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, out_png: str | Path, dpi: int = 110) -> Path:
    """Write a matplotlib figure to ``out_png`` atomically and close it."""
    plt = pyplot()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_png.with_name(f".{out_png.stem}.tmp.png")
    fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    tmp.replace(out_png)
    return out_png


def grouped_bars(ax, names: Sequence[str], metrics: Sequence[str], value: Callable[[int, str], float | None],
                 tick_label: Callable[[str], str] = str, fontsize: int = 8) -> None:
    """One group of bars per metric, one bar per name; ``value(j, metric)`` is name j's height (None: 0)."""
    width = 0.8 / max(1, len(names))
    for j, name in enumerate(names):
        xs = [i + (j - (len(names) - 1) / 2) * width for i in range(len(metrics))]
        heights = [value(j, m) for m in metrics]
        ax.bar(xs, [h if isinstance(h, (int, float)) else 0.0 for h in heights], width=width, label=name)
    ax.set_xticks(range(len(metrics)))
    ax.set_xticklabels([tick_label(m) for m in metrics], rotation=30, ha="right", fontsize=fontsize)
    ax.grid(axis="y", alpha=0.3)


def plot_losses(log_path: Path, out_png: Path) -> Path | None:
    """A run's logged terms (one panel each) against the step, from its ``log.jsonl``."""
    if not log_path.exists():
        return None
    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "event" not in r]
    if not rows:
        return None
    plt = pyplot()
    keys = [k for k in rows[0] if k not in ("step", "lr", "grad_norm", "elapsed_s")]
    fig, axes = plt.subplots(len(keys), 1, figsize=(7, 2.2 * len(keys)), sharex=True, squeeze=False)
    steps = [r["step"] for r in rows]
    for ax, key in zip(axes[:, 0], keys):
        ax.plot(steps, [r.get(key) for r in rows], lw=1.2)
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("step")
    fig.tight_layout()
    return save_figure(fig, out_png)


# Main metrics for the comparison chart: rates and scores in [0, 1] on one panel,
# perplexities (and NLLs) on a log-scale panel of their own.
SCORE_PATTERNS = (
    r"^harm\.[^.]+\.harmful_rate\.",
    r"^harm\.[^.]+\.refusal_rate\.",
    r"^harm\.[^.]+\.distinct_2$",
    r"^normal\.similarity_(cosine|rouge_l)$",
    r"^overrefusal\.refusal_rate$",
    r"^truthfulqa\.mc[12]$",
    r"^memorisation\.(exact_match|rouge_l|bleu|cosine)$",
)
SCALE_PATTERNS = (r"perplexity$", r"\.mean_nll$")


def _pick(table: dict[str, list[float | None]], patterns) -> list[str]:
    return [m for m in table if any(re.search(p, m) for p in patterns) and any(isinstance(v, (int, float)) for v in table[m])]


def plot_comparison(names: list[str], table: dict[str, list[float | None]], out_png: str | Path) -> Path:
    """Grouped bar chart (one bar per run) of the main metrics; written atomically."""
    plt = pyplot()
    scores = _pick(table, SCORE_PATTERNS)
    scales = [m for m in _pick(table, SCALE_PATTERNS) if m not in scores]
    panels = [p for p in [(scores, False), (scales, True)] if p[0]]
    if not panels:  # nothing recognised: plot whatever numeric metrics there are
        panels = [(list(table)[:20], False)]
    n_bars = max(len(m) for m, _ in panels) * max(1, len(names))
    fig, axes = plt.subplots(len(panels), 1, figsize=(min(24.0, max(6.0, 0.35 * n_bars + 3)), 4.2 * len(panels)), squeeze=False)
    for ax, (metrics, log) in zip(axes[:, 0], panels):
        grouped_bars(ax, names, metrics, lambda j, m: table[m][j])
        if log:
            ax.set_yscale("log")
            ax.set_ylabel("perplexity / NLL (log)")
        else:
            ax.set_ylabel("score")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, out_png)


def plot_demo(report: dict, out_png: Path) -> Path:
    """The demo's rates and scores, original against unlearned (perplexities left out: another scale)."""
    plt = pyplot()
    m = report["metrics"]
    labels = ("Original", "Unlearned")
    keys = [k for k in m["Original"] if "perplexity" not in k]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    grouped_bars(ax, labels, keys, lambda j, k: m[labels[j]][k], tick_label=lambda k: k.replace(", ", ",\n", 1),
                 fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("rate / score")
    ax.set_title(f"unlearnkit demo: {report['options']['model']}")
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, out_png)
