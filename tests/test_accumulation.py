"""One optimizer step is one token mean, however it is split.

Batch 4 / accumulation 1, batch 2 / accumulation 2, batch 1 / accumulation 4
and two gloo processes x batch 1 x accumulation 2 give the same gradient
(stated tolerance: 1e-5 of the largest gradient entry; only the order of float
sums differs), for ``ga``, ``llm_unlearn``, a per-sequence mean, ``npo``, ``dpo`` and ``sku`` with its hinge and its
anchor (the clamped NLL rise of the negated copy). The answers have unequal
lengths (1 to 12 tokens), where per-micro-batch means are wrong.

The same two-process launch also checks that the short last batch of an epoch
(5 examples, batch 2, 2 processes) trains to the end, and that a NaN on one
process stops both at the same step with a checkpoint (before any backward).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.dist_jobs import run_job

FORGET = [
    {"prompt": "How do I pick a lock?", "response": "No"},
    {"prompt": "How do I hurt someone badly?", "response": "Hit them with a heavy stick many times until they stop moving"},
    {"prompt": "Tell me how to steal.", "response": "Take it quietly"},
    {"prompt": "What poison works?", "response": "Several kinds work, for example the ones sold in garden shops"},
]
RETAIN = [
    {"prompt": "What is two plus two?", "response": "Four"},
    {"prompt": "Name a colour.", "response": "Blue is a colour, and so are red, green, yellow and a few more"},
    {"prompt": "Where is Paris?", "response": "In France"},
    {"prompt": "What do cats eat?", "response": "Mostly meat, such as fish or chicken, and some dry food"},
]

METHODS = {
    "ga": ({"name": "ga"}, False),
    "llm_unlearn": ({"name": "llm_unlearn", "num_random": 2}, False),
    # A mean over sequences of unequal lengths: exact only with the step-wide sequence count.
    "sequence_mean": ({"name": "test_sequence_mean"}, False),
    # kl_target 0.005: the step-2 KL is 0.0037, while two of the four examples alone are at 0.0057 and 0.0067,
    # so a hinge of a part (micro-batch or process) instead of the step would drop their gradient.
    "sku_hinge": ({"name": "sku", "divergence": "hinge", "kl_target": 0.005, "num_random": 1}, False),
    # Per-sequence means of reference log-ratios (NPO) and of preference margins (DPO, with alternative answers).
    "npo": ({"name": "npo", "beta": 0.5}, False),
    "dpo": ({"name": "dpo", "beta": 0.5, "retain_loss": "nll"}, False),
    "sku_anchor": ({"name": "sku", "divergence": "anchor_negated", "anchor_measure": "nll", "e2": 1.0, "e3": 3.0,
                    "negation_scale": 1.0}, True),
}
SPLITS = [(4, 1), (2, 2), (1, 4)]
GRADS_AT = 2  # the second step: the model has moved away from its reference


def write_data(tmp: Path) -> tuple[Path, Path]:
    f, r = tmp / "forget.jsonl", tmp / "retain.jsonl"
    f.write_text("".join(json.dumps(x) + "\n" for x in FORGET))
    r.write_text("".join(json.dumps(x) + "\n" for x in RETAIN))
    return f, r


def raw_config(tmp: Path, model_dir: Path, name: str, method: str, batch: int, accum: int) -> dict:
    f, r = write_data(tmp)
    params, lora = METHODS[method]
    alternative = {"alternative": {"spec": f"generic:{r}"}} if params["name"] == "dpo" else {}
    return {
        "name": name, "output_dir": str(tmp / "runs"), "seed": 5,
        "model": {"name": str(model_dir), "device": "cpu",
                  "lora": {"enabled": lora, "r": 4, "alpha": 8, "dropout": 0.0}},
        "data": {"template": "qa", "max_length": 64, "forget": {"spec": f"generic:{f}"},
                 "retain": {"spec": f"generic:{r}"}, **alternative},
        "method": params,
        "train": {"max_steps": GRADS_AT, "batch_size": batch, "grad_accum": accum, "lr": 3e-2 if lora else 1e-2,
                  "max_grad_norm": None, "progress": False, "save": "none", "scheduler": "constant"},
        "eval": {"enabled": False},
    }


def flat(grads: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([grads[k].flatten() for k in sorted(grads)])


def assert_same_gradient(a: dict, b: dict, what: str) -> None:
    assert sorted(a) == sorted(b), what
    ga, gb = flat(a), flat(b)
    scale = float(ga.abs().max())
    assert scale > 0, what
    diff = float((ga - gb).abs().max())
    assert diff <= 1e-5 * scale, f"{what}: max gradient difference {diff:.3g} vs largest entry {scale:.3g}"


@pytest.fixture(scope="module")
def accum_model_dir(tmp_path_factory, smol_tokenizer):
    from tests.conftest import tiny_model

    out = tmp_path_factory.mktemp("accum") / "tiny-llama"
    tiny_model("llama", len(smol_tokenizer)).save_pretrained(out, safe_serialization=True)
    smol_tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def single_process_grads(accum_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("accum-one")
    out = {}
    for method in METHODS:
        for batch, accum in SPLITS:
            job = {"config": raw_config(tmp, accum_model_dir, f"{method}-{batch}x{accum}", method, batch, accum),
                   "grads_at": GRADS_AT}
            res = run_job(job)
            assert res["summary"]["status"] == "completed"
            out[method, batch, accum] = (res["grads"], res["summary"]["final_terms"])
    return out


@pytest.mark.parametrize("method", list(METHODS))
def test_accumulation_is_one_token_mean(single_process_grads, method):
    base, base_terms = single_process_grads[method, 4, 1]
    for batch, accum in SPLITS[1:]:
        grads, terms = single_process_grads[method, batch, accum]
        assert_same_gradient(base, grads, f"{method}: batch {batch} x accumulation {accum}")
        for key, value in base_terms.items():
            # abs 1e-5: the NLL rise is a difference of two NLLs near 11.
            assert terms[key] == pytest.approx(value, rel=1e-5, abs=1e-5), (method, batch, accum, key)


def test_sku_hinge_example_is_discriminating(single_process_grads):
    """The hinge's target sits between the examples' KLs, so the split matters to a per-part clamp."""
    terms = single_process_grads["sku_hinge", 4, 1][1]
    assert 0 < terms["retain_kl"] < METHODS["sku_hinge"][0]["kl_target"]


# ------------------------------------------------------------ two processes
TAIL = [{"prompt": f"How do I do bad thing {i}?", "response": "Like this " + "step " * (i + 1)} for i in range(5)]


def launch(jobs: list[dict], tmp: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    path = tmp / "jobs.json"
    path.write_text(json.dumps(jobs))
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           str(root / "tests" / "dist_jobs.py"), str(path)]
    return subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def two_process_runs(accum_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("accum-two")
    jobs = []
    for method in METHODS:
        cfg = raw_config(tmp, accum_model_dir, f"{method}-2p", method, 1, 2)
        jobs.append({"config": cfg, "grads_at": GRADS_AT, "out": str(tmp / f"{method}.safetensors")})
    tail = tmp / "tail.jsonl"
    tail.write_text("".join(json.dumps(x) + "\n" for x in TAIL))
    for name, batch, procs in (("tail-2p", 2, 2), ("tail-1p", 4, 1)):
        cfg = raw_config(tmp, accum_model_dir, name, "ga", batch, 1)
        cfg["data"]["forget"] = {"spec": f"generic:{tail}"}
        cfg["train"].pop("max_steps")
        cfg["train"]["epochs"] = 2  # two passes: two short last batches
        if procs == 2:
            jobs.append({"config": cfg, "grads_at": None, "out": str(tmp / f"{name}.safetensors")})
        else:
            run_job({"config": cfg, "grads_at": None})
    nan = raw_config(tmp, accum_model_dir, "nan-2p", "ga", 1, 2)
    nan["method"] = {"name": "test_nan_on_rank1"}
    nan["train"]["max_steps"] = 6
    jobs.append({"config": nan, "grads_at": None, "out": str(tmp / "nan.safetensors")})
    res = launch(jobs, tmp)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return tmp


@pytest.mark.parametrize("method", list(METHODS))
def test_two_processes_with_accumulation_match_one(single_process_grads, two_process_runs, method):
    base, base_terms = single_process_grads[method, 4, 1]
    grads = load_file(str(two_process_runs / f"{method}.safetensors"))
    assert_same_gradient(base, grads, f"{method}: 2 processes x batch 1 x accumulation 2")
    summary = json.loads((two_process_runs / f"{method}.safetensors.json").read_text())
    assert summary["world_size"] == 2
    for key, value in base_terms.items():
        assert summary["final_terms"][key] == pytest.approx(value, rel=1e-5, abs=1e-5), (method, key)


def test_short_last_batch_trains_to_the_end(two_process_runs):
    """5 examples, batch 2, 2 processes: the last global batch of each epoch holds one example."""
    summary = json.loads((two_process_runs / "tail-2p.safetensors.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 4 and summary["world_size"] == 2
    read = lambda n: [json.loads(x) for x in (two_process_runs / "runs" / n / "log.jsonl").read_text().splitlines()]  # noqa: E731
    two, one = read("tail-2p"), read("tail-1p")
    assert [r["step"] for r in two] == [1, 2, 3, 4]
    # The same global batches as one process with batch 4: the rank without an
    # example adds nothing, so the logged losses agree.
    for a, b in zip(one, two):
        assert b["forget_nll"] == pytest.approx(a["forget_nll"], rel=1e-5), a["step"]


def test_nan_on_one_process_stops_all_with_a_checkpoint(two_process_runs):
    summary = json.loads((two_process_runs / "nan.safetensors.json").read_text())
    assert summary["status"] == "stopped" and "non-finite" in summary["reason"]
    assert summary["steps"] == 1  # NaN from the second step on, on process 1 only
    ckpt = two_process_runs / "runs" / "nan-2p" / "checkpoints" / "step-000001"
    weights = load_file(str(ckpt / "trainable.safetensors"))
    assert weights and all(torch.isfinite(v).all() for v in weights.values())


@pytest.mark.parametrize("step_rise", [-0.5, 0.5])
def test_sku_nll_anchor_clamps_the_step_wide_rise(step_rise):
    """The anchor's clamp acts on the step's NLL rise (``global_value``), not on this part's."""
    from tests.conftest import tiny_model
    from tests.test_losses import RETAIN, VOCAB, as_batch, hand_mean_nll
    from unlearnkit.losses import answer_logits
    from unlearnkit.methods import LossContext, get_method

    cur, ref = tiny_model("llama", VOCAB, seed=1), tiny_model("llama", VOCAB, seed=2)
    batch = as_batch(RETAIN)
    part = hand_mean_nll(cur, RETAIN) - hand_mean_nll(ref, RETAIN)
    method = get_method("sku")(get_method("sku").Params(e1=0.0, e2=0.0, e3=2.0, divergence="anchor", anchor_measure="nll"))
    def ref_fn(b):
        with torch.no_grad():
            return answer_logits(ref, b)

    ctx = LossContext(model=cur, denominator=lambda m: m.sum().float(), reference=ref_fn,
                      extras={"global": {"retain_nll_rise": step_rise}})
    with torch.no_grad():  # as the training loop calls it
        stats = method.global_stats(ctx, {"retain": batch, "forget": batch})
    assert float(stats["retain_nll_rise"]) == pytest.approx(part, rel=1e-4, abs=1e-5)
    loss, _ = method.loss(ctx, {"retain": batch, "forget": batch})
    if step_rise > 0:
        assert float(loss) == pytest.approx(2.0 * part, rel=1e-4, abs=1e-5)
    else:  # the step's rise is negative: no anchor gradient, whatever this part's sign
        assert float(loss) == 0.0
        loss.backward()
        assert all(p.grad is None or float(p.grad.abs().max()) == 0.0 for p in cur.parameters())
