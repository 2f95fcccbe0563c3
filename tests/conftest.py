"""Shared fixtures: real tokenizers, tiny real models built from configs, data paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

# The library's default data sets, from the offline copies beside the project (relative to the
# project root, where the tests run): see unlearnkit.paths.
os.environ.setdefault("UNLEARNKIT_DATA", "../shared/data")
# Tests never reach a hub: fail fast instead of retrying the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"the shared data folder {SHARED_DATA} is missing (it sits beside the project).")
    return SHARED_DATA


@pytest.fixture(scope="session")
def smol_tokenizer():
    """The real SmolLM2 tokenizer (from the alias cache, built on first use)."""
    from unlearnkit.models import load_tokenizer

    tok = load_tokenizer("smollm2-135m-instruct")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


@pytest.fixture(scope="session")
def word_tokenizer():
    """A second, different real tokenizer: a word-level one trained here.

    It has no chat template and no BOS, unlike SmolLM2's byte-level BPE.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [
        "### Question: How do I bake bread ? ### Answer: Mix flour water and yeast then bake it .",
        "The quick brown fox jumps over the lazy dog . What is the capital of France ? Paris is .",
        "Tell me a story about a cat and a hat . Once upon a time there was a cat .",
    ]
    tk = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=["[UNK]", "[PAD]", "</s>"]))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]", eos_token="</s>")
    return tok


def tiny_config(arch: str, vocab_size: int, **overrides):
    """A few-layer model config of a given architecture (random weights); ``overrides`` set config fields."""
    from transformers import GPT2Config, LlamaConfig, OPTConfig

    if arch == "llama":
        return LlamaConfig(**{**dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                                     tie_word_embeddings=True), **overrides})
    if arch == "opt":
        return OPTConfig(vocab_size=vocab_size, hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
                         word_embed_proj_dim=32, max_position_embeddings=512, dropout=0.0, attention_dropout=0.0,
                         pad_token_id=1, bos_token_id=2, eos_token_id=2)
    if arch == "gpt2":
        return GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=4, n_positions=512, resid_pdrop=0.0,
                          embd_pdrop=0.0, attn_pdrop=0.0)
    raise ValueError(arch)


def tiny_model(arch: str, vocab_size: int, seed: int = 0, **overrides):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, vocab_size, **overrides))
    model.eval()
    return model


def peaked_llama_model(tok, hidden_size: int = 32):
    """A tiny Llama with peaked, prompt-dependent distributions (clear argmaxes; it writes words)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, initializer_range=0.2, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    return LlamaForCausalLM(config).eval()


def save_peaked_llama(out: Path, tok, hidden_size: int = 32) -> Path:
    """:func:`peaked_llama_model` saved as a model folder with ``tok``."""
    peaked_llama_model(tok, hidden_size).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def peaked_llama(smol_tokenizer):
    return peaked_llama_model(smol_tokenizer)


@pytest.fixture(scope="module")
def tok(smol_tokenizer):
    """Short names for the hand-computation tests: the real tokenizer ..."""
    return smol_tokenizer


@pytest.fixture(scope="module")
def model(peaked_llama):
    """... and the peaked tiny llama (one per test module)."""
    return peaked_llama


def peaked_other_arch(arch: str, tok):
    """A tiny OPT or GPT-2 with peaked distributions (learned absolute positions)."""
    from transformers import GPT2Config, GPT2LMHeadModel, OPTConfig, OPTForCausalLM

    torch.manual_seed(1)
    ids = dict(bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    if arch == "opt":
        cfg = OPTConfig(vocab_size=len(tok), hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
                        word_embed_proj_dim=32, max_position_embeddings=128, init_std=0.2, **ids)
        return OPTForCausalLM(cfg).eval()
    cfg = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=4, n_positions=128, initializer_range=0.2, **ids)
    return GPT2LMHeadModel(cfg).eval()


@pytest.fixture
def tiny_llama(smol_tokenizer):
    return tiny_model("llama", len(smol_tokenizer))


@pytest.fixture
def tiny_model_dir(tmp_path, smol_tokenizer):
    """A tiny Llama saved as a local model folder with the SmolLM2 tokenizer."""
    model = tiny_model("llama", len(smol_tokenizer))
    out = tmp_path / "tiny-llama"
    model.save_pretrained(out, safe_serialization=True)
    smol_tokenizer.save_pretrained(out)
    return out
