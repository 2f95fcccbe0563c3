"""Full-parameter training keeps float32 master weights unless pure half precision is asked for.

The GPU default (``dtype: auto`` on a bf16 GPU) loads float32 weights and runs
the passes under bf16 autocast (``mixed_precision: auto`` -> bf16). On the CPU
the same path is run with ``mixed_precision: bf16``: after 10 AdamW steps at lr
2e-6 its weights match a float32 run, while pure-bf16 weights (explicit
``dtype: bfloat16``, which warns) lose most of the updates.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from unlearnkit.config import load_config
from unlearnkit.models import resolve_dtype
from unlearnkit.train import run_unlearning

FORGET = [{"prompt": f"How do I do harmful thing {i}?", "response": f"Like this: step {i}, then step {i + 1}."}
          for i in range(8)]


def test_auto_dtype_decision_on_a_bf16_gpu():
    # The decision made on a bf16 GPU, without one (cuda_bf16=True stands for the query).
    assert resolve_dtype("auto", "cuda", full_parameter_training=True, cuda_bf16=True) == torch.float32
    assert resolve_dtype("auto", "cuda", full_parameter_training=False, cuda_bf16=True) == torch.bfloat16  # LoRA base
    assert resolve_dtype("auto", "cuda", full_parameter_training=True, cuda_bf16=False) == torch.float32
    with pytest.warns(UserWarning, match="no float32 master copy"):
        assert resolve_dtype("bfloat16", "cuda", full_parameter_training=True, cuda_bf16=True) == torch.bfloat16


@pytest.fixture
def fresh_accelerator_state():
    """accelerate keeps one process-wide state whose mixed precision cannot change: start and end clean."""
    from accelerate.state import AcceleratorState, PartialState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    PartialState._reset_state()


def run(tmp_path, model_dir, name, dtype, mixed):
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    f = tmp_path / "forget.jsonl"
    f.write_text("".join(json.dumps(x) + "\n" for x in FORGET))
    cfg = load_config(raw={
        "name": name, "output_dir": str(tmp_path / "runs"), "seed": 3,
        "model": {"name": str(model_dir), "device": "cpu", "dtype": dtype},
        "data": {"template": "qa", "max_length": 64, "forget": {"spec": f"generic:{f}"}},
        "method": {"name": "ga"},
        "train": {"max_steps": 10, "batch_size": 2, "lr": 2e-6, "scheduler": "constant", "mixed_precision": mixed,
                  "progress": False, "save": "none"},
        "eval": {"enabled": False},
    })
    assert run_unlearning(cfg)["steps"] == 10
    return {k: v.float() for k, v in load_file(str(cfg.run_dir / "checkpoints" / "step-000010" / "trainable.safetensors")).items()}


def test_master_weights_keep_small_updates(tmp_path, tiny_model_dir, fresh_accelerator_state):
    from transformers import AutoModelForCausalLM

    start = {k: v.float() for k, v in AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict().items()}
    fp32 = run(tmp_path, tiny_model_dir, "fp32", "float32", "no")
    default = run(tmp_path, tiny_model_dir, "default", "auto", "bf16")  # fp32 weights + bf16 autocast
    with pytest.warns(UserWarning, match="no float32 master copy"):
        pure = run(tmp_path, tiny_model_dir, "pure", "bfloat16", "no")
    names = sorted(fp32)
    step_fp32 = torch.cat([(fp32[k] - start[k]).flatten() for k in names])
    step_default = torch.cat([(default[k] - start[k]).flatten() for k in names])
    step_pure = torch.cat([(pure[k] - start[k].bfloat16().float()).flatten() for k in names])
    moved = lambda d: float((d != 0).float().mean())  # noqa: E731
    # float32: AdamW moves (nearly) every weight by about 10 x 2e-6.
    assert moved(step_fp32) > 0.99
    assert float(step_fp32.abs().max()) == pytest.approx(2e-5, rel=0.05)
    # Stated tolerance: the default path's total update differs from the float32 run's by at most 1%
    # in norm and 1e-5 (half the update) per weight: only its bf16 gradients differ (measured: 0.28%,
    # 5.5e-6); its weights keep every update.
    assert moved(step_default) > 0.99
    gap = step_default - step_fp32
    print(f"default vs fp32: max {float(gap.abs().max()):.3g}, relative norm {float(gap.norm() / step_fp32.norm()):.3g}")
    assert float(gap.norm() / step_fp32.norm()) <= 0.01
    assert float(gap.abs().max()) <= 1e-5
    # Pure bf16: most weights never change (their bf16 spacing is far above the step).
    assert moved(step_pure) < 0.2
    assert float((step_pure - step_fp32).abs().max()) > 1e-5
    print(f"share of weights moved: fp32 {moved(step_fp32):.3f}, default {moved(step_default):.3f}, "
          f"pure bf16 {moved(step_pure):.3f}")
