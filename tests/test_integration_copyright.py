"""Real run of the copyright track: SmolLM2-135M-Instruct learns, then forgets, an Oz book (CPU).

The shipped experiment `configs/copyright/smollm2-oz.yaml`, end to end through the library's API
(`load_experiment` + `run_experiment`), into a temporary folder. The assertions are the track's
acceptance criteria; the report table and the stage times are printed (run with `-s`).
About 30-45 minutes on a 2-core CPU (docs/copyright.md has measured runs).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from unlearnkit.experiment import load_experiment, run_experiment

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.integration

ROUGE = "memorisation.rouge_l"
PPL = "perplexity.perplexity"


def test_smollm2_learns_then_forgets_the_book(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the shipped configs name ../shared/data relative to the project
    exp = load_experiment(ROOT / "configs" / "copyright" / "smollm2-oz.yaml", [f"output_dir={tmp_path}"])
    t0 = time.time()
    report = run_experiment(exp)
    wall = time.time() - t0

    rows = {r["label"]: r["metrics"] for r in report["rows"]}
    print("\n" + report["markdown_table"])
    print(json.dumps({"stages": {s["name"]: {"seconds": s["seconds"], "action": s["action"],
                                             "training": s["training"]} for s in report["stages"]},
                      "wall_seconds": round(wall, 1)}, indent=2, default=str))

    assert [r["label"] for r in report["rows"]] == ["Original", "Finetuned", "Unlearned"]
    assert all(s["action"] == "ran" for s in report["stages"])  # a fresh folder: nothing reused
    original, finetuned, unlearned = rows["Original"], rows["Finetuned"], rows["Unlearned"]
    assert original["memorisation.n"] == finetuned["memorisation.n"] == unlearned["memorisation.n"] >= 40

    # Finetuning makes the model reproduce the book: ROUGE-L of its continuations rises clearly.
    assert finetuned[ROUGE] >= max(original[ROUGE] + 0.1, 1.5 * original[ROUGE])
    # Unlearning brings it back to the original's level (within 10%, or below)...
    assert unlearned[ROUGE] <= 1.1 * original[ROUGE]
    # ...while held-out retain text stays as likely as after finetuning (perplexity within 10%)...
    assert unlearned[PPL] <= 1.1 * finetuned[PPL]
    # ...and answers to normal prompts stay close to the original model's (reported, loosely bounded:
    # degenerate output, e.g. one token repeated, would fall far below this).
    assert unlearned["normal.similarity_cosine"] >= 0.5
    assert (tmp_path / "smollm2-oz" / "report.md").is_file()
