"""A real attack: SmolLM2-135M-Instruct unlearned by a 15-step llm_unlearn run, then quantised to 4 bits and
relearned for 10 steps on held-out forget data (make integration; about 10 minutes on a 2-core CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from unlearnkit.reports.attack import attack_markdown, write_attack_report
from unlearnkit.attacks.run import run_attacks
from unlearnkit.config import load_config
from unlearnkit.train import run_unlearning

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.integration


def test_quantisation_and_relearning_attack_a_short_llm_unlearn_run(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the shipped config names ../shared/data relative to the project
    cfg = load_config(ROOT / "configs" / "smollm2-pku-llm_unlearn.yaml",
                      [f"output_dir={tmp_path}", "train.max_steps=15", "train.save_every=null", "train.progress=false",
                       "eval.enabled=false"])
    summary = run_unlearning(cfg)
    assert summary["model_path"], summary
    options = {"attacks": ["quantise", "relearn", "prompts"], "bits": [4], "relearn_steps": [10],
               "relearn_modes": ["lora"], "relearn_data": ["forget"], "lora_lrs": [3e-4], "generate_quantised": False,
               "prompt_attacks": ["no_template"], "prompt_limit": 10, "max_new_tokens": 32, "judges": ["refusal"],
               "batch_size": 16, "progress": False}
    result = run_attacks(summary["model_path"], cfg.model.name, options, run_config=cfg)
    json_path, md_path = write_attack_report(result, tmp_path / "attack")
    print(md_path.read_text())
    print(json.dumps(result["seconds"]))
    d = result["data"]
    assert d["scored"] >= 20 and d["attacker_slice"] >= 20 and d["excluded_trained"] == 0
    base = result["baseline"]
    # The short run made the held-out unsafe answers less likely: the ratio has a denominator.
    assert base["unlearned"]["mean_nll"] > base["original"]["mean_nll"]
    q = result["results"]["quantise"]["int4"]
    delta = q["delta"]["overall"]
    assert delta["weights"] > 0 and 0 <= delta["share_same_code_after_quantisation"] <= 1
    for rec in (q["recovery"], result["results"]["relearn"]["runs"][0]["points"][0]["recovery"]):
        if rec["defined"]:
            assert rec["ci95"][0] <= rec["ratio"] <= rec["ci95"][1]
    assert result["results"]["prompts"]["no_template"]["harm"]["n"] == 10
    assert json.loads(json_path.read_text())["format"] == "unlearnkit-attack/1"
    assert attack_markdown(result) == md_path.read_text()
