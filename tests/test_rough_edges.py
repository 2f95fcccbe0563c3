"""config check validates what unlearn needs and stays short; a model folder without config.json is named."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from unlearnkit.cli import main
from unlearnkit.errors import ModelLoadError
from unlearnkit.models import load_model, load_tokenizer

ROOT = Path(__file__).resolve().parents[1]


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_config_check_rejects_what_unlearn_rejects(tmp_path, capsys):
    cfg = tmp_path / "noforget.yaml"
    cfg.write_text("train:\n  lr: 0.001\n")
    code, out, err = run(capsys, "config", "check", str(cfg))
    assert code == 2 and out == ""
    assert err.strip() == f"error: invalid config in {cfg}: data.forget is required: the examples to unlearn."
    d = tmp_path / "f.jsonl"
    d.write_text('{"prompt": "a", "response": "b"}\n')
    cfg.write_text(yaml.safe_dump({"data": {"forget": {"spec": f"generic:{d}"}}, "method": {"name": "gradient_difference"}}))
    code, _, err = run(capsys, "config", "check", str(cfg))
    assert code == 2 and "needs data.retain" in err


def test_config_check_prints_a_short_summary(capsys, monkeypatch, shared_data):
    monkeypatch.chdir(ROOT)
    code, out, err = run(capsys, "config", "check", "configs/smollm2-pku-llm_unlearn.yaml", "--set", "train.max_steps=3")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "configs/smollm2-pku-llm_unlearn.yaml: valid."
    assert len(lines) <= 15
    assert "  train: max_steps=3, batch_size=4" in out
    assert "    forget: pku_saferlhf:../shared/data/pku_saferlhf/pku_saferlhf_5k.json (limit=800, holdout=60)" in out
    assert "truncation answer_first" in out and "--full" in lines[-1]
    # Options of recipes not in use are not printed.
    assert "chunk_tokens" not in out.split("forget:")[1].splitlines()[0]


def test_a_model_folder_without_config_json_is_named(tmp_path, tiny_model_dir):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "config.json").unlink()
    for load in (load_model, load_tokenizer):
        with pytest.raises(ModelLoadError, match=rf"{broken} has no config.json, so it is not a model folder"):
            load(str(broken))
