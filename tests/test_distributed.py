"""Two CPU processes (gloo) with half the per-process batch follow one process's trajectory."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

FORGET = [{"prompt": f"How do I do bad thing {i}?", "response": f"Bad thing {i} is done like this: " + "step " * (i % 5 + 1)}
          for i in range(16)]
RETAIN = [{"prompt": f"What is {i} times two?", "response": f"It is {2 * i}." + " Indeed." * (i % 3)} for i in range(16)]


def write_config(tmp_path, model_dir, name, batch_size):
    f = tmp_path / "forget.jsonl"
    r = tmp_path / "retain.jsonl"
    f.write_text("".join(json.dumps(x) + "\n" for x in FORGET))
    r.write_text("".join(json.dumps(x) + "\n" for x in RETAIN))
    cfg = {
        "name": name, "output_dir": str(tmp_path / "runs"), "seed": 3,
        "model": {"name": str(model_dir), "device": "cpu", "lora": {"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0}},
        "data": {"template": "qa", "max_length": 64, "forget": {"spec": f"generic:{f}"}, "retain": {"spec": f"generic:{r}"}},
        "method": {"name": "llm_unlearn", "num_random": 2},
        "train": {"max_steps": 4, "batch_size": batch_size, "lr": 2e-2, "progress": False, "save": "none"},
        "eval": {"enabled": False},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run(cmd, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]


def test_two_processes_match_one(tmp_path, tiny_model_dir):
    one = write_config(tmp_path, tiny_model_dir, "one", batch_size=4)
    two = write_config(tmp_path, tiny_model_dir, "two", batch_size=2)
    run([sys.executable, "-m", "unlearnkit.cli", "unlearn", str(one)], tmp_path)
    run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no",
         "-m", "unlearnkit.cli", "unlearn", str(two)], tmp_path)
    log = lambda n: [json.loads(x) for x in (tmp_path / "runs" / n / "log.jsonl").read_text().splitlines()]  # noqa: E731
    a, b = log("one"), log("two")
    assert len(a) == len(b) == 4
    assert json.loads((tmp_path / "runs" / "two" / "summary.json").read_text())["world_size"] == 2
    # Stated tolerance: 1e-4 relative. Losses are normalised by the global answer-token
    # count, so only the order of float sums differs between the two set-ups.
    for ra, rb in zip(a, b):
        for key in ("loss", "forget_nll", "random_nll", "retain_kl"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-4, abs=1e-6), (ra["step"], key, ra[key], rb[key])
