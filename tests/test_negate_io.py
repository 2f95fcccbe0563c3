"""`unlearnkit negate` never writes inside (or replaces) an input, and leaves nothing behind when stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from unlearnkit.cli import main
from unlearnkit.rundir import MARKER

from conftest import tiny_model

ROOT = Path(__file__).resolve().parents[1]


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def hidden_temps(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".unlearnkit-" in p.name or ".tmp-" in p.name)


@pytest.fixture
def base_and_adapter(tmp_path, smol_tokenizer):
    import torch
    from peft import LoraConfig, get_peft_model

    base = tmp_path / "base"
    model = tiny_model("llama", len(smol_tokenizer))
    model.save_pretrained(base)
    smol_tokenizer.save_pretrained(base)
    peft_model = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    adapter = tmp_path / "adcopy"
    peft_model.save_pretrained(adapter)
    return base, adapter


def negate(capsys, *argv):
    code = main(["negate", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_adapter_output_inside_or_over_an_input_is_refused(tmp_path, base_and_adapter, capsys):
    base, adapter = base_and_adapter
    before_adapter, before_base = tree(adapter), tree(base)
    for out, extra in ((adapter / "neg", []), (adapter, ["--overwrite"]), (base / "neg", []), (tmp_path, ["--overwrite"])):
        code, _, err = negate(capsys, "--base", str(base), "--tuned", str(adapter), "--out", str(out), *extra)
        assert code == 2, (out, err)
        assert err.startswith("error: ") and "Traceback" not in err and len(err.strip().splitlines()) == 1
        assert "inside" in err
    assert tree(adapter) == before_adapter and tree(base) == before_base


def test_adapter_output_is_marked_and_replaced_only_with_overwrite(tmp_path, base_and_adapter, capsys):
    base, adapter = base_and_adapter
    out = tmp_path / "neg"
    args = ["--base", str(base), "--tuned", str(adapter), "--out", str(out)]
    code, stdout, err = negate(capsys, *args)
    assert code == 0, err
    assert (out / "model.safetensors").is_file() and (out / MARKER).is_file() and (out / "negation.json").is_file()
    code, _, err = negate(capsys, *args)
    assert code == 2 and "--overwrite" in err
    assert negate(capsys, *args, "--overwrite")[0] == 0
    assert hidden_temps(tmp_path) == []
    # A folder that is not a negation output: never replaced.
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "NOTES.txt").write_text("keep")
    code, _, err = negate(capsys, "--base", str(base), "--tuned", str(adapter), "--out", str(mine), "--overwrite")
    assert code == 2 and "not a negation output made by unlearnkit" in err
    assert tree(mine) == {"NOTES.txt": b"keep"}


def test_ctrl_c_with_an_adapter_leaves_nothing_and_promises_no_resume(tmp_path, base_and_adapter, capsys, monkeypatch):
    from unlearnkit import negation

    base, adapter = base_and_adapter

    def interrupted(tmp, out):
        assert any(tmp.iterdir())  # the model was being written
        raise KeyboardInterrupt

    monkeypatch.setattr(negation, "_publish", interrupted)
    code, _, err = negate(capsys, "--base", str(base), "--tuned", str(adapter), "--out", str(tmp_path / "neg"))
    assert code == 130
    assert "nothing was written" in err and "--resume" not in err
    assert hidden_temps(tmp_path) == [] and not (tmp_path / "neg").exists()


_KILLED = textwrap.dedent(
    """
    import os, signal, sys
    from unlearnkit import negation

    def killed(tensors, path, metadata):
        negation.save_file(tensors, str(path), metadata=metadata)
        os.kill(os.getpid(), signal.SIGKILL)

    negation._save_shard = killed
    negation.negate_checkpoints(sys.argv[1], sys.argv[2], sys.argv[3], progress=False)
    """
)


def test_sigkill_leftover_is_removed_by_the_next_negate(tmp_path, smol_tokenizer, capsys):
    base, tuned = tmp_path / "base", tmp_path / "tuned"
    tiny_model("llama", len(smol_tokenizer), seed=0).save_pretrained(base)
    tiny_model("llama", len(smol_tokenizer), seed=1).save_pretrained(tuned)
    out = tmp_path / "neg"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-c", _KILLED, str(base), str(tuned), str(out)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
    left = hidden_temps(tmp_path)
    assert len(left) == 1 and left[0].startswith(".neg.unlearnkit-tmp-") and not out.exists()
    code, stdout, err = negate(capsys, "--base", str(base), "--tuned", str(tuned), "--out", str(out))
    assert code == 0, err
    assert f"Removed {tmp_path / left[0]}" in stdout
    assert hidden_temps(tmp_path) == [] and (out / MARKER).is_file()
