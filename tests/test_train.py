"""The training loop: the reference never moves, stops fire, resume is exact."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from unlearnkit.config import load_config
from unlearnkit.data.tokenize import collate, tokenize_examples
from unlearnkit.data.types import Example
from unlearnkit.methods import METHODS, Method, register
from unlearnkit.train import Trainer, run_unlearning

FORGET = [
    {"prompt": f"How do I do harmful thing number {i}?", "response": f"Here is how to do harmful thing {i}: step one, step two."}
    for i in range(12)
]
RETAIN = [
    {"prompt": f"What is {i} plus {i}?", "response": f"{i} plus {i} is {2 * i}, a number."} for i in range(12)
]


@pytest.fixture
def data_files(tmp_path):
    f = tmp_path / "forget.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in FORGET))
    r = tmp_path / "retain.jsonl"
    r.write_text("".join(json.dumps(x) + "\n" for x in RETAIN))
    return f, r


def make_cfg(tmp_path, model_dir, data_files, **over):
    f, r = data_files
    raw = {
        "name": over.pop("name", "t"),
        "output_dir": str(tmp_path / "runs"),
        "seed": 7,
        "model": {"name": str(model_dir), "lora": {"enabled": over.pop("lora", True), "r": 4, "alpha": 8, "dropout": 0.0}},
        "data": {"template": "qa", "max_length": 64,
                 "forget": {"spec": f"generic:{f}"}, "retain": {"spec": f"generic:{r}"}},
        "method": {"name": over.pop("method", "llm_unlearn"), **over.pop("method_params", {})},
        "train": {"max_steps": 5, "batch_size": 2, "lr": 5e-2, "progress": False, "save": "none",
                  **over.pop("train", {})},
        "eval": {"enabled": False},
    }
    assert not over, over
    return load_config(raw=raw)


def probe_batch(tokenizer):
    exs = [Example(r["prompt"], r["response"]) for r in RETAIN[:3]]
    return collate(tokenize_examples(exs, tokenizer, "qa", 64), tokenizer.pad_token_id)


def test_lora_reference_is_identical_after_training(tmp_path, tiny_model_dir, data_files):
    cfg = make_cfg(tmp_path, tiny_model_dir, data_files)
    trainer = Trainer(cfg)
    captured = {}
    original_loop = trainer._loop

    def loop(start, before):
        model = trainer.acc.unwrap_model(trainer.model)
        batch = probe_batch(trainer.tokenizer)
        captured["ref_before"] = trainer.reference(model, batch).logits.clone()
        with torch.no_grad():
            captured["cur_before"] = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.clone()
        out = original_loop(start, before)
        captured["ref_after"] = trainer.reference(model, batch).logits.clone()
        with torch.no_grad():
            model.eval()
            captured["cur_after"] = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.clone()
        return out

    trainer._loop = loop
    summary = trainer.run()
    assert summary["steps"] == 5
    assert trainer.reference.frozen is None  # no second copy under LoRA
    assert torch.equal(captured["ref_before"], captured["ref_after"])
    # ...while the trained model did move.
    assert (captured["cur_before"] - captured["cur_after"]).abs().max() > 1e-3


def test_full_mode_frozen_copy_never_changes(tmp_path, tiny_model_dir, data_files):
    cfg = make_cfg(tmp_path, tiny_model_dir, data_files, lora=False, train={"lr": 1e-2})
    trainer = Trainer(cfg)
    snap = {}
    original_loop = trainer._loop

    def loop(start, before):
        snap["frozen"] = {k: v.clone() for k, v in trainer.reference.frozen.state_dict().items()}
        snap["live"] = {k: v.clone() for k, v in trainer.acc.unwrap_model(trainer.model).state_dict().items()}
        return original_loop(start, before)

    trainer._loop = loop
    trainer.run()
    frozen_after = trainer.reference.frozen.state_dict()
    assert all(torch.equal(snap["frozen"][k], frozen_after[k]) for k in snap["frozen"])
    live_after = trainer.acc.unwrap_model(trainer.model).state_dict()
    assert any(not torch.equal(snap["live"][k], live_after[k]) for k in snap["live"])


def read_log(run_dir):
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def test_step_limit_is_exact_and_log_complete(tmp_path, tiny_model_dir, data_files):
    cfg = make_cfg(tmp_path, tiny_model_dir, data_files, train={"max_steps": 7})
    summary = run_unlearning(cfg)
    rows = read_log(cfg.run_dir)
    assert [r["step"] for r in rows] == list(range(1, 8))
    assert summary["steps"] == 7 and summary["status"] == "completed"
    for key in ("forget_nll", "random_nll", "retain_kl", "loss", "lr"):
        assert all(key in r for r in rows)
    assert (cfg.run_dir / "loss_curves.png").stat().st_size > 1000
    assert (cfg.run_dir / "config.yaml").exists() and (cfg.run_dir / "manifest.json").exists()
    manifest = json.loads((cfg.run_dir / "manifest.json").read_text())
    assert manifest["data"]["forget"]["count"] == 12 and len(manifest["data"]["forget"]["sha256"]) == 64


def test_early_stop_fires_at_the_threshold(tmp_path, tiny_model_dir, data_files):
    # First find the forget NLL at step 1, then set the threshold a little above it.
    probe = make_cfg(tmp_path, tiny_model_dir, data_files, name="probe", method="ga", train={"max_steps": 1, "lr": 0.2})
    first = run_unlearning(probe)["final_terms"]["forget_nll"]
    threshold = first + 0.05
    cfg = make_cfg(tmp_path, tiny_model_dir, data_files, name="stop", method="ga",
                   train={"max_steps": 40, "lr": 0.2, "max_forget_loss": threshold})
    summary = run_unlearning(cfg)
    rows = read_log(cfg.run_dir)
    assert summary["status"] == "stopped" and "max_forget_loss" in summary["reason"]
    assert rows[-1]["forget_nll"] >= threshold
    assert all(r["forget_nll"] < threshold for r in rows[:-1])
    assert summary["steps"] == len(rows) < 40


@register
class NaNAtStep3(Method):
    """Gradient ascent whose loss turns NaN at the third step."""

    name = "test_nan_at_step3"

    def loss(self, ctx, batches):
        al = ctx.logits(batches["forget"])
        from unlearnkit.losses import mean_nll

        nll = mean_nll(al)
        if ctx.step == 2:
            nll = nll * float("nan")
        return -nll, {"forget_nll": nll.item()}


def test_nan_stops_with_a_checkpoint(tmp_path, tiny_model_dir, data_files):
    cfg = make_cfg(tmp_path, tiny_model_dir, data_files, method="test_nan_at_step3", train={"max_steps": 10})
    summary = run_unlearning(cfg)
    assert summary["status"] == "stopped" and "non-finite" in summary["reason"]
    assert summary["steps"] == 2
    ckpt = cfg.run_dir / "checkpoints" / "step-000002"
    weights = load_file(str(ckpt / "trainable.safetensors"))
    assert weights and all(torch.isfinite(v).all() for v in weights.values())
    assert json.loads((cfg.run_dir / "summary.json").read_text())["status"] == "stopped"


@pytest.mark.parametrize("lora", [True, False])
def test_resume_equals_a_straight_run(tmp_path, tiny_model_dir, data_files, lora):
    straight = make_cfg(tmp_path, tiny_model_dir, data_files, name="straight", lora=lora, train={"max_steps": 10, "lr": 1e-2})
    run_unlearning(straight)
    split = make_cfg(tmp_path, tiny_model_dir, data_files, name="split", lora=lora, train={"max_steps": 10, "lr": 1e-2})
    paused = run_unlearning(split, stop_at=5)
    assert paused["status"] == "paused" and paused["steps"] == 5
    run_unlearning(split, resume=True)
    a = load_file(str(straight.run_dir / "checkpoints" / "step-000010" / "trainable.safetensors"))
    b = load_file(str(split.run_dir / "checkpoints" / "step-000010" / "trainable.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)
    la, lb = read_log(straight.run_dir), read_log(split.run_dir)
    assert [r["step"] for r in lb] == list(range(1, 11))
    for ra, rb in zip(la, lb):
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-5, abs=1e-7)


def test_existing_run_is_not_overwritten(tmp_path, tiny_model_dir, data_files):
    from unlearnkit.errors import TrainingError

    cfg = make_cfg(tmp_path, tiny_model_dir, data_files, train={"max_steps": 1})
    run_unlearning(cfg)
    with pytest.raises(TrainingError, match="already holds a run"):
        run_unlearning(cfg)
    changed = make_cfg(tmp_path, tiny_model_dir, data_files, train={"max_steps": 1, "lr": 1e-3})
    with pytest.raises(TrainingError, match="train.lr"):
        run_unlearning(changed, resume=True)


def test_every_forget_example_is_seen(tmp_path, tiny_model_dir, data_files):
    cfg = make_cfg(tmp_path, tiny_model_dir, data_files, method="ga", train={"max_steps": 6, "lr": 1e-4})
    from unlearnkit.training.batches import StepBatches

    trainer = Trainer(cfg)
    seen = []
    original = StepBatches.step

    def spy(self, step, micro):
        out = original(self, step, micro)
        seen.extend(self.forget_stream._batches[self.forget_stream.position - 1])
        return out

    StepBatches.step = spy
    try:
        trainer.run()
    finally:
        StepBatches.step = original
    # 12 examples, batch 2, 6 steps: exactly one epoch, every example once.
    assert sorted(seen) == list(range(12))


def test_methods_are_registered():
    assert {"ga", "gradient_difference", "llm_unlearn"} <= set(METHODS)


@pytest.mark.parametrize("params", [
    {},
    # The anchor runs the adapter negated inside each step; the saved adapter and the
    # final model must still be the harmful copy and its negation.
    {"divergence": "anchor_negated", "anchor_measure": "nll", "e2": 0.0, "e3": 10.0},
])
def test_sku_negates_the_trained_lora_delta(tmp_path, tiny_model_dir, data_files, params):
    """After an SKU run the saved model is exactly theta_o - lambda * (theta_h - theta_o)."""
    from transformers import AutoModelForCausalLM

    cfg = make_cfg(tmp_path, tiny_model_dir, data_files, method="sku", method_params={"negation_scale": 0.5, **params},
                   train={"max_steps": 3, "save": "merged"})
    summary = run_unlearning(cfg)
    assert summary["status"] == "completed"
    original = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    from peft import PeftModel

    harmful = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                                        cfg.run_dir / "harmful_adapter").merge_and_unload().state_dict()
    final = AutoModelForCausalLM.from_pretrained(cfg.run_dir / "model").state_dict()
    changed = 0
    for k, o in original.items():
        expected = o - 0.5 * (harmful[k] - o)
        torch.testing.assert_close(final[k], expected, atol=1e-6, rtol=1e-5)
        changed += int(not torch.equal(final[k], o))
    assert changed > 0


def test_task_vector_full_mode_negates(tmp_path, tiny_model_dir, data_files):
    from transformers import AutoModelForCausalLM

    cfg = make_cfg(tmp_path, tiny_model_dir, data_files, method="task_vector", lora=False,
                   train={"max_steps": 2, "lr": 1e-2, "save": "merged"})
    run_unlearning(cfg)
    original = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    harmful = AutoModelForCausalLM.from_pretrained(cfg.run_dir / "harmful").state_dict()
    final = AutoModelForCausalLM.from_pretrained(cfg.run_dir / "model").state_dict()
    for k, o in original.items():
        torch.testing.assert_close(final[k], 2 * o - harmful[k], atol=1e-6, rtol=1e-5)
    assert any(not torch.equal(harmful[k], original[k]) for k in original)


def test_random_pool_holdout_is_measured_never_drawn(tmp_path, tiny_model_dir, data_files):
    from unlearnkit.methods import get_method
    from unlearnkit.models import load_tokenizer
    from unlearnkit.train import prepare_data

    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps({"prompt": f"Q{i}?", "response": f"answer number {i}"}) + "\n" for i in range(20)))
    cfg = make_cfg(tmp_path, tiny_model_dir, data_files)
    cfg.data.random = type(cfg.data.forget)(spec=f"generic:{pool}", holdout=5, seed=1)
    data = prepare_data(cfg, load_tokenizer(str(tiny_model_dir)), get_method("llm_unlearn"))
    held = data.heldout["random_generic_heldout"]
    assert len(held) == 5 and len(data.random_pool) == 15
    assert not {e.response for e in held} & set(data.random_pool)


@pytest.mark.parametrize("scale", [0.0, 1.0])
def test_full_mode_negation_with_a_bf16_reference_computes_from_float32(tmp_path, tiny_model_dir, data_files, scale):
    """reference_dtype bfloat16 (as in configs/opt-2.7b-pku-sku.yaml) must not round stage 2 to bf16."""
    from transformers import AutoModelForCausalLM

    cfg = make_cfg(tmp_path, tiny_model_dir, data_files, method="task_vector", lora=False,
                   method_params={"negation_scale": scale},
                   train={"max_steps": 2, "lr": 1e-4, "save": "merged", "reference_dtype": "bfloat16"})
    run_unlearning(cfg)
    original = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    harmful = AutoModelForCausalLM.from_pretrained(cfg.run_dir / "harmful").state_dict()
    final = AutoModelForCausalLM.from_pretrained(cfg.run_dir / "model").state_dict()
    assert all(v.dtype == torch.float32 for v in final.values())
    for k, o in original.items():
        if scale == 0.0:
            assert torch.equal(final[k], o), k  # the original, bit for bit
            continue
        exact = o.double() - scale * (harmful[k].double() - o.double())
        err = float((final[k].double() - exact).abs().max())
        # float32 rounding of the result only (one ulp), never bf16's: for a norm weight
        # of 1.0 bf16 spacing is 7.8e-3, far above these small task vectors.
        assert err <= 2 * float(torch.finfo(torch.float32).eps) * float(exact.abs().max()) + 1e-12, k
        tau = float((harmful[k] - o).abs().max())
        if "norm" in k and tau > 0:
            assert err < 1e-3 * tau, k


@pytest.mark.parametrize("forget_eos", ["ascend", "exclude"])
def test_forget_eos_is_ascended_or_excluded(tmp_path, tiny_model_dir, data_files, forget_eos):
    """ga's first forget NLL (before any update) against a hand computation, with and without the EOS target."""
    from transformers import AutoModelForCausalLM

    from unlearnkit.models import load_tokenizer

    f, r = data_files
    two = tmp_path / "two.jsonl"
    two.write_text("".join(json.dumps(x) + "\n" for x in FORGET[:2]))
    cfg = make_cfg(tmp_path, tiny_model_dir, (two, r), method="ga", lora=False,
                   method_params={"forget_eos": forget_eos}, train={"max_steps": 1, "lr": 1e-6})
    got = run_unlearning(cfg)["final_terms"]["forget_nll"]
    tok = load_tokenizer(str(tiny_model_dir))
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    nll, count = 0.0, 0
    for ex in tokenize_examples([Example(x["prompt"], x["response"]) for x in FORGET[:2]], tok, "qa", 64):
        assert ex.input_ids[-1] == tok.eos_token_id  # the EOS is always in the input
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([ex.input_ids])).logits[0].double(), -1)
        targets = [t for t, lab in enumerate(ex.labels) if lab != -100]
        if forget_eos == "exclude":
            targets = targets[:-1]
        nll -= sum(float(logp[t - 1, ex.input_ids[t]]) for t in targets)
        count += len(targets)
    assert got == pytest.approx(nll / count, rel=1e-5)
