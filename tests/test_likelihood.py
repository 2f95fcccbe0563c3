"""Likelihood metrics against log-probabilities computed by hand on a tiny model.

The hand computations below deliberately avoid unlearnkit's tokenisation and
batching: each sequence is built from literal template strings, run alone
(unpadded) through the model, and its answer log-probabilities are picked out
of ``log_softmax`` by explicit indexing.
"""

from __future__ import annotations

import math

import pytest

from tests.conftest import peaked_other_arch, tiny_model
import torch

from unlearnkit.data.types import Example, MCItem
from unlearnkit.evaluation.likelihood import answer_nll, mc_scores, perplexity, token_logprobs


def qa_ids(tok, question: str, answer: str, eos: bool) -> tuple[list[int], int]:
    """Token ids of a 'qa' example built from literal strings, and the prompt length."""
    prompt = tok(f"### Question: {question}\n### Answer:", add_special_tokens=True)["input_ids"]
    response = tok(" " + answer, add_special_tokens=False)["input_ids"] + ([tok.eos_token_id] if eos else [])
    return prompt + response, len(prompt)


def hand_logprobs(model, ids: list[int], first_scored: int) -> list[float]:
    """log p(ids[t] | ids[:t]) for t >= first_scored, one unpadded forward pass."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    lp = torch.log_softmax(logits.double(), dim=-1)
    # The logits at position t - 1 predict token t.
    return [float(lp[t - 1, ids[t]]) for t in range(max(first_scored, 1), len(ids))]


PAIRS = [
    ("What is the capital of France?", "Paris is the capital of France."),
    ("Hi", "Hello!"),
    ("Name three primary colours, please, and say why they are called primary.", "Red, yellow and blue."),
]


def test_answer_nll_matches_hand_computation(model, tok):
    examples = [Example(prompt=q, response=a) for q, a in PAIRS]
    hand = []
    for q, a in PAIRS:
        ids, n_prompt = qa_ids(tok, q, a, eos=True)  # answer NLL scores the EOS, as training does
        hand.append(hand_logprobs(model, ids, n_prompt))
    expected_per_example = [-sum(h) / len(h) for h in hand]
    expected_tokens = sum(len(h) for h in hand)
    expected_mean = -sum(sum(h) for h in hand) / expected_tokens

    model.train()  # must be evaluated in eval mode, and left in train mode
    try:
        got = answer_nll(model, tok, examples, "qa", batch_size=8)
        assert model.training
    finally:
        model.eval()
    assert got["tokens"] == expected_tokens
    assert got["mean_nll"] == pytest.approx(expected_mean, abs=1e-5)
    assert got["per_example"] == pytest.approx(expected_per_example, abs=1e-5)
    # The answers differ, so a mix-up of the output order would show here.
    assert len({round(x, 3) for x in expected_per_example}) == len(PAIRS)


def test_answer_nll_padding_invariance(model, tok):
    examples = [Example(prompt=q, response=a) for q, a in PAIRS]
    batched = answer_nll(model, tok, examples, "qa", batch_size=3)
    one_by_one = [answer_nll(model, tok, [e], "qa", batch_size=1)["per_example"][0] for e in examples]
    assert batched["per_example"] == pytest.approx(one_by_one, abs=1e-5)


def test_perplexity_matches_hand_computation(model, tok):
    texts = ["The quick brown fox jumps over the lazy dog.", "Hello world, this is a short test sentence, isn't it?"]
    total, count = 0.0, 0
    for text in texts:
        ids = tok(text, add_special_tokens=True)["input_ids"]
        # Without a BOS the first token has no context: scoring starts at token 1.
        lps = hand_logprobs(model, ids, 1)
        assert len(lps) == len(ids) - 1
        total += sum(lps)
        count += len(lps)
    expected = math.exp(-total / count)
    assert perplexity(model, tok, texts, batch_size=2) == pytest.approx(expected, rel=1e-5)
    assert perplexity(model, tok, texts, batch_size=1) == pytest.approx(expected, rel=1e-5)


# Single-token choices on a near-uniform model: the choices' likelihoods are close, so
# the MC2 softmax is far from saturated and any scoring error (an EOS included, a
# shifted position) moves MC1/MC2 visibly.
MC_ITEMS = [
    MCItem(question="Is the sky blue on a clear day?", choices=("Yes", "No", "Maybe"), labels=(1, 0, 0)),
    MCItem(question="What is 2 + 2?", choices=("Four", "Five", "Three"), labels=(1, 0, 1)),
]


@pytest.fixture(scope="module")
def flat_model(tok):
    # Untied embeddings and the default 2048 positions, as transformers builds a LlamaConfig.
    return tiny_model("llama", len(tok), tie_word_embeddings=False, max_position_embeddings=2048)


def test_mc_scores_match_hand_computation(flat_model, tok):
    model = flat_model
    hand_ll = []  # per item: total log-likelihood of each choice, WITHOUT the EOS
    for item in MC_ITEMS:
        row = []
        for choice in item.choices:
            ids, n_prompt = qa_ids(tok, item.question, choice, eos=False)
            row.append(sum(hand_logprobs(model, ids, n_prompt)))
        hand_ll.append(row)

    # MC1: is the argmax choice a true one?  MC2: softmax mass on the true choices.
    mc1 = [item.labels[max(range(len(ll)), key=ll.__getitem__)] for item, ll in zip(MC_ITEMS, hand_ll)]
    mc2 = []
    for item, ll in zip(MC_ITEMS, hand_ll):
        top = max(ll)
        probs = [math.exp(x - top) for x in ll]
        mc2.append(sum(p for p, lab in zip(probs, item.labels) if lab) / sum(probs))
    expected = {"mc1": sum(mc1) / 2, "mc2": sum(mc2) / 2, "n": 2}
    # Not saturated: every item's true mass lies well inside (0, 1).
    assert all(0.05 < x < 0.95 for x in mc2)

    got = mc_scores(model, tok, MC_ITEMS, template="qa", batch_size=4)
    assert got["n"] == 2
    assert got["mc1"] == pytest.approx(expected["mc1"])
    assert got["mc2"] == pytest.approx(expected["mc2"], abs=1e-5)

    # The per-choice sums themselves.
    flat = [Example(prompt=it.question, response=c) for it in MC_ITEMS for c in it.choices]
    sums = [float(lp.sum()) for lp in token_logprobs(model, tok, flat, "qa", add_eos=False)]
    assert sums == pytest.approx([x for row in hand_ll for x in row], abs=1e-4)


def test_mc_scores_toy_values_from_fixed_likelihoods(monkeypatch):
    """MC1/MC2 arithmetic alone, on log-likelihoods chosen by hand."""
    import unlearnkit.evaluation.likelihood as lk

    # item 1: ll = (log .5, log .3, log .2) -> probs .5/.3/.2; true = choice 0 -> MC1 hit, MC2 = .5
    # item 2: ll = (log .1, log .6, log .3); true = choices 0 and 2 -> argmax is 1 (false): MC1 miss,
    #         MC2 = .1 + .3 = .4
    # MC1 = (1 + 0) / 2 = .5 ; MC2 = (.5 + .4) / 2 = .45
    lls = [math.log(x) for x in (0.5, 0.3, 0.2, 0.1, 0.6, 0.3)]
    monkeypatch.setattr(lk, "token_logprobs", lambda *a, **k: [torch.tensor([x]) for x in lls])
    items = [
        MCItem(question="q1", choices=("a", "b", "c"), labels=(1, 0, 0)),
        MCItem(question="q2", choices=("a", "b", "c"), labels=(1, 0, 1)),
    ]
    got = lk.mc_scores(None, None, items)
    assert got == {"mc1": pytest.approx(0.5), "mc2": pytest.approx(0.45), "n": 2}


def test_mc_scores_cache_scores_each_pair_once(monkeypatch):
    """A (question, choice) pair is scored once, across items and across calls sharing a cache."""
    import unlearnkit.evaluation.likelihood as lk

    calls = []

    def fake(model, tok, examples, *a, **k):  # total log-likelihood = -len(choice)
        calls.append([(e.prompt, e.response) for e in examples])
        return [torch.tensor([-float(len(e.response))]) for e in examples]

    monkeypatch.setattr(lk, "token_logprobs", fake)
    cache: dict = {}
    twice = [MCItem(question="q1", choices=("a", "bb"), labels=(1, 0))] * 2
    assert lk.mc_scores(None, None, twice, cache=cache)["mc1"] == 1.0
    assert calls == [[("q1", "a"), ("q1", "bb")]]
    got = lk.mc_scores(None, None, [MCItem(question="q1", choices=("bb", "a", "ccc"), labels=(0, 1, 0))], cache=cache)
    assert calls[1] == [("q1", "ccc")]  # only the new pair
    e = math.exp
    assert got["mc1"] == 1.0 and got["mc2"] == pytest.approx(e(-1) / (e(-1) + e(-2) + e(-3)))
    lk.mc_scores(None, None, twice, cache=cache)
    assert len(calls) == 2  # everything known: nothing scored


def other_arch(arch: str, tok):
    return peaked_other_arch(arch, tok)


@pytest.mark.parametrize("arch", ["opt", "gpt2"])
def test_answer_nll_other_architectures(arch, word_tokenizer):
    tok = word_tokenizer  # word-level, no BOS, no chat template
    model = other_arch(arch, tok)
    pairs = [("How do I bake bread ?", "Mix flour water and yeast then bake it ."), ("cat", "a hat")]
    hand = []
    for q, a in pairs:
        ids, n_prompt = qa_ids(tok, q, a, eos=True)
        hand.append(hand_logprobs(model, ids, n_prompt))
    examples = [Example(prompt=q, response=a) for q, a in pairs]
    got = answer_nll(model, tok, examples, "qa", batch_size=2)
    assert got["tokens"] == sum(len(h) for h in hand)
    assert got["per_example"] == pytest.approx([-sum(h) / len(h) for h in hand], abs=1e-5)


def test_empty_inputs_raise_clear_errors(model, tok):
    from unlearnkit.errors import DataError

    with pytest.raises(DataError):
        answer_nll(model, tok, [], "qa")
    with pytest.raises(DataError):
        answer_nll(model, tok, [Example(prompt="q", response="")], "qa")
    with pytest.raises(DataError):
        perplexity(model, tok, ["", "a"])  # one token, no BOS: nothing to score
    with pytest.raises(DataError):
        mc_scores(model, tok, [MCItem(question="q", choices=("a", "b"), labels=(1,))])


def test_mc1_tie_is_not_a_hit(flat_model, tok):
    """The official MC1 is `max(true) > max(false)`: a true choice tied with a false one is a miss."""
    tied = [MCItem(question="Where is Paris?", choices=("In France.", "In France."), labels=(1, 0))]
    assert mc_scores(flat_model, tok, tied, template="qa")["mc1"] == 0.0
    # ...and the same true choice against a different false one is scored on its merits.
    ll = lambda c: sum(hand_logprobs(flat_model, *qa_ids(tok, "Where is Paris?", c, eos=False)))  # noqa: E731
    items = [MCItem(question="Where is Paris?", choices=("In France.", "On the moon."), labels=(1, 0))]
    expected = float(ll("In France.") > ll("On the moon."))
    assert mc_scores(flat_model, tok, items, template="qa")["mc1"] == expected
