"""Batched generation: same answers as one prompt at a time, in the input order."""

from __future__ import annotations

import pytest

from tests.conftest import peaked_other_arch
import torch

from unlearnkit.evaluation.generation import generate


# Clearly different lengths, and not sorted by length, so batching reorders them.
PROMPTS = [
    "Hi",
    "Tell me a long story about a dragon who lived in a castle by the sea and loved to eat apples every day.",
    "What is two plus two?",
    "Why?",
]


@pytest.mark.parametrize("template", ["qa", "chat"])
def test_batched_greedy_equals_one_by_one_in_input_order(model, tok, template):
    padding_side = tok.padding_side
    model.train()
    try:
        batched = generate(model, tok, PROMPTS, template=template, max_new_tokens=8, batch_size=3, progress=False)
        assert model.training  # mode restored
    finally:
        model.eval()
    single = [generate(model, tok, [p], template=template, max_new_tokens=8, progress=False)[0] for p in PROMPTS]
    assert batched == single
    # The outputs differ from prompt to prompt, so a mix-up of the order would fail above.
    assert len(set(single)) == len(PROMPTS)
    assert tok.padding_side == padding_side  # no tokenizer state leaked


def test_greedy_matches_manual_argmax_decoding(model, tok):
    """Independent reference: argmax decoding by hand, full forward each step, no cache."""
    prompt = "What is two plus two?"
    ids = tok(f"### Question: {prompt}\n### Answer:", add_special_tokens=True)["input_ids"]
    new: list[int] = []
    with torch.no_grad():
        for _ in range(6):
            nxt = int(model(torch.tensor([ids + new])).logits[0, -1].argmax())
            if nxt == tok.eos_token_id:
                break
            new.append(nxt)
    expected = tok.decode(new, skip_special_tokens=True).strip()
    assert generate(model, tok, [prompt], template="qa", max_new_tokens=6, progress=False) == [expected]


def test_seeded_sampling_is_reproducible(model, tok):
    kwargs = dict(template="qa", max_new_tokens=8, batch_size=2, do_sample=True, temperature=1.5, progress=False)
    rng_before = torch.get_rng_state()
    a = generate(model, tok, PROMPTS, seed=7, **kwargs)
    b = generate(model, tok, PROMPTS, seed=7, **kwargs)
    c = generate(model, tok, PROMPTS, seed=8, **kwargs)
    assert a == b
    assert a != c
    # Sampling seeds a forked RNG: the caller's global random state is untouched.
    assert torch.equal(torch.get_rng_state(), rng_before)


def test_empty_prompt_list(model, tok):
    assert generate(model, tok, [], template="qa", progress=False) == []


def other_arch(arch: str, tok):
    return peaked_other_arch(arch, tok)


@pytest.mark.parametrize("arch", ["opt", "gpt2"])
def test_batched_equals_one_by_one_other_architectures(arch, word_tokenizer):
    # A word-level tokenizer without BOS or chat template; prompts use its vocabulary.
    model = other_arch(arch, word_tokenizer)
    prompts = [
        "bake bread",
        "Tell me a story about a cat and a hat . What is the capital of France ?",
        "How do I bake bread ?",
    ]
    batched = generate(model, word_tokenizer, prompts, template="qa", max_new_tokens=8, batch_size=3, progress=False)
    single = [generate(model, word_tokenizer, [p], template="qa", max_new_tokens=8, progress=False)[0] for p in prompts]
    assert batched == single
    assert len(set(single)) == len(prompts)
