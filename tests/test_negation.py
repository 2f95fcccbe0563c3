"""Tests for unlearnkit.negation: checkpoint streaming, LoRA negation, errors.

All models are tiny and built from configs here; nothing is downloaded.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tests.conftest import tiny_model

from unlearnkit import negation
from unlearnkit.errors import UnlearnkitError
from unlearnkit.negation import NegationError, negate_checkpoints, negate_lora_, negate_state_dict

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

SHARD = "20KB"  # small enough that the tiny models below are split into many shards


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def llama_model(seed: int = 0):
    return tiny_model("llama", 128, seed, tie_word_embeddings=False, max_position_embeddings=2048)


def gpt2_model(seed: int = 0):
    # GPT-2 ties lm_head to wte (only one is stored) and uses Conv1D layers,
    # whose LoRA delta needs the fan_in_fan_out transpose.
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(vocab_size=128, n_positions=32, n_embd=32, n_layer=2, n_head=4)
    return transformers.GPT2LMHeadModel(cfg).eval()


MODELS = {"llama": llama_model, "gpt2": gpt2_model}


def perturbed(model, seed: int, std: float = 0.02):
    """A "tuned" copy: every float parameter plus seeded Gaussian noise."""
    tuned = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * std)
    return tuned


def save_tokenizer(folder: Path) -> None:
    """A real (word-level) fast tokenizer, so tokenizer files get copied and reload."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i + 3 for i in range(20)}}
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = Whitespace()
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    fast.save_pretrained(folder)


def load_checkpoint(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors stored in a folder's safetensors files, merged into one dict."""
    sd: dict[str, torch.Tensor] = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        sd.update(load_file(f))
    return sd


def shard_files(folder: Path) -> list[str]:
    return sorted(p.name for p in Path(folder).glob("*.safetensors"))


def leftovers(parent: Path, name: str) -> list[str]:
    """Temporary or backup siblings of an output folder that should not survive."""
    return sorted(p.name for p in parent.iterdir() if p.name.startswith((name + ".", "." + name + ".")))


@pytest.fixture(scope="module", params=sorted(MODELS))
def pair(request, tmp_path_factory):
    """(base_dir, tuned_dir, arch): multi-shard checkpoints of a model and a perturbed copy."""
    root = tmp_path_factory.mktemp(f"ckpt-{request.param}")
    base = MODELS[request.param]()
    tuned = perturbed(base, seed=1)
    base.save_pretrained(root / "base", max_shard_size=SHARD)
    tuned.save_pretrained(root / "tuned", max_shard_size=SHARD)
    save_tokenizer(root / "base")
    # The premise of the streaming tests: a real multi-shard layout.
    assert (root / "base" / "model.safetensors.index.json").is_file()
    assert len(shard_files(root / "base")) > 2
    return root / "base", root / "tuned", request.param


@pytest.fixture(scope="module")
def llama_pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt-llama-errors")
    base = llama_model()
    base.save_pretrained(root / "base", max_shard_size=SHARD)
    perturbed(base, seed=2).save_pretrained(root / "tuned", max_shard_size=SHARD)
    return root / "base", root / "tuned"


# ---------------------------------------------------------------------------
# The arithmetic
# ---------------------------------------------------------------------------


def test_scale_zero_returns_base_exactly(pair, tmp_path):
    base, tuned, _ = pair
    out = negate_checkpoints(base, tuned, tmp_path / "out", scale=0.0, progress=False)
    got, want = load_checkpoint(out), load_checkpoint(base)
    assert set(got) == set(want)
    for name in want:
        assert got[name].dtype == want[name].dtype, name
        assert torch.equal(got[name], want[name]), name


def test_scale_one_is_two_base_minus_tuned(pair, tmp_path):
    base, tuned, _ = pair
    out = negate_checkpoints(base, tuned, tmp_path / "out", scale=1.0, progress=False)
    got, b_sd, t_sd = load_checkpoint(out), load_checkpoint(base), load_checkpoint(tuned)
    assert set(got) == set(b_sd)
    for name, b in b_sd.items():
        expected = 2 * b.float() - t_sd[name].float()
        torch.testing.assert_close(got[name].float(), expected, atol=1e-6, rtol=0, msg=name)
        # The result must actually move away from base (tuned differs from base).
        assert not torch.equal(got[name], b), name


def test_output_mirrors_base_shard_layout(pair, tmp_path):
    base, tuned, _ = pair
    out = negate_checkpoints(base, tuned, tmp_path / "out", scale=1.0, progress=False)
    assert shard_files(out) == shard_files(base)
    base_index = json.loads((base / "model.safetensors.index.json").read_text())
    out_index = json.loads((out / "model.safetensors.index.json").read_text())
    assert out_index["weight_map"] == base_index["weight_map"]
    total = sum(t.numel() * t.element_size() for t in load_checkpoint(out).values())
    assert out_index["metadata"]["total_size"] == total


@pytest.mark.parametrize("scale", [0.5, 2.0, -1.0])
def test_checkpoints_agree_with_state_dict_helper(pair, tmp_path, scale):
    base, tuned, _ = pair
    out = negate_checkpoints(base, tuned, tmp_path / "out", scale=scale, progress=False)
    want = negate_state_dict(load_checkpoint(base), load_checkpoint(tuned), scale)
    got = load_checkpoint(out)
    assert set(got) == set(want)
    for name in want:
        assert torch.equal(got[name], want[name]), name


def test_output_loads_runs_forward_and_keeps_side_files(pair, tmp_path):
    base, tuned, arch = pair
    out = negate_checkpoints(base, tuned, tmp_path / "out", scale=1.0, progress=False)

    for fname in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (out / fname).read_bytes() == (base / fname).read_bytes(), fname

    model = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    tok = transformers.AutoTokenizer.from_pretrained(out)
    ids = tok("w1 w2 w3", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], 128)
    assert torch.isfinite(logits).all()

    # from_pretrained really loaded the negated weights (not a fresh init).
    stored = load_checkpoint(out)
    params = model.state_dict()
    for name, tensor in stored.items():
        assert torch.equal(params[name], tensor), name
    if arch == "gpt2":
        # Tied weights stored once: lm_head comes back tied to the negated wte.
        assert "lm_head.weight" not in stored
        assert torch.equal(model.lm_head.weight, stored["transformer.wte.weight"])

    report = json.loads((out / "negation.json").read_text())
    assert report["scale"] == 1.0
    assert report["tensors"] == len(stored)
    assert Path(report["base"]) == base.resolve()
    assert Path(report["tuned"]) == tuned.resolve()


def test_inputs_with_different_layouts(llama_pair, tmp_path, monkeypatch):
    """A sharded base and a single-file tuned checkpoint still pair up by name."""
    base, tuned = llama_pair
    single = tmp_path / "tuned-single"
    transformers.AutoModelForCausalLM.from_pretrained(tuned).save_pretrained(single)
    assert shard_files(single) == ["model.safetensors"]
    want = negate_state_dict(load_checkpoint(base), load_checkpoint(tuned), 1.0)
    # Force the reader to close and reopen the mapped file after every tensor.
    monkeypatch.setattr(negation, "_REMAP_BYTES", 1)
    got = load_checkpoint(negate_checkpoints(base, single, tmp_path / "out", progress=False))
    assert set(got) == set(want)
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_shard_size_bytes_regroups(llama_pair, tmp_path):
    base, tuned = llama_pair
    ref = load_checkpoint(negate_checkpoints(base, tuned, tmp_path / "ref", progress=False))

    single = negate_checkpoints(base, tuned, tmp_path / "single", progress=False, shard_size_bytes=1 << 30)
    assert shard_files(single) == ["model.safetensors"]
    assert not (single / "model.safetensors.index.json").exists()

    many = negate_checkpoints(base, tuned, tmp_path / "many", progress=False, shard_size_bytes=10_000)
    files = shard_files(many)
    assert len(files) > len(shard_files(base))
    index = json.loads((many / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == files

    for out in (single, many):
        got = load_checkpoint(out)
        assert set(got) == set(ref)
        assert all(torch.equal(got[k], ref[k]) for k in ref)


def test_single_file_checkpoints_and_non_float_buffers(tmp_path):
    base = {"w": torch.randn(4, 3), "h": torch.randn(5, dtype=torch.float64), "ids": torch.arange(6)}
    tuned = {"w": torch.randn(4, 3), "h": torch.randn(5, dtype=torch.float64), "ids": torch.arange(6) * 7}
    for name, sd in (("base", base), ("tuned", tuned)):
        (tmp_path / name).mkdir()
        save_file(sd, str(tmp_path / name / "model.safetensors"), metadata={"format": "pt"})
    out = negate_checkpoints(tmp_path / "base", tmp_path / "tuned", tmp_path / "out", scale=1.0, progress=False)
    got = load_checkpoint(out)
    assert shard_files(out) == ["model.safetensors"]
    assert torch.equal(got["ids"], base["ids"])  # integer buffers come from base unchanged
    assert got["h"].dtype == torch.float64
    torch.testing.assert_close(got["h"], 2 * base["h"] - tuned["h"], atol=1e-12, rtol=0)
    torch.testing.assert_close(got["w"], 2 * base["w"] - tuned["w"], atol=1e-6, rtol=0)
    report = json.loads((out / "negation.json").read_text())
    assert (report["negated_tensors"], report["copied_non_float_tensors"]) == (2, 1)


def test_negate_state_dict_keeps_dtype_and_checks_inputs():
    base = {"a": torch.randn(8, dtype=torch.bfloat16), "n": torch.ones(2, dtype=torch.int64)}
    tuned = {"a": torch.randn(8, dtype=torch.bfloat16), "n": torch.zeros(2, dtype=torch.int64)}
    out = negate_state_dict(base, tuned, 1.0)
    assert out["a"].dtype == torch.bfloat16
    expected = (2 * base["a"].float() - tuned["a"].float()).to(torch.bfloat16)
    assert torch.equal(out["a"], expected)
    assert torch.equal(out["n"], base["n"]) and out["n"] is not base["n"]
    assert torch.equal(negate_state_dict(base, tuned, 0.0)["a"], base["a"])

    with pytest.raises(NegationError, match="'extra'"):
        negate_state_dict(base, {**tuned, "extra": torch.zeros(1)}, 1.0)
    with pytest.raises(NegationError, match=r"'a'.*\[8\].*\[4\]"):
        negate_state_dict(base, {**tuned, "a": torch.zeros(4)}, 1.0)
    with pytest.raises(NegationError, match="finite"):
        negate_state_dict(base, tuned, float("nan"))


# ---------------------------------------------------------------------------
# LoRA
# ---------------------------------------------------------------------------

# arch -> (target modules, fan_in_fan_out, number of wrapped layers in 2 blocks)
LORA_TARGETS = {"llama": (["q_proj", "v_proj"], False, 4), "gpt2": (["c_attn"], True, 2)}


@pytest.mark.parametrize("arch", sorted(LORA_TARGETS))
def test_lora_negation_matches_full_weight_path(arch, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model
    from peft.tuners.lora import LoraLayer

    base = MODELS[arch]()
    base.save_pretrained(tmp_path / "base", max_shard_size=SHARD)
    base_sd = {k: v.clone() for k, v in base.state_dict().items()}

    targets, fan_in_fan_out, n_expected = LORA_TARGETS[arch]
    cfg = LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.1, target_modules=targets, fan_in_fan_out=fan_in_fan_out
    )
    model = get_peft_model(copy.deepcopy(base), cfg)
    # lora_B starts at zero (delta = 0); give it seeded values so the delta is real.
    gen = torch.Generator().manual_seed(3)
    n_layers = 0
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, LoraLayer):
                w = module.lora_B["default"].weight
                w.copy_(torch.randn(w.shape, generator=gen) * 0.1)
                n_layers += 1
    assert n_layers == n_expected

    # "tuned" = what the adapter would produce when merged.
    copy.deepcopy(model).merge_and_unload().save_pretrained(tmp_path / "tuned", max_shard_size=SHARD)
    full = load_checkpoint(negate_checkpoints(tmp_path / "base", tmp_path / "tuned", tmp_path / "out", 1.0, progress=False))

    model.train()  # dropout active: must not matter, the delta does not involve it
    result = negate_lora_(model, 1.0)
    assert not isinstance(result, PeftModel)
    assert not any(isinstance(m, LoraLayer) for m in result.modules())
    sd = result.state_dict()
    assert not any("lora" in k for k in sd)

    changed = 0
    for name, tensor in full.items():
        torch.testing.assert_close(sd[name], tensor, atol=1e-5, rtol=0, msg=name)
        if not torch.allclose(sd[name], base_sd[name], atol=1e-4):
            changed += 1
    # Exactly the LoRA-targeted weights moved; everything else is still theta_o.
    assert changed == n_expected


def test_lora_scale_zero_is_identity_and_bad_inputs_are_refused():
    from peft import IA3Config, LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer

    base = llama_model()
    model = get_peft_model(copy.deepcopy(base), LoraConfig(r=2, target_modules=["q_proj"]))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoraLayer):
                m.lora_B["default"].weight.fill_(0.5)
    out = negate_lora_(model, 0.0)
    for name, tensor in base.state_dict().items():
        assert torch.equal(out.state_dict()[name], tensor), name

    with pytest.raises(NegationError, match="PeftModel"):
        negate_lora_(base, 1.0)
    ia3 = get_peft_model(copy.deepcopy(base), IA3Config(target_modules=["k_proj", "down_proj"], feedforward_modules=["down_proj"]))
    with pytest.raises(NegationError, match="IA3"):
        negate_lora_(ia3, 1.0)
    dora = get_peft_model(copy.deepcopy(base), LoraConfig(r=2, target_modules=["q_proj"], use_dora=True))
    with pytest.raises(NegationError, match="DoRA"):
        negate_lora_(dora, 1.0)


# ---------------------------------------------------------------------------
# Errors and safety
# ---------------------------------------------------------------------------


def test_errors_are_unlearnkit_errors():
    assert issubclass(NegationError, UnlearnkitError)


def test_missing_folder_and_pickle_only_checkpoint(llama_pair, tmp_path):
    base, _ = llama_pair
    with pytest.raises(NegationError, match="does not exist"):
        negate_checkpoints(tmp_path / "nope", base, tmp_path / "out", progress=False)
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    torch.save({"w": torch.zeros(2)}, pickled / "pytorch_model.bin")
    with pytest.raises(NegationError) as err:
        negate_checkpoints(base, pickled, tmp_path / "out", progress=False)
    msg = str(err.value)
    assert str(pickled) in msg and ".bin" in msg and "safe_serialization=True" in msg
    assert not (tmp_path / "out").exists()


def _rewrite_tensor(folder: Path, name: str, new: torch.Tensor | None) -> str:
    """Replace (or with None, drop) one tensor inside its shard; keep the index honest."""
    index_path = folder / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    fname = index["weight_map"][name]
    sd = load_file(folder / fname)
    if new is None:
        del sd[name]
        del index["weight_map"][name]
        index_path.write_text(json.dumps(index))
    else:
        sd[name] = new
    save_file(sd, str(folder / fname), metadata={"format": "pt"})
    return fname


def test_shape_mismatch_names_tensor_and_shapes(llama_pair, tmp_path):
    base, tuned = llama_pair
    bad = tmp_path / "tuned"
    shutil.copytree(tuned, bad)
    name = "model.layers.1.mlp.up_proj.weight"
    _rewrite_tensor(bad, name, torch.zeros(64, 16))
    with pytest.raises(NegationError) as err:
        negate_checkpoints(base, bad, tmp_path / "out", progress=False)
    msg = str(err.value)
    assert name in msg and "[64, 32]" in msg and "[64, 16]" in msg
    assert not (tmp_path / "out").exists()


def test_missing_tensor_in_later_shard_leaves_nothing(llama_pair, tmp_path):
    base, tuned = llama_pair
    bad = tmp_path / "tuned"
    shutil.copytree(tuned, bad)
    # A tensor from the last shard, so a naive streamer would have written the
    # first shards before discovering the problem.
    index = json.loads((bad / "model.safetensors.index.json").read_text())
    last_shard = sorted(set(index["weight_map"].values()))[-1]
    name = sorted(k for k, f in index["weight_map"].items() if f == last_shard)[0]
    _rewrite_tensor(bad, name, None)
    with pytest.raises(NegationError, match=f"'{name}'.*base.*not in the tuned"):
        negate_checkpoints(base, bad, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    assert leftovers(tmp_path, "out") == []


def test_index_that_lies_about_a_shard_is_refused(llama_pair, tmp_path):
    base, tuned = llama_pair
    bad = tmp_path / "tuned"
    shutil.copytree(tuned, bad)
    index_path = bad / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    name = "model.norm.weight"
    fname = index["weight_map"][name]
    sd = load_file(bad / fname)
    del sd[name]  # the shard loses the tensor but the index still lists it
    save_file(sd, str(bad / fname), metadata={"format": "pt"})
    with pytest.raises(NegationError, match=f"'{name}'.*{fname}"):
        negate_checkpoints(base, bad, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_failure_midway_leaves_no_output(llama_pair, tmp_path, monkeypatch):
    """A failure after some shards were written (e.g. disk full) leaves no out folder."""
    base, tuned = llama_pair
    real_save = negation._save_shard
    written: list[Path] = []

    def flaky_save(tensors, path, metadata):
        if written:
            raise OSError("No space left on device")
        real_save(tensors, path, metadata)
        written.append(path)
        assert path.is_file()

    monkeypatch.setattr(negation, "_save_shard", flaky_save)
    with pytest.raises(OSError, match="No space"):
        negate_checkpoints(base, tuned, tmp_path / "out", progress=False)
    assert len(written) == 1 and written[0].parent.name.startswith(".out.unlearnkit-tmp-")
    assert not (tmp_path / "out").exists()
    assert leftovers(tmp_path, "out") == []


def test_out_inside_or_equal_to_an_input_is_refused(llama_pair, tmp_path):
    base, tuned = llama_pair
    before = sorted(p.name for p in base.iterdir())
    for out in (base, base / "negated", tuned / "sub" / "dir"):
        with pytest.raises(NegationError, match="refusing to write inside an input") as err:
            negate_checkpoints(base, tuned, out, progress=False)
        assert str(out.resolve()) in str(err.value)
    # An output folder that contains an input would be deleted by overwrite.
    with pytest.raises(NegationError, match="inside the output folder"):
        negate_checkpoints(base, tuned, base.parent, progress=False, overwrite=True)
    assert sorted(p.name for p in base.iterdir()) == before


def test_non_empty_out_needs_overwrite(llama_pair, tmp_path):
    base, tuned = llama_pair
    out = tmp_path / "out"
    # A folder unlearnkit did not make is never replaced, even with overwrite.
    out.mkdir()
    (out / "stale.txt").write_text("old")
    for overwrite in (False, True):
        with pytest.raises(NegationError, match="not a negation output made by unlearnkit") as err:
            negate_checkpoints(base, tuned, out, progress=False, overwrite=overwrite)
        assert str(out) in str(err.value)
        assert (out / "stale.txt").read_text() == "old"
    (out / "stale.txt").unlink()
    # An earlier negation output is replaced only with overwrite.
    negate_checkpoints(base, tuned, out, progress=False)
    (out / "stale.txt").write_text("old")
    with pytest.raises(NegationError, match="overwrite=True") as err:
        negate_checkpoints(base, tuned, out, progress=False)
    assert str(out) in str(err.value)
    assert (out / "stale.txt").read_text() == "old"

    negate_checkpoints(base, tuned, out, progress=False, overwrite=True)
    assert not (out / "stale.txt").exists()
    assert (out / "negation.json").is_file()
    assert leftovers(tmp_path, "out") == []

    # An existing but empty folder is fine without overwrite.
    empty = tmp_path / "empty"
    empty.mkdir()
    negate_checkpoints(base, tuned, empty, progress=False)
    assert (empty / "model.safetensors.index.json").is_file()


# ---------------------------------------------------------------------------
# Streaming memory
# ---------------------------------------------------------------------------

# Runs in a fresh interpreter so the parent's allocations and caches do not
# count. Peak is the kernel's per-process RSS high-water mark (VmHWM); it is
# reset just before negating (clear_refs "5"), so VmHWM - VmRSS(before) is the
# extra memory negation needed. ru_maxrss is NOT used: Linux carries the
# parent's peak across fork+exec into the child's ru_maxrss, which would make a
# pytest-sized parent dominate the number. A tiny warm-up negation first pages
# in torch/safetensors code, which is library cost, not checkpoint cost.
_CHILD = textwrap.dedent(
    """
    import json, os, sys, tempfile
    import torch
    from safetensors.torch import save_file
    from unlearnkit.negation import negate_checkpoints

    def status_kib(key):
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])

    base, tuned, out = sys.argv[1:4]
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("b", "t"):
            os.mkdir(os.path.join(tmp, name))
            save_file({"w": torch.randn(8, 8)}, os.path.join(tmp, name, "model.safetensors"))
        negate_checkpoints(os.path.join(tmp, "b"), os.path.join(tmp, "t"), os.path.join(tmp, "o"), progress=False)
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        reset = True
    except OSError:
        reset = False  # then VmHWM includes the import peak: an overestimate, still safe
    before = status_kib("VmRSS")
    negate_checkpoints(base, tuned, out, scale=1.0, progress=False)
    peak = status_kib("VmHWM")
    print(json.dumps({"before_kib": before, "peak_kib": peak, "hwm_reset": reset}))
    """
)


@pytest.mark.skipif(not Path("/proc/self/status").exists() or sys.platform != "linux", reason="needs Linux /proc")
def test_streaming_peak_memory_is_well_below_two_models(tmp_path):
    # 16 shards x 2 MiB of float32 = 32 MiB per model, written directly (building a
    # transformers model of that size would only slow the test down).
    n_shards, per_shard, rows, cols = 16, 4, 128, 1024
    gen = torch.Generator().manual_seed(0)
    model_bytes = 0
    for name in ("base", "tuned"):
        folder = tmp_path / name
        folder.mkdir()
        weight_map = {}
        for s in range(n_shards):
            fname = f"model-{s + 1:05d}-of-{n_shards:05d}.safetensors"
            shard = {f"layer{s}.w{i}": torch.randn(rows, cols, generator=gen) for i in range(per_shard)}
            save_file(shard, str(folder / fname), metadata={"format": "pt"})
            weight_map.update({k: fname for k in shard})
        (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    model_bytes = n_shards * per_shard * rows * cols * 4

    env = dict(os.environ, OMP_NUM_THREADS="1")
    repo = Path(negation.__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join([str(repo), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(tmp_path / "base"), str(tmp_path / "tuned"), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    stats = json.loads(proc.stdout.strip().splitlines()[-1])
    extra = (stats["peak_kib"] - stats["before_kib"]) * 1024
    ratio = extra / model_bytes
    print(
        f"peak extra memory {extra / 2**20:.1f} MiB = {ratio:.2f} x model size "
        f"({model_bytes / 2**20:.0f} MiB, high-water mark reset: {stats['hwm_reset']})"
    )
    assert ratio < 1.5, f"negation used {ratio:.2f}x the model size"

    # And the streamed result is right.
    out, b, t = load_checkpoint(tmp_path / "out"), load_checkpoint(tmp_path / "base"), load_checkpoint(tmp_path / "tuned")
    assert len(out) == n_shards * per_shard
    for name in ("layer0.w0", f"layer{n_shards - 1}.w{per_shard - 1}"):
        torch.testing.assert_close(out[name], 2 * b[name] - t[name], atol=1e-5, rtol=0)
