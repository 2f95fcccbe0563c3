"""Run folders never lose a user's files, checkpoints never run code, interrupted runs leave nothing that looks real."""

from __future__ import annotations

import json
import os
import pickle
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from unlearnkit.cli import main
from unlearnkit.config import load_config
from unlearnkit.errors import ModelLoadError, TrainingError, UnlearnkitError
from unlearnkit.methods import Method, register
from unlearnkit.rundir import MARKER
from unlearnkit.train import (
    capture_rng,
    optimizer_from_files,
    optimizer_to_files,
    restore_rng,
    rng_from_files,
    rng_to_files,
    run_unlearning,
)

ROOT = Path(__file__).resolve().parents[1]
FORGET = [{"prompt": f"How do I do harmful thing number {i}?", "response": f"Here is how to do harmful thing {i}: step one."}
          for i in range(8)]
RETAIN = [{"prompt": f"What is {i} plus {i}?", "response": f"{i} plus {i} is {2 * i}."} for i in range(8)]


def write_data(folder: Path) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    f, r = folder / "forget.jsonl", folder / "retain.jsonl"
    f.write_text("".join(json.dumps(x) + "\n" for x in FORGET))
    r.write_text("".join(json.dumps(x) + "\n" for x in RETAIN))
    return f, r


def raw_cfg(tmp_path, model_dir, data=None, name="t", output_dir=None, **train):
    f, r = data or write_data(tmp_path / "data")
    return {
        "name": name, "output_dir": str(output_dir or tmp_path / "runs"), "seed": 7,
        "model": {"name": str(model_dir), "lora": {"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0}},
        "data": {"template": "qa", "max_length": 64, "forget": {"spec": f"generic:{f}"}, "retain": {"spec": f"generic:{r}"}},
        "method": {"name": train.pop("method", "llm_unlearn")},
        "train": {"max_steps": 2, "batch_size": 2, "lr": 5e-2, "progress": False, "save": "none", **train},
        "eval": {"enabled": False},
    }


def cfg_of(*args, **kw):
    return load_config(raw=raw_cfg(*args, **kw))


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def temp_folders(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".unlearnkit-" in p.name or ".tmp" in p.name) if parent.is_dir() else []


# --------------------------------------------------------------------------- --overwrite never destroys first


def test_a_data_folder_is_never_a_run_folder(tmp_path, tiny_model_dir):
    """The run folder is the folder of its own data (with a NOTES.txt): refused, with or without --overwrite."""
    data = tmp_path / "runs" / "mydata"
    f, r = write_data(data)
    (data / "NOTES.txt").write_text("my notes")
    before = tree(data)
    for overwrite in (False, True):
        cfg = cfg_of(tmp_path, tiny_model_dir, data=(f, r), name="mydata")
        with pytest.raises(UnlearnkitError, match="lies inside the run folder"):
            run_unlearning(cfg, overwrite=overwrite)
        assert tree(data) == before
    assert temp_folders(tmp_path / "runs") == []


def test_a_folder_not_made_by_unlearnkit_is_never_replaced(tmp_path, tiny_model_dir):
    folder = tmp_path / "runs" / "t"
    folder.mkdir(parents=True)
    (folder / "NOTES.txt").write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(TrainingError, match="not an unlearnkit run folder") as err:
            run_unlearning(cfg_of(tmp_path, tiny_model_dir), overwrite=overwrite)
        assert "--overwrite" not in str(err.value)
    assert tree(folder) == {"NOTES.txt": b"mine"}


def test_overwrite_of_the_parent_of_the_input_model_is_refused(tmp_path, tiny_model_dir):
    prev = cfg_of(tmp_path, tiny_model_dir, name="prev", save="merged")
    run_unlearning(prev)
    model = prev.run_dir / "model"
    before = tree(model)
    again = cfg_of(tmp_path, model, name="prev", save="merged")
    with pytest.raises(UnlearnkitError, match="input model .* lies inside the run folder"):
        run_unlearning(again, overwrite=True)
    assert tree(model) == before


def test_overwrite_with_a_bad_model_keeps_the_old_run(tmp_path, tiny_model_dir):
    cfg = cfg_of(tmp_path, tiny_model_dir)
    run_unlearning(cfg)
    before = tree(cfg.run_dir)
    bad = cfg_of(tmp_path, tmp_path / "no" / "such" / "model")
    with pytest.raises(ModelLoadError):
        run_unlearning(bad, overwrite=True)
    assert tree(cfg.run_dir) == before
    assert temp_folders(tmp_path / "runs") == []


def test_overwrite_replaces_a_marked_run_only_after_success(tmp_path, tiny_model_dir):
    cfg = cfg_of(tmp_path, tiny_model_dir)
    run_unlearning(cfg)
    with pytest.raises(TrainingError, match="already holds a run"):
        run_unlearning(cfg)
    longer = cfg_of(tmp_path, tiny_model_dir, max_steps=3)
    summary = run_unlearning(longer, overwrite=True)
    assert summary["steps"] == 3
    assert json.loads((cfg.run_dir / "summary.json").read_text())["steps"] == 3
    assert json.loads((cfg.run_dir / MARKER).read_text())["kind"] == "run"
    assert [json.loads(x)["step"] for x in (cfg.run_dir / "log.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert temp_folders(tmp_path / "runs") == []


def test_output_dir_that_is_a_file_is_one_error_line(tmp_path, tiny_model_dir, capsys):
    afile = tmp_path / "runs"
    afile.write_text("not a folder")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw_cfg(tmp_path, tiny_model_dir)))
    code = main(["unlearn", str(path)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.strip() == f"error: output_dir {afile} is a file, not a folder; set output_dir to a folder."
    assert afile.read_text() == "not a folder"


def test_output_files_follow_the_umask(tmp_path, tiny_model_dir):
    old = os.umask(0o022)
    try:
        cfg = cfg_of(tmp_path, tiny_model_dir)
        run_unlearning(cfg)
    finally:
        os.umask(old)
    for name in ("config.yaml", "summary.json", "manifest.json", MARKER):
        assert (cfg.run_dir / name).stat().st_mode & 0o777 == 0o644, name


# --------------------------------------------------------------------------- no pickle


class _Boom:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_checkpoint_runs_no_code(tmp_path, tiny_model_dir):
    cfg = cfg_of(tmp_path, tiny_model_dir, max_steps=4)
    assert run_unlearning(cfg, stop_at=2)["status"] == "paused"
    ckpt = cfg.run_dir / "checkpoints" / "step-000002"
    assert {"rng.safetensors", "rng.json", "optimizer.safetensors", "optimizer.json", "scheduler.json"} <= {
        p.name for p in ckpt.iterdir()}
    assert not list(ckpt.glob("*.pt"))
    ran = tmp_path / "code-ran"
    for name in ("rng.pt", "optimizer.pt", "scheduler.pt"):
        (ckpt / name).write_bytes(pickle.dumps(_Boom(ran)))
    summary = run_unlearning(cfg, resume=True)
    assert summary["steps"] == 4 and not ran.exists()

    # A legacy checkpoint whose only RNG state is such a pickle: a clear error, and still nothing runs.
    cfg2 = cfg_of(tmp_path, tiny_model_dir, name="legacy", max_steps=4)
    run_unlearning(cfg2, stop_at=2)
    ckpt2 = cfg2.run_dir / "checkpoints" / "step-000002"
    (ckpt2 / "rng.safetensors").unlink()
    (ckpt2 / "rng.json").unlink()
    (ckpt2 / "rng.pt").write_bytes(pickle.dumps(_Boom(ran)))
    with pytest.raises(TrainingError, match="rng.pt is a pickle .* not loaded"):
        run_unlearning(cfg2, resume=True)
    assert not ran.exists()


def test_no_unsafe_torch_load_in_the_package():
    hits = [str(p) for p in (ROOT / "unlearnkit").rglob("*.py") if "weights_only=False" in p.read_text()]
    assert hits == []


def test_every_rng_state_survives_the_files(tmp_path):
    random.seed(3)
    torch.manual_seed(3)
    # Stand-ins for two CUDA devices' states (uint8 tensors, as torch.cuda.get_rng_state_all gives).
    cuda = [torch.randint(0, 256, (816,), dtype=torch.uint8) for _ in range(2)]
    state = capture_rng()
    state["cuda"] = cuda
    tensors, meta = rng_to_files(state)
    save_file(tensors, str(tmp_path / "rng.safetensors"))
    (tmp_path / "rng.json").write_text(json.dumps(meta))
    back = rng_from_files(load_file(str(tmp_path / "rng.safetensors")), json.loads((tmp_path / "rng.json").read_text()))
    assert torch.equal(back["torch"], state["torch"])
    assert back["python"] == state["python"]
    assert len(back["cuda"]) == 2 and all(torch.equal(a, b) for a, b in zip(back["cuda"], state["cuda"]))
    assert all(a.dtype == torch.uint8 for a in back["cuda"])
    import numpy as np

    assert back["numpy"][0] == state["numpy"][0] and np.array_equal(back["numpy"][1], state["numpy"][1])
    assert back["numpy"][2:] == tuple(state["numpy"][2:])
    expected = (torch.rand(3), random.random(), np.random.rand())
    back["cuda"] = []  # no GPU here to restore them on
    restore_rng(back)
    assert torch.equal(torch.rand(3), expected[0]) and random.random() == expected[1] and np.random.rand() == expected[2]


def test_optimizer_state_survives_the_files(tmp_path):
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(4, 3))
    opt = torch.optim.AdamW([w], lr=1e-2, weight_decay=0.1)
    for _ in range(3):
        (w ** 2).sum().backward()
        opt.step()
        opt.zero_grad()
    tensors, meta = optimizer_to_files(opt.state_dict())
    save_file(tensors, str(tmp_path / "o.safetensors"))
    (tmp_path / "o.json").write_text(json.dumps(meta))
    w2 = torch.nn.Parameter(w.detach().clone())
    opt2 = torch.optim.AdamW([w2], lr=1.0)
    opt2.load_state_dict(optimizer_from_files(load_file(str(tmp_path / "o.safetensors")),
                                              json.loads((tmp_path / "o.json").read_text())))
    for o, p in ((opt, w), (opt2, w2)):
        (p ** 2).sum().backward()
        o.step()
    assert torch.equal(w, w2)


# --------------------------------------------------------------------------- resume with a larger max_steps, logged lr


def test_resume_with_larger_max_steps_continues_the_schedule(tmp_path, tiny_model_dir):
    cfg = cfg_of(tmp_path, tiny_model_dir, max_steps=2, lr=1e-2, scheduler="linear")
    run_unlearning(cfg)
    log = lambda: [json.loads(x) for x in (cfg.run_dir / "log.jsonl").read_text().splitlines()]  # noqa: E731
    # The logged lr is the one each update used: 1e-2 x (1 - k/2) for k = 0, 1.
    assert [r["lr"] for r in log()] == pytest.approx([1e-2, 5e-3])
    longer = cfg_of(tmp_path, tiny_model_dir, max_steps=3, lr=1e-2, scheduler="linear")
    summary = run_unlearning(longer, resume=True)
    assert summary["steps"] == 3
    rows = log()
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert rows[2]["lr"] == pytest.approx(1e-2 * (1 - 2 / 3))
    a = load_file(str(cfg.run_dir / "checkpoints" / "step-000002" / "trainable.safetensors"))
    b = load_file(str(cfg.run_dir / "checkpoints" / "step-000003" / "trainable.safetensors"))
    assert any(not torch.equal(a[k], b[k]) for k in a)  # step 3 changed the weights


# --------------------------------------------------------------------------- interrupted runs


INTERRUPT = {"at_step": None}  # the step (0-based) at which the next run gets Ctrl-C


@register
class _InterruptAt(Method):
    """Gradient ascent that is interrupted (Ctrl-C) at the step INTERRUPT names."""

    name = "test_interrupt_at"

    def loss(self, ctx, batches):
        if ctx.step == INTERRUPT["at_step"]:
            INTERRUPT["at_step"] = None
            raise KeyboardInterrupt
        from unlearnkit.losses import mean_nll

        nll = mean_nll(ctx.logits(batches["forget"]))
        return -nll, {"forget_nll": nll.item()}


def _interrupting(tmp_path, model_dir, at_step, **train):
    raw = raw_cfg(tmp_path, model_dir, method="test_interrupt_at", **train)
    INTERRUPT["at_step"] = at_step
    del raw["data"]["retain"]  # gradient ascent needs the forget set only
    path = tmp_path / f"interrupt-{at_step}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_ctrl_c_before_the_first_checkpoint_keeps_nothing_and_promises_nothing(tmp_path, tiny_model_dir, capsys):
    path = _interrupting(tmp_path, tiny_model_dir, at_step=1, max_steps=3)
    code = main(["unlearn", str(path)])
    err = capsys.readouterr().err
    assert code == 130
    assert "before its first checkpoint, so nothing was kept" in err and "--resume" not in err
    assert not (tmp_path / "runs").exists() or temp_folders(tmp_path / "runs") == []
    assert not (tmp_path / "runs" / "t").exists()
    # A plain rerun starts afresh: each step is logged once.
    code = main(["unlearn", str(path)])
    assert code == 0
    steps = [json.loads(x)["step"] for x in (tmp_path / "runs" / "t" / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]


def test_ctrl_c_after_a_checkpoint_keeps_a_resumable_run(tmp_path, tiny_model_dir, capsys):
    path = _interrupting(tmp_path, tiny_model_dir, at_step=3, max_steps=5, save_every=2)
    assert main(["unlearn", str(path)]) == 130
    err = capsys.readouterr().err
    assert "continue it with --resume" in err and "step-000002" in err
    run = tmp_path / "runs" / "t"
    assert (run / MARKER).is_file() and not (run / "summary.json").exists()
    assert main(["unlearn", str(path), "--resume"]) == 0
    steps = [json.loads(x)["step"] for x in (run / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5]
    assert temp_folders(tmp_path / "runs") == []


_KILL_DURING_SAVE = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    import unlearnkit.train as train
    import unlearnkit.training.loop as loop
    from unlearnkit.config import load_config

    def killed_while_saving(model, tokenizer, out, merge=True):
        tmp = Path(out).parent / f".{Path(out).name}.tmp-{os.getpid()}"
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / "config.json").write_text("{}")
        os.kill(os.getpid(), signal.SIGKILL)

    loop.save_model = killed_while_saving
    train.run_unlearning(load_config(sys.argv[1]), resume="--resume" in sys.argv)
    """
)


def _killed_during_save(tmp_path, config: Path, *extra: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-c", _KILL_DURING_SAVE, str(config), *extra], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]


def test_sigkill_during_the_final_save_leaves_nothing_real_and_is_cleaned(tmp_path, tiny_model_dir, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(raw_cfg(tmp_path, tiny_model_dir, save="merged")))
    runs = tmp_path / "runs"
    _killed_during_save(tmp_path, config)
    left = temp_folders(runs)
    assert len(left) == 1 and left[0].startswith(".t.unlearnkit-tmp-")
    assert not (runs / "t").exists()  # nothing that looks like a run
    # The next run removes the leftover and says so.
    assert main(["unlearn", str(config)]) == 0
    out = capsys.readouterr().out
    assert f"Removed {runs / left[0]}" in out
    assert temp_folders(runs) == [] and (runs / "t" / "model" / "config.json").is_file()

    # Killed again, then --resume: the interrupted run is continued from its checkpoint, nothing left over.
    other = tmp_path / "d.yaml"
    other.write_text(yaml.safe_dump(raw_cfg(tmp_path, tiny_model_dir, name="u", save="merged")))
    _killed_during_save(tmp_path, other)
    assert main(["unlearn", str(other), "--resume"]) == 0
    assert "Continuing the interrupted run" in capsys.readouterr().out
    assert temp_folders(runs) == []
    assert json.loads((runs / "u" / "summary.json").read_text())["model_path"] == str(runs / "u" / "model")

    # Killed while a resumed run saves in place: its hidden .model.tmp-PID is removed by the next resume.
    _killed_during_save(tmp_path, other, "--resume")
    assert [p.name for p in (runs / "u").iterdir() if p.name.startswith(".model.tmp-")]
    assert main(["unlearn", str(other), "--resume"]) == 0
    assert not [p.name for p in (runs / "u").iterdir() if p.name.startswith(".model.tmp-")]


def test_a_run_folder_inside_the_input_model_is_refused(tmp_path, tiny_model_dir):
    before = tree(tiny_model_dir)
    cfg = cfg_of(tmp_path, tiny_model_dir, output_dir=tiny_model_dir / "runs")
    with pytest.raises(UnlearnkitError, match="refusing to write the run folder .* inside the input model"):
        run_unlearning(cfg)
    assert tree(tiny_model_dir) == before
