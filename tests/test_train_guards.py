"""Guards resolved before a run starts: gradient checkpointing and the forget-loss stop."""

from __future__ import annotations

from pathlib import Path

import pytest

from unlearnkit.config import load_config
from unlearnkit.errors import ConfigError
from unlearnkit.methods import get_method
from unlearnkit.train import resolve_gradient_checkpointing

ROOT = Path(__file__).resolve().parents[1]


def method_of(cfg):
    return get_method(cfg.method["name"])(cfg.method_params())


def test_auto_checkpointing_is_off_for_the_shipped_anchor_negated_config():
    # configs/smollm2-pku-sku.yaml: divergence anchor_negated, gradient_checkpointing auto (the default).
    cfg = load_config(ROOT / "configs" / "smollm2-pku-sku.yaml")
    assert cfg.train.gradient_checkpointing == "auto" and cfg.method["divergence"] == "anchor_negated"
    method = method_of(cfg)
    # The decision a CUDA run makes (acc.device.type == "cuda"), without a GPU.
    assert resolve_gradient_checkpointing(cfg.train.gradient_checkpointing, method, "cuda") is False
    with pytest.raises(ConfigError, match="train.gradient_checkpointing"):
        resolve_gradient_checkpointing(True, method, "cuda")


def test_auto_checkpointing_stays_on_under_cuda_where_the_method_can_use_it():
    cfg = load_config(ROOT / "configs" / "smollm2-pku-llm_unlearn.yaml")
    method = method_of(cfg)
    assert resolve_gradient_checkpointing("auto", method, "cuda") is True
    assert resolve_gradient_checkpointing("auto", method, "cpu") is False
    assert resolve_gradient_checkpointing(False, method, "cuda") is False
    hinge = get_method("sku")(get_method("sku").Params(divergence="hinge"))
    assert resolve_gradient_checkpointing("auto", hinge, "cuda") is True


@pytest.mark.parametrize("method", ["sku", "task_vector", "finetune"])
def test_max_forget_loss_is_refused_where_the_forget_nll_falls(method):
    raw = {"method": {"name": method}, "train": {"max_forget_loss": 3.0}}
    with pytest.raises(ConfigError, match=rf"train\.max_forget_loss: method {method} lowers the forget NLL"):
        load_config(raw=raw)
    load_config(raw={"method": {"name": method}})  # without the key the config is fine


@pytest.mark.parametrize("method", ["ga", "gradient_difference", "llm_unlearn"])
def test_max_forget_loss_is_kept_for_the_ascent_methods(method):
    assert load_config(raw={"method": {"name": method}, "train": {"max_forget_loss": 3.0}}).train.max_forget_loss == 3.0
