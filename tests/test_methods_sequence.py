"""NPO, SimNPO, DPO and UNDIAL against independent hand computations (plain python over one
unpadded sequence at a time), on three architectures."""

from __future__ import annotations

import math

import pytest
import torch

from tests.test_losses import FORGET, RETAIN, as_batch, hand_kl, hand_mean_nll, hand_token_logprobs, make_ctx, models  # noqa: F401
from unlearnkit.data.tokenize import IGNORE_INDEX, TokenizedExample, collate
from unlearnkit.errors import ConfigError
from unlearnkit.methods import get_method

# Preferred (alternative) answers to the FORGET prompts, of other lengths.
ALTERNATIVE = [([5, 9, 14, 3], [90, 91]), ([7, 11], [92, 93, 94, 95, 96])]


def hand_seq_logprob(model, prompt, response):
    return sum(hand_token_logprobs(model, prompt, response))


def method(name, **params):
    cls = get_method(name)
    return cls(cls.Params(**params))


def with_filler(pairs):
    """The batch of ``pairs`` plus a row with every label masked (what a process with no share gets)."""
    items = [TokenizedExample(p + r, [IGNORE_INDEX] * len(p) + r) for p, r in pairs]
    items.append(TokenizedExample([4, 4, 4], [IGNORE_INDEX] * 3))
    return collate(items, 0)


@pytest.mark.parametrize("retain_loss", ["none", "nll", "kl"])
def test_npo_is_the_mean_log_one_plus_ratio_power_beta(models, retain_loss):
    cur, ref = models
    beta = 0.7
    m = method("npo", beta=beta, forget_weight=1.5, retain_loss=retain_loss, retain_weight=0.4)
    batches = {"forget": as_batch(FORGET), "retain": as_batch(RETAIN)}
    loss, terms = m.loss(make_ctx(cur, ref), batches)
    per_seq = []
    for p, r in FORGET:
        ratio = math.exp(hand_seq_logprob(cur, p, r) - hand_seq_logprob(ref, p, r))
        per_seq.append(2 / beta * math.log(1 + ratio ** beta))
    npo = sum(per_seq) / len(per_seq)
    assert terms["npo"] == pytest.approx(npo, rel=1e-5)
    assert terms["forget_nll"] == pytest.approx(hand_mean_nll(cur, FORGET), rel=1e-5)
    retain = {"none": 0.0, "nll": hand_mean_nll(cur, RETAIN), "kl": hand_kl(ref, cur, RETAIN)}[retain_loss]
    assert float(loss.detach()) == pytest.approx(1.5 * npo + 0.4 * retain, rel=1e-4)
    assert ("retain" in m.batch_needs) == (retain_loss != "none")


@pytest.mark.parametrize("name", ["npo", "simnpo", "undial"])
def test_the_alternative_term_adds_the_cross_entropy_of_the_alternative_answers(models, name):
    cur, ref = models
    without = method(name, retain_loss="nll", retain_weight=0.4)
    with_alt = method(name, retain_loss="nll", retain_weight=0.4, alternative_weight=2.5)
    batches = {"forget": as_batch(FORGET), "retain": as_batch(RETAIN), "alternative": as_batch(ALTERNATIVE)}
    base, _ = without.loss(make_ctx(cur, ref), batches)
    loss, terms = with_alt.loss(make_ctx(cur, ref), batches)
    # The token-mean NLL of the alternative answers, by hand, weighted on top of the method's loss.
    alternative = hand_mean_nll(cur, ALTERNATIVE)
    assert terms["alternative_ce"] == pytest.approx(alternative, rel=1e-5)
    assert float(loss.detach()) == pytest.approx(float(base.detach()) + 2.5 * alternative, rel=1e-5)
    # The alternative batch is built only when the term is on.
    assert "alternative" in with_alt.batch_needs and "alternative" not in without.batch_needs
    assert "alternative" in method("dpo").batch_needs  # DPO reads it whatever the weight


def test_dpo_with_the_alternative_term_adds_its_cross_entropy_from_one_forward_pass(models):
    cur, ref = models
    batches = {"forget": as_batch(FORGET), "alternative": as_batch(ALTERNATIVE)}
    base, _ = method("dpo").loss(make_ctx(cur, ref), batches)
    calls = []
    ctx = make_ctx(cur, ref)
    count = ctx.logits
    ctx.logits = lambda batch: calls.append(batch) or count(batch)
    loss, terms = method("dpo", alternative_weight=2.5).loss(ctx, batches)
    alternative = hand_mean_nll(cur, ALTERNATIVE)
    assert terms["alternative_ce"] == pytest.approx(alternative, rel=1e-5)
    assert float(loss.detach()) == pytest.approx(float(base.detach()) + 2.5 * alternative, rel=1e-5)
    # The preference term's logits of the alternative answers are reused: one pass per batch.
    assert sum(b is batches["alternative"] for b in calls) == 1 and sum(b is batches["forget"] for b in calls) == 1


def test_npo_starts_at_two_log_two_over_beta_and_its_gradient_is_weighted_ascent(models):
    cur, _ = models
    beta = 0.5
    m = method("npo", beta=beta, retain_loss="none")
    loss, _ = m.loss(make_ctx(cur, cur), {"forget": as_batch(FORGET)})
    assert float(loss.detach()) == pytest.approx(2 / beta * math.log(2), rel=1e-6)
    # At ratio 1 each sequence's weight 2 * sigmoid(0) = 1: the gradient is that of the
    # mean sequence log-probability (summed over tokens): descending it is gradient ascent on the NLL.
    loss.backward()
    g_npo = [p.grad.clone() for p in cur.parameters()]
    cur.zero_grad()
    hand = sum(sum(torch.log_softmax(cur(input_ids=torch.tensor([p + r])).logits[0], -1)[len(p) + k - 1, t]
                   for k, t in enumerate(r)) for p, r in FORGET)
    (hand / len(FORGET)).backward()
    for a, p in zip(g_npo, cur.parameters()):
        torch.testing.assert_close(a, p.grad, rtol=1e-4, atol=1e-6)
    cur.zero_grad()


def test_npo_ignores_masked_filler_rows(models):
    cur, ref = models
    m = method("npo", retain_loss="none")
    a, _ = m.loss(make_ctx(cur, ref), {"forget": as_batch(FORGET)})
    b, _ = m.loss(make_ctx(cur, ref), {"forget": with_filler(FORGET)})
    assert float(b.detach()) == pytest.approx(float(a.detach()), rel=1e-5)


@pytest.mark.parametrize("gamma", [0.0, 0.8])
def test_simnpo_is_the_length_normalised_log_sigmoid(models, gamma):
    cur, _ = models
    beta = 2.5
    m = method("simnpo", beta=beta, gamma=gamma, retain_weight=0.3)
    loss, terms = m.loss(make_ctx(cur), {"forget": as_batch(FORGET), "retain": as_batch(RETAIN)})
    per_seq = []
    for p, r in FORGET:
        x = -(beta / len(r)) * hand_seq_logprob(cur, p, r) - gamma
        per_seq.append(-(2 / beta) * math.log(1 / (1 + math.exp(-x))))
    simnpo = sum(per_seq) / len(per_seq)
    assert terms["simnpo"] == pytest.approx(simnpo, rel=1e-5)
    assert float(loss) == pytest.approx(simnpo + 0.3 * hand_mean_nll(cur, RETAIN), rel=1e-5)
    assert not get_method("simnpo").needs_reference


def test_simnpo_refuses_a_kl_retain_term():
    with pytest.raises(Exception, match="retain_loss"):
        get_method("simnpo").Params(retain_loss="kl")


@pytest.mark.parametrize("retain_loss", ["none", "nll"])
def test_dpo_prefers_the_alternative_over_the_forget_answer(models, retain_loss):
    cur, ref = models
    beta = 0.3
    m = method("dpo", beta=beta, retain_loss=retain_loss, retain_weight=2.0)
    batches = {"forget": as_batch(FORGET), "alternative": as_batch(ALTERNATIVE), "retain": as_batch(RETAIN)}
    loss, terms = m.loss(make_ctx(cur, ref), batches)
    per_pair = []
    for (p, lose), (p2, win) in zip(FORGET, ALTERNATIVE):
        assert p == p2
        margin = ((hand_seq_logprob(cur, p, win) - hand_seq_logprob(ref, p, win))
                  - (hand_seq_logprob(cur, p, lose) - hand_seq_logprob(ref, p, lose)))
        per_pair.append(math.log(1 + math.exp(-beta * margin)))  # -log sigmoid(beta * margin)
    dpo = sum(per_pair) / len(per_pair)
    assert terms["dpo"] == pytest.approx(dpo, rel=1e-5)
    retain = hand_mean_nll(cur, RETAIN) if retain_loss == "nll" else 0.0
    assert float(loss) == pytest.approx(dpo + 2.0 * retain, rel=1e-5)


def test_dpo_against_itself_is_log_two_and_its_gradient_moves_the_pair_apart(models):
    cur, _ = models
    m = method("dpo", beta=1.0)
    batches = {"forget": as_batch(FORGET), "alternative": as_batch(ALTERNATIVE)}
    loss, _ = m.loss(make_ctx(cur, cur), batches)
    assert float(loss) == pytest.approx(math.log(2), rel=1e-6)
    # One small gradient step lowers the forget answers' log-probability relative to the alternatives'.
    loss.backward()
    before = [hand_seq_logprob(cur, p, w) - hand_seq_logprob(cur, p, lo) for (p, lo), (_, w) in zip(FORGET, ALTERNATIVE)]
    with torch.no_grad():
        for p in cur.parameters():
            p -= 1e-3 * p.grad
    after = [hand_seq_logprob(cur, p, w) - hand_seq_logprob(cur, p, lo) for (p, lo), (_, w) in zip(FORGET, ALTERNATIVE)]
    assert sum(after) > sum(before)


@pytest.mark.parametrize("gamma", [1.0, 10.0])
def test_undial_distils_towards_the_reference_with_the_answer_token_lowered(models, gamma):
    cur, ref = models
    m = method("undial", gamma=gamma, retain_loss="none")
    loss, terms = m.loss(make_ctx(cur, ref), {"forget": as_batch(FORGET)})
    total, count = 0.0, 0
    for prompt, response in FORGET:
        ids = torch.tensor([prompt + response])
        with torch.no_grad():
            zr = ref(input_ids=ids).logits[0].double()
            lc = torch.log_softmax(cur(input_ids=ids).logits[0].double(), -1)
        for k, tok in enumerate(response):
            pos = len(prompt) + k - 1
            z = zr[pos].clone()
            z[tok] -= gamma
            q = [math.exp(v) for v in z.tolist()]
            s = sum(q)
            q = [v / s for v in q]
            total += sum(qv * (math.log(qv) - float(lc[pos, v])) for v, qv in enumerate(q) if qv > 0)
            count += 1
    assert float(loss) == pytest.approx(total / count, rel=1e-4)
    assert terms["undial_kl"] == pytest.approx(total / count, rel=1e-4)


def test_undial_target_lowers_only_the_answer_token(models):
    cur, _ = models
    m = method("undial", gamma=3.0, retain_loss="none")
    # Against itself the loss is KL(q || p) > 0 with q the answer-lowered p: the model is pushed off y.
    loss, _ = m.loss(make_ctx(cur, cur), {"forget": as_batch(FORGET)})
    assert float(loss) > 1e-4


def test_methods_are_registered_with_typed_params():
    for name in ("npo", "simnpo", "dpo", "undial"):
        cls = get_method(name)
        with pytest.raises(Exception, match="not_a_param"):
            cls.Params(not_a_param=1)
        with pytest.raises(Exception):
            cls.Params(retain_loss="mse")
    with pytest.raises(ConfigError):
        get_method("nope")
