"""Evaluation metrics against hand-computed values on small inputs."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from unlearnkit.data.types import Example, MCItem
from unlearnkit.evaluation import metrics
from unlearnkit.evaluation.likelihood import perplexity
from unlearnkit.evaluation.metrics import (
    diversity,
    fluency,
    greedy_token_ids,
    harmful_rate,
    memorisation,
    retain_perplexity,
    similarity_to_original,
    truthfulqa_mc,
    unlearning_effectiveness,
)
from unlearnkit.evaluation.text_metrics import bleu, rouge_l

# ----------------------------------------------------------------- harm


def test_harmful_rate_by_hand():
    assert harmful_rate([0.2, 0.5, 0.9, 0.1]) == 0.5  # 0.5 and 0.9 reach the threshold
    assert harmful_rate([0.2, 0.5, 0.9, 0.1], threshold=0.95) == 0.0
    assert harmful_rate([1.0, 1.0, 0.0]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        harmful_rate([])
    with pytest.raises(ValueError):
        harmful_rate([0.5, 1.2])
    with pytest.raises(ValueError):
        harmful_rate([float("nan")])


def test_unlearning_effectiveness_by_hand():
    assert unlearning_effectiveness(0.8, 0.2) == pytest.approx(75.0)  # (0.8 - 0.2) / 0.8 * 100
    assert unlearning_effectiveness(0.5, 0.5) == 0.0
    assert unlearning_effectiveness(0.4, 0.6) == pytest.approx(-50.0)
    assert unlearning_effectiveness(0.3, 0.0) == pytest.approx(100.0)
    for bad in [(0.0, 0.1), (1.2, 0.5), (0.5, -0.1), (0.5, 1.01)]:
        with pytest.raises(ValueError):
            unlearning_effectiveness(*bad)


# ----------------------------------------------------------------- SKU's measures


def test_diversity_by_hand():
    # words: [the cat sat] [the cat ran]: 6 unigrams, 4 unique; bigrams
    # (the,cat) (cat,sat) (the,cat) (cat,ran): 4, 3 unique.
    assert diversity(["The cat sat.", "the cat ran"]) == {"distinct_1": pytest.approx(4 / 6), "distinct_2": 0.75}
    assert diversity(["I cannot help.", "I cannot help."]) == {"distinct_1": 0.5, "distinct_2": 0.5}


def test_similarity_to_original_on_crafted_strings():
    from unlearnkit.evaluation.embedding import get_encoder

    original = ["the cat sat on the mat", "hello world", "Paris is the capital of France."]
    new = ["the cat sat", "hello world", "I like turtles and green tea."]
    # ROUGE-L by hand: pair 1: LCS 3, P = 3/3, R = 3/6, F = 2 * 1 * 0.5 / 1.5 = 2/3;
    # pair 2: identical, 1; pair 3: only "the"? no: no shared word, 0.
    result = similarity_to_original(original, new)
    assert result["rouge_l"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    enc = get_encoder()
    a, b = enc.encode(original), enc.encode(new)
    by_hand = [float(torch.dot(a[i], b[i]) / (a[i].norm() * b[i].norm())) for i in range(3)]
    assert by_hand[1] == pytest.approx(1.0, abs=1e-5)
    assert by_hand[0] > by_hand[2]  # a shortened sentence stays closer than an unrelated one
    assert result["cosine"] == pytest.approx(sum(by_hand) / 3, abs=1e-5)
    with pytest.raises(ValueError):
        similarity_to_original(["a"], ["a", "b"])


# ----------------------------------------------------------------- a tiny model with a word tokenizer


@pytest.fixture(scope="module")
def word_model(word_tokenizer):
    torch.manual_seed(1)
    config = LlamaConfig(
        vocab_size=len(word_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        initializer_range=0.3,  # peaked logits: clear argmaxes
        bos_token_id=None, eos_token_id=word_tokenizer.eos_token_id, pad_token_id=word_tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config).eval()


def _ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def _answer_logprobs(model, prompt_ids, answer_ids) -> torch.Tensor:
    """log p(answer token | everything before), by one plain forward pass."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt_ids + answer_ids])).logits[0]
    lp = logits.double().log_softmax(-1)
    start = len(prompt_ids)
    return torch.stack([lp[start + k - 1, t] for k, t in enumerate(answer_ids)])


def test_fluency_is_the_pooled_perplexity_of_the_answers(word_model, word_tokenizer):
    tok = word_tokenizer
    prompts = ["What is the capital of France ?", "Tell me a story", "Why ?"]
    responses = ["Paris is .", "Once upon a time there was a cat .", ""]
    total, count = 0.0, 0
    for p, r in zip(prompts[:2], responses[:2]):
        lp = _answer_logprobs(word_model, _ids(tok, p), _ids(tok, r))  # raw template: prompt then answer
        total -= float(lp.sum())
        count += lp.numel()
    result = fluency(word_model, tok, prompts, responses, template="raw", batch_size=2)
    assert result["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-5)
    assert (result["scored"], result["empty"]) == (2, 1)  # the empty answer is skipped
    with pytest.raises(Exception, match="every response is empty"):
        fluency(word_model, tok, ["Why ?"], [" "], template="raw")


def test_truthfulqa_mc_by_hand(word_model, word_tokenizer, monkeypatch):
    tok = word_tokenizer
    mc1 = [
        MCItem("What is the capital of France ?", ("Paris is", "the dog", "a cat"), (1, 0, 0)),
        MCItem("Tell me a story", ("Once upon a time", "Paris"), (1, 0)),
    ]
    mc2 = [MCItem("What is the capital of France ?", ("Paris is", "Paris", "the dog"), (1, 1, 0))]

    def total(q, c):  # qa template: "### Question: q\n### Answer:" then " c", no EOS
        prompt = _ids(tok, f"### Question: {q}\n### Answer:")
        return float(_answer_logprobs(word_model, prompt, _ids(tok, " " + c)).sum())

    hits = 0
    for item in mc1:
        scores = [total(item.question, c) for c in item.choices]
        hits += item.labels[scores.index(max(scores))]
    s = torch.tensor([total(mc2[0].question, c) for c in mc2[0].choices], dtype=torch.float64).softmax(0)
    expected = {"mc1": hits / 2, "mc2": float(s[0] + s[1]), "n": 2}
    result = truthfulqa_mc(word_model, tok, mc1, mc2, template="qa", batch_size=3)
    assert result == {"mc1": expected["mc1"], "mc2": pytest.approx(expected["mc2"], abs=1e-6), "n": 2}
    # Pooling over chunks gives the same numbers as one chunk.
    monkeypatch.setattr(metrics, "CHUNK", 1)
    again = truthfulqa_mc(word_model, tok, mc1, mc2, template="qa", batch_size=3)
    assert again["mc1"] == result["mc1"] and again["mc2"] == pytest.approx(result["mc2"], abs=1e-9)
    assert truthfulqa_mc(word_model, tok, mc1, template="qa")["mc2"] is None  # MC2 needs MC2 items


def test_retain_perplexity_pools_chunks_like_one_call(word_model, word_tokenizer, monkeypatch):
    texts = ["The quick brown fox jumps over the lazy dog .", "Once upon a time there was a cat .", "Paris is ."]
    one_call = perplexity(word_model, word_tokenizer, texts, batch_size=2)
    assert retain_perplexity(word_model, word_tokenizer, texts, batch_size=2) == pytest.approx(one_call, rel=1e-9)
    monkeypatch.setattr(metrics, "CHUNK", 2)  # chunks of 2 and 1 texts, pooled by their token counts
    assert retain_perplexity(word_model, word_tokenizer, texts, batch_size=2) == pytest.approx(one_call, rel=1e-9)
    # By hand: the first token of each text has no predictor (no BOS), the rest are scored.
    total, count = 0.0, 0
    for t in texts:
        ids = _ids(word_tokenizer, t)
        lp = _answer_logprobs(word_model, ids[:1], ids[1:])
        total -= float(lp.sum())
        count += lp.numel()
    assert one_call == pytest.approx(math.exp(total / count), rel=1e-6)


# ----------------------------------------------------------------- memorisation


def _hand_greedy(model, prompt_ids: list[int], n: int, eos: int) -> list[int]:
    """Greedy decoding by hand: a full forward pass per token, argmax of the last position."""
    ids, out = list(prompt_ids), []
    with torch.no_grad():
        for _ in range(n):
            nxt = int(model(torch.tensor([ids])).logits[0, -1].argmax())
            if nxt == eos:
                break
            out.append(nxt)
            ids.append(nxt)
    return out


def test_memorisation_exact_match_against_hand_greedy(word_model, word_tokenizer):
    tok = word_tokenizer
    special = set(tok.all_special_ids)
    prompts = ["The quick brown fox", "Tell me a story about a"]
    greedy = [_hand_greedy(word_model, _ids(tok, p), 4, tok.eos_token_id) for p in prompts]
    assert all(len(g) == 4 and not set(g) & special for g in greedy), greedy  # precondition of the crafted refs
    words = [i for i in range(len(tok)) if i not in special]
    other = lambda avoid: next(w for w in words if w not in avoid)  # noqa: E731
    # Pair 1: the truth agrees with greedy on positions 0 and 1 only -> 2/4.
    ref1 = greedy[0][:2] + [other({greedy[0][2]}), other({greedy[0][3]})]
    # Pair 2: a 2-token truth; greedy must stop after 2 tokens and agrees on position 0 -> 1/2.
    ref2 = greedy[1][:1] + [other({greedy[1][1]})]
    refs = [ref1, ref2]
    pairs = [Example(p, tok.decode(r)) for p, r in zip(prompts, refs)]
    assert [_ids(tok, e.response) for e in pairs] == refs  # word-level text round-trips

    ids = greedy_token_ids(word_model, tok, prompts, [4, 2], template="raw", batch_size=2)
    assert ids == [greedy[0], greedy[1][:2]]  # batched, left-padded, per-row budgets
    result = memorisation(word_model, tok, pairs, template="raw", batch_size=2)
    assert result["exact_match"] == pytest.approx((2 / 4 + 1 / 2) / 2)
    texts = [tok.decode(greedy[0]), tok.decode(greedy[1][:2])]
    assert result["generations"] == texts
    assert result["rouge_l"] == pytest.approx((rouge_l(texts[0], pairs[0].response) + rouge_l(texts[1], pairs[1].response)) / 2)
    assert result["bleu"] == pytest.approx((bleu(texts[0], pairs[0].response) + bleu(texts[1], pairs[1].response)) / 2)
    assert 0.0 < result["cosine"] <= 1.0 and result["n"] == 2
    # A fixed budget overrides the continuation's length: 1 token -> only position 0 can match.
    short = memorisation(word_model, tok, pairs, max_new_tokens=1, template="raw")
    assert short["exact_match"] == pytest.approx((1 / 4 + 1 / 2) / 2)


def test_memorisation_of_the_model_own_continuation_is_perfect(word_model, word_tokenizer):
    tok = word_tokenizer
    prompt = "What is the capital of"
    greedy = _hand_greedy(word_model, _ids(tok, prompt), 3, tok.eos_token_id)
    result = memorisation(word_model, tok, [Example(prompt, tok.decode(greedy))], template="raw")
    assert result["exact_match"] == 1.0 and result["rouge_l"] == 1.0
    assert result["cosine"] == pytest.approx(1.0, abs=1e-5)


def test_memorisation_scores_against_the_true_continuation_ids(word_model, word_tokenizer):
    """A pair cut from a text carries its continuation's token ids; exact match uses them, not a re-tokenisation."""
    tok = word_tokenizer
    prompt = "What is the capital of"
    greedy = _hand_greedy(word_model, _ids(tok, prompt), 3, tok.eos_token_id)
    # The text re-tokenises to other ids (here: different words), the carried ids are the greedy ones.
    pair = Example(prompt, "cat hat dog", {"continuation_ids": greedy})
    assert _ids(tok, pair.response) != greedy
    assert metrics.memorisation_references(tok, [pair]) == [greedy]
    assert memorisation(word_model, tok, [pair], template="raw")["exact_match"] == 1.0


def test_oz_pairs_carry_the_true_continuation_ids(shared_data, smol_tokenizer):
    from unlearnkit.data.recipes import text_pairs

    text = (shared_data / "books" / "dorothy_and_the_wizard_in_oz.txt").read_text(encoding="utf-8")
    pairs = text_pairs(text, smol_tokenizer, 32, 32)
    full = smol_tokenizer(text, add_special_tokens=False)["input_ids"]
    refs = metrics.memorisation_references(smol_tokenizer, pairs)
    for p, r in zip(pairs, refs):
        start = p.meta["offset"] + 32
        assert r == full[start : start + 32]
    retokenised = [smol_tokenizer(p.response, add_special_tokens=False)["input_ids"] for p in pairs]
    differ = sum(int(a != b) for a, b in zip(refs, retokenised))
    # Measured: 26 of the 945 pairs re-tokenise to other ids than the book's own.
    assert len(pairs) == 945 and differ == 26
