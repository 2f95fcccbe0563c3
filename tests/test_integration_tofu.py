"""Real run of the TOFU protocol on SmolLM2-135M-Instruct (CPU): configs/tofu/smollm2-forget01.yaml.

Both finetunes, gradient_difference, the evaluations; then a second method (ga) that must reuse
the finetuned and retain stages. The assertions are the protocol's acceptance criteria: the
finetuned model knows the forget authors (forget ROUGE-L recall >= 0.6) and is told apart from the
retain model (forget quality <= 0.01). The table and the stage times are printed (run with -s).
Set UNLEARNKIT_TOFU_RUNS to a folder to keep (and reuse) the stages; by default a temporary one.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from unlearnkit.reports import tofu as tofu_report
from unlearnkit.experiment import load_experiment, run_experiment

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.integration
CONFIG = ROOT / "configs" / "tofu" / "smollm2-forget01.yaml"


def _run(out: Path, method: str) -> tuple[dict, float]:
    exp = load_experiment(CONFIG, [f"output_dir={out}", f"vars.method={method}"])
    t0 = time.time()
    report = run_experiment(exp)
    return report, time.time() - t0


def test_smollm2_tofu_forget01_protocol(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the shipped configs name ../shared/data relative to the project
    out = Path(os.environ.get("UNLEARNKIT_TOFU_RUNS", tmp_path))
    first, wall1 = _run(out, "gradient_difference")
    second, wall2 = _run(out, "ga")
    for report, wall in ((first, wall1), (second, wall2)):
        print("\n" + report["markdown_table"])
        print(json.dumps({s["name"]: {"seconds": s["seconds"], "action": s["action"]} for s in report["stages"]}
                         | {"wall_seconds": round(wall, 1)}, indent=2))

    rows = {r["label"]: r["metrics"] for r in first["rows"]}
    finetuned, retain = rows["Finetuned"], rows["Retain"]
    assert finetuned["tofu.n.forget"] == retain["tofu.n.forget"] == 40
    # The finetuned model knows the forget authors; the retain model, which never saw them, does not.
    assert finetuned["tofu.forget_Q_A_ROUGE"] >= 0.6
    assert finetuned["tofu.forget_quality"] <= 0.01
    assert retain["tofu.forget_quality"] == 1.0
    assert finetuned["tofu.forget_Q_A_ROUGE"] > retain["tofu.forget_Q_A_ROUGE"]

    # The second method reused both finetunes and their evaluations.
    actions = {s["name"]: s["action"] for s in second["stages"]}
    for name in ("finetune-retain", "finetune-target", "eval-retain", "eval-finetuned"):
        assert actions[name] == "skipped", actions
    unlearned = {r["label"]: r["metrics"] for r in second["rows"]}["Unlearned: ga"]
    assert 0.0 <= unlearned["tofu.forget_quality"] <= 1.0 and unlearned["tofu.model_utility"] is not None

    table = tofu_report.table(tofu_report.collect([out / "smollm2-forget01"]))
    print("\n" + table)
    assert "Unlearned: gradient_difference" in table and "Unlearned: ga" in table
