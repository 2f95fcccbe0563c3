"""RMU against a hand computation: steered hidden states, retain activations, parameter selection."""

from __future__ import annotations

import math

import pytest
import torch

from tests.conftest import tiny_model
from tests.test_losses import FORGET, RETAIN, VOCAB, as_batch
from unlearnkit.errors import ConfigError
from unlearnkit.methods import LossContext, get_method
from unlearnkit.methods.base import hidden_states


def rmu(**params):
    cls = get_method("rmu")
    return cls(cls.Params(**params))


def ctx_for(model, reference):
    return LossContext(model=model, denominator=lambda mask: mask.sum().float(),
                       reference_hidden_fn=lambda b, layer: hidden_states(reference, b, layer).detach())


def hand_unit_vector(size, seed):
    g = torch.Generator().manual_seed(seed)
    v = torch.rand(size, generator=g, dtype=torch.float64).tolist()
    norm = math.sqrt(sum(x * x for x in v))
    return [x / norm for x in v]


def hand_layer_output(model, prompt, response, layer):
    """Rows of decoder layer ``layer``'s output at the answer tokens, one unpadded sequence."""
    with torch.no_grad():
        states = model(input_ids=torch.tensor([prompt + response]), output_hidden_states=True).hidden_states
    h = states[layer + 1][0].double()
    return [h[len(prompt) + k].tolist() for k in range(len(response))]


@pytest.mark.parametrize("arch", ["llama", "opt", "gpt2"])
def test_rmu_loss_is_the_steering_mse_plus_alpha_times_the_retain_mse(arch):
    cur, ref = tiny_model(arch, VOCAB, seed=1), tiny_model(arch, VOCAB, seed=2)
    layer, c, alpha, seed = 0, 3.0, 7.0, 11
    m = rmu(layer=layer, trained_layers=1, steering_coeff=c, alpha=alpha, seed=seed)
    loss, terms = m.loss(ctx_for(cur, ref), {"forget": as_batch(FORGET), "retain": as_batch(RETAIN)})
    hidden = cur.config.hidden_size if hasattr(cur.config, "hidden_size") else cur.config.n_embd
    target = [c * x for x in hand_unit_vector(hidden, seed)]
    sq = [sum((a - t) ** 2 for a, t in zip(row, target)) / hidden
          for p, r in FORGET for row in hand_layer_output(cur, p, r, layer)]
    forget = sum(sq) / len(sq)
    sq = []
    for p, r in RETAIN:
        for a_row, b_row in zip(hand_layer_output(cur, p, r, layer), hand_layer_output(ref, p, r, layer)):
            sq.append(sum((a - b) ** 2 for a, b in zip(a_row, b_row)) / hidden)
    retain = sum(sq) / len(sq)
    assert retain > 1e-6
    assert terms["forget_mse"] == pytest.approx(forget, rel=1e-4)
    assert terms["retain_mse"] == pytest.approx(retain, rel=1e-4)
    assert float(loss.detach()) == pytest.approx(forget + alpha * retain, rel=1e-4)


def test_the_direction_has_norm_c_and_is_fixed_by_the_seed():
    a, b = rmu(seed=3, steering_coeff=5.0), rmu(seed=3, steering_coeff=5.0)
    va, vb = a.vector(16, "cpu"), b.vector(16, "cpu")
    assert float(va.norm()) == pytest.approx(5.0, rel=1e-6)
    assert torch.equal(va, vb)
    assert not torch.equal(va, rmu(seed=4, steering_coeff=5.0).vector(16, "cpu"))


def test_an_unset_seed_is_drawn_once_and_kept_in_the_method_state():
    model = tiny_model("llama", VOCAB)
    m = rmu(layer=1, trained_layers=1)
    m.setup(model)
    state = m.state_dict()
    assert isinstance(state["seed"], int)
    resumed = rmu(layer=1, trained_layers=1)
    resumed.load_state_dict(state)
    assert torch.equal(resumed.vector(32, "cpu"), m.vector(32, "cpu"))


def test_setup_trains_only_the_mlps_of_the_chosen_layers():
    model = tiny_model("llama", VOCAB)  # 2 decoder layers
    rmu(layer=1, trained_layers=1).setup(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"model.layers.1.mlp.{k}.weight" for k in ("gate_proj", "up_proj", "down_proj")}
    model = tiny_model("llama", VOCAB)
    rmu(layer=1, trained_layers=2, mlp_modules=["down_proj"]).setup(model)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        "model.layers.0.mlp.down_proj.weight", "model.layers.1.mlp.down_proj.weight"}


def test_setup_under_lora_keeps_only_the_adapters_inside_those_mlps():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_model("llama", VOCAB), LoraConfig(r=2, target_modules="all-linear"))
    rmu(layer=0, trained_layers=1).setup(model)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".layers.0.mlp." in n and "lora_" in n for n in trainable)


def test_setup_refuses_a_missing_layer_or_no_trainable_parameter():
    with pytest.raises(ConfigError, match="layer"):
        rmu(layer=5).setup(tiny_model("llama", VOCAB))
    from peft import LoraConfig, get_peft_model

    attention_only = get_peft_model(tiny_model("llama", VOCAB), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    with pytest.raises(ConfigError, match="target_modules"):
        rmu(layer=1).setup(attention_only)


def test_the_forget_term_moves_the_steered_layer_towards_the_direction():
    cur, ref = tiny_model("llama", VOCAB, seed=1), tiny_model("llama", VOCAB, seed=1)
    m = rmu(layer=1, trained_layers=2, steering_coeff=4.0, alpha=0.0, seed=0)
    m.setup(cur)
    opt = torch.optim.SGD([p for p in cur.parameters() if p.requires_grad], lr=0.05)
    batches = {"forget": as_batch(FORGET), "retain": as_batch(RETAIN)}
    first = None
    for _ in range(5):
        loss, terms = m.loss(ctx_for(cur, ref), batches)
        first = terms["forget_mse"] if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert terms["forget_mse"] < first
