"""The HTML reports: the Markdown renderer, compare.html, and a real headless browser's screenshot."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from unlearnkit.reports.html import markdown_to_html, write_page


def _png(path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 2.5))
    ax.plot([0, 1, 2, 3], [3.0, 2.2, 1.9, 1.2], lw=2)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def test_markdown_tables_escaping_and_inline_images(tmp_path):
    png = _png(tmp_path / "chart.png")
    md = ("# Run `x` <b>\n\nText with **bold** & *it*.\n\n| metric | value |\n|---|---:|\n"
          "| harm \\| rate | 0.250 [0.142, 0.401] |\n| <script>alert(1)</script> | – |\n\n"
          "- one\n  more of one\n- two\n\n![the chart](chart.png)\n\n```\na < b\n```\n")
    out = markdown_to_html(md, tmp_path)
    assert "<h1>Run <code>x</code> &lt;b&gt;</h1>" in out
    assert "<strong>bold</strong> &amp; <em>it</em>" in out
    assert "<th>metric</th><th>value</th>" in out
    assert "<td>harm | rate</td><td class=num>0.250 [0.142, 0.401]</td>" in out
    assert "<script>" not in out and "&lt;script&gt;alert(1)&lt;/script&gt;" in out
    assert "<li>one<br>more of one</li><li>two</li>" in out
    assert "<pre><code>a &lt; b</code></pre>" in out
    src = re.search(r'src="data:image/png;base64,([^"]+)"', out).group(1)
    assert base64.b64decode(src) == png.read_bytes()  # the very file, inline
    assert "(missing.png was not drawn)" in markdown_to_html("![x](missing.png)", tmp_path)


def _eval(path: Path, label: str, rate: float, ci: list[float], answer: str) -> Path:
    path.mkdir(parents=True)
    results = {"harm": {"unseen": {"n": 20, "harmful_rate": {"refusal": rate}, "harmful_rate_ci95": {"refusal": ci},
                                   "samples": [{"prompt": "How do I pick a lock?", "response": answer}]}}}
    (path / "eval.json").write_text(json.dumps({"label": label, "results": results}))
    return path


def test_compare_html_has_the_table_with_intervals_and_answers_side_by_side(tmp_path):
    from unlearnkit.reports.evaluation import compare

    a = _eval(tmp_path / "orig", "original", 0.6, [0.387, 0.781], "First, insert a tension wrench.")
    b = _eval(tmp_path / "unl", "unlearned", 0.1, [0.028, 0.301], "I can't help with that.")
    compare([a, b], out_dir=tmp_path / "cmp")
    page = (tmp_path / "cmp" / "compare.html").read_text()
    assert "0.600 [0.387, 0.781]" in page and "0.100 [0.028, 0.301]" in page
    assert "harm.unseen.effectiveness_pct.refusal" in page
    assert "data:image/png;base64," in page  # compare.png inline
    block = page[page.index("How do I pick a lock?"):]
    assert block.index("First, insert a tension wrench.") < block.index("I can&#x27;t help with that.")
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", page)


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def screenshot(html_file: Path, png: Path, profile: Path) -> Path:
    """A headless Chromium screenshot of ``html_file`` (nothing fetched, no profile kept)."""
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
           f"--screenshot={png}", "--window-size=1200,1600", html_file.resolve().as_uri()]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    return png


def non_blank(png: Path) -> tuple[float, int]:
    """(share of pixels that are not the page background, number of distinct colours)."""
    import numpy as np
    from PIL import Image

    rgb = np.asarray(Image.open(png).convert("RGB")).reshape(-1, 3)
    colours, counts = np.unique(rgb, axis=0, return_counts=True)
    return 1.0 - counts.max() / counts.sum(), len(colours)


@pytest.mark.skipif(chromium() is None, reason="Chromium is not installed (make html-check installs Debian's chromium)")
def test_report_renders_in_headless_chromium(tmp_path):
    _png(tmp_path / "chart.png")
    md = ("# A report\n\n| metric | value |\n|---|---:|\n" + "".join(f"| m{i} | 0.{i}00 [0.1, 0.9] |\n" for i in range(8))
          + "\n![chart](chart.png)\n")
    page = write_page(tmp_path / "report.html", "test", markdown_to_html(md, tmp_path))
    png = screenshot(page, tmp_path / "shot.png", tmp_path / "profile")
    drawn, colours = non_blank(png)
    assert drawn > 0.05 and colours > 20, (drawn, colours)
    blank = write_page(tmp_path / "blank.html", "blank", "")
    drawn_blank, _ = non_blank(screenshot(blank, tmp_path / "blank.png", tmp_path / "profile2"))
    assert drawn_blank < drawn / 2  # the measure tells a page with content from an empty one


def test_experiment_html_has_the_table_each_loss_curve_and_the_rows_answers(tmp_path):
    from unlearnkit.reports.html_pages import write_experiment_html

    rows = []
    for label, answer in (("Original", "the road went on"), ("Finetuned", "ever on and on"), ("Unlearned", "blue")):
        stage = tmp_path / f"eval_{label.lower()}"
        stage.mkdir()
        sample = {"prompt": "The Road goes", "truth": "ever on and on", "generated": answer}
        (stage / "eval.json").write_text(json.dumps({"results": {"memorisation": {"n": 6, "samples": [sample]}}}))
        rows.append((label, stage))
    training = []
    for name in ("finetune", "unlearn"):
        (tmp_path / name).mkdir()
        _png(tmp_path / name / "loss_curves.png")
        training.append((name, tmp_path / name))
    md = "# Experiment `x`\n\n| Model | Book ROUGE-L |\n|---|---:|\n| Original | 0.100 |\n| Unlearned | 0.050 |\n"
    page = write_experiment_html(tmp_path, md, rows, training).read_text()
    assert "<td class=num>0.050</td>" in page
    assert "Loss curves: finetune" in page and "Loss curves: unlearn" in page
    assert page.count("data:image/png;base64,") == 2  # no compare.png here: only the two curves
    block = page[page.index("The Road goes"):]
    positions = [block.index(a) for a in ("the road went on", "ever on and on", "blue")]
    assert positions == sorted(positions)  # one box per row, in the table's order
