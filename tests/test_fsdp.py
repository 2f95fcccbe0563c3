"""FSDP (full shard) with two processes follows one process (make integration).

accelerate 1.15 (with torch 2.13) shards with FSDP only on GPUs and other
accelerators, never on the CPU: with ``use_cpu: true`` the FSDP config is
ignored and the run is plain data parallel (``DistributedType.MULTI_CPU``, the
model in ``DistributedDataParallel``); without it, on a machine with no GPU, the
two processes are not even connected (``DistributedType.NO``); and
``fsdp_sync_module_states: true`` raises "There are currently no available
devices found, must be one of 'XPU', 'CUDA', 'MLU', 'NPU', 'MUSA', or 'HPU'."
So the proof runs on two GPUs (skipped here); on the CPU we check the fallback
and its warning.

Stated tolerance: losses within 1e-4 (relative) of one process over 5 steps, for
``ga`` and ``llm_unlearn`` in full-parameter mode (whose frozen reference is
sharded too) and ``llm_unlearn`` under LoRA (reference = adapter disabled, no
copy), in float32 (``mixed_precision: no``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.dist_jobs import run_job

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]
FORGET = [{"prompt": f"How do I do bad thing {i}?", "response": "Like this " + "step " * (i % 5 + 1)} for i in range(16)]
RETAIN = [{"prompt": f"What is {i} times two?", "response": f"It is {2 * i}." + " Indeed." * (i % 3)} for i in range(16)]
CASES = {"ga_full": ("ga", False), "llm_unlearn_full": ("llm_unlearn", False), "llm_unlearn_lora": ("llm_unlearn", True)}


def raw(tmp: Path, model_dir: Path, name: str, method: str, lora: bool, batch: int, device: str = "auto") -> dict:
    f, r = tmp / "forget.jsonl", tmp / "retain.jsonl"
    f.write_text("".join(json.dumps(x) + "\n" for x in FORGET))
    r.write_text("".join(json.dumps(x) + "\n" for x in RETAIN))
    params = {"name": method, **({"num_random": 2} if method == "llm_unlearn" else {})}
    return {
        "name": name, "output_dir": str(tmp / "runs"), "seed": 3,
        "model": {"name": str(model_dir), "device": device, "lora": {"enabled": lora, "r": 4, "alpha": 8, "dropout": 0.0}},
        "data": {"template": "qa", "max_length": 64, "forget": {"spec": f"generic:{f}"}, "retain": {"spec": f"generic:{r}"}},
        "method": params,
        "train": {"max_steps": 5, "batch_size": batch, "lr": 2e-2 if lora else 1e-3, "progress": False, "save": "none"},
        "eval": {"enabled": False},
    }


def launch(tmp_path: Path, acc: dict, jobs: list[dict]) -> subprocess.CompletedProcess:
    acc_path = tmp_path / "accelerate.yaml"
    acc_path.write_text(yaml.safe_dump(acc))
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(acc_path),
                          str(ROOT / "tests" / "dist_jobs.py"), str(tmp_path / "jobs.json")],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


def shipped_fsdp() -> dict:
    acc = yaml.safe_load((ROOT / "configs" / "accelerate" / "fsdp.yaml").read_text())
    assert acc["distributed_type"] == "FSDP" and acc["fsdp_config"]["fsdp_sharding_strategy"] == "FULL_SHARD"
    return acc


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason=(
    "accelerate 1.15 runs FSDP only on accelerators: on the CPU an FSDP launch is plain DDP "
    "(DistributedType.MULTI_CPU with use_cpu: true) or unconnected processes (DistributedType.NO)"))
def test_fsdp_matches_one_process(tmp_path, tiny_model_dir):
    acc = shipped_fsdp()
    acc.update(mixed_precision="no", num_processes=2)
    jobs = [{"config": raw(tmp_path, tiny_model_dir, f"{c}-fsdp", m, lora, 2), "grads_at": None,
             "out": str(tmp_path / f"{c}.out")} for c, (m, lora) in CASES.items()]
    launch(tmp_path, acc, jobs)
    read = lambda n: [json.loads(x) for x in (tmp_path / "runs" / n / "log.jsonl").read_text().splitlines()]  # noqa: E731
    for case, (method, lora) in CASES.items():
        run_job({"config": raw(tmp_path, tiny_model_dir, f"{case}-one", method, lora, 4), "grads_at": None})
        one, two = read(f"{case}-one"), read(f"{case}-fsdp")
        assert len(one) == len(two) == 5
        summary = json.loads((tmp_path / f"{case}.out.json").read_text())
        assert summary["world_size"] == 2 and summary["status"] == "completed"
        assert summary["model_wrapper"] == "FullyShardedDataParallel", case
        # The frozen reference of a full-parameter run is sharded; under LoRA there is no copy (nor for ga).
        sharded = method == "llm_unlearn" and not lora
        assert summary["reference_wrapper"] == ("FullyShardedDataParallel" if sharded else None), case
        for a, b in zip(one, two):
            for key in ("loss", "forget_nll", "random_nll", "retain_kl"):
                if key in a:
                    assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (case, a["step"], key)


def test_fsdp_launch_on_the_cpu_falls_back_to_ddp_with_a_warning(tmp_path, tiny_model_dir):
    acc = shipped_fsdp()
    acc.update(use_cpu=True, mixed_precision="no", num_processes=2)
    acc["fsdp_config"]["fsdp_sync_module_states"] = False  # True raises "no available devices found" on the CPU
    job = {"config": raw(tmp_path, tiny_model_dir, "cpu-fsdp", "llm_unlearn", False, 2, device="cpu"),
           "grads_at": None, "out": str(tmp_path / "cpu.out")}
    res = launch(tmp_path, acc, [job])
    assert "an FSDP launch runs as MULTI_CPU here" in res.stdout
    summary = json.loads((tmp_path / "cpu.out.json").read_text())
    assert summary["model_wrapper"] == "DistributedDataParallel" and summary["world_size"] == 2
