"""Every loss term against an independent hand computation, on three architectures."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.conftest import tiny_model
from unlearnkit.data.tokenize import IGNORE_INDEX, TokenizedExample, collate
from unlearnkit.losses import answer_logits
from unlearnkit.methods import LossContext, get_method

ARCHS = ["llama", "opt", "gpt2"]
VOCAB = 97

# Two examples of different lengths: (prompt ids, response ids). Hand-built so
# that the hand computation does not depend on our tokenisation.
FORGET = [([5, 9, 14, 3], [21, 33, 40]), ([7, 11], [50, 61, 62, 70])]
RETAIN = [([8, 12, 13], [30, 31]), ([15, 16, 17, 18, 19], [44, 45, 46])]
RANDOM = [([5, 9, 14, 3], [80, 81]), ([7, 11], [82, 83, 84]), ([5, 9, 14, 3], [85]), ([7, 11], [86, 87])]
PAD = 0


def as_batch(pairs):
    items = [TokenizedExample(p + r, [IGNORE_INDEX] * len(p) + r) for p, r in pairs]
    return collate(items, PAD)


def hand_token_logprobs(model, prompt, response):
    """log p(response token | everything before it), one unpadded sequence at a time."""
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()
    logp = torch.log_softmax(logits, dim=-1)
    out = []
    for k, tok in enumerate(response):
        pos = len(prompt) + k  # position of the token; predicted at pos - 1
        out.append(float(logp[pos - 1, tok]))
    return out


def hand_mean_nll(model, pairs):
    lps = [lp for p, r in pairs for lp in hand_token_logprobs(model, p, r)]
    return -sum(lps) / len(lps)


def hand_kl(ref_model, cur_model, pairs):
    """KL(ref || cur) per answer position, mean over all answer tokens."""
    total, count = 0.0, 0
    for prompt, response in pairs:
        ids = torch.tensor([prompt + response])
        with torch.no_grad():
            lr = torch.log_softmax(ref_model(input_ids=ids).logits[0].double(), -1)
            lc = torch.log_softmax(cur_model(input_ids=ids).logits[0].double(), -1)
        for k in range(len(response)):
            pos = len(prompt) + k - 1
            p = lr[pos].exp()
            total += float((p * (lr[pos] - lc[pos])).sum())
            count += 1
    return total / count


def make_ctx(model, reference=None):
    ref_fn = None
    if reference is not None:
        def ref_fn(batch):
            with torch.no_grad():
                return answer_logits(reference, batch)
    return LossContext(model=model, denominator=lambda mask: mask.sum().float(), reference=ref_fn)


@pytest.fixture(params=ARCHS)
def models(request):
    cur = tiny_model(request.param, VOCAB, seed=1)
    ref = tiny_model(request.param, VOCAB, seed=2)  # a different "original" so the KL is not zero
    return cur, ref


def test_ga_is_negated_mean_answer_nll(models):
    cur, _ = models
    loss, terms = get_method("ga")().loss(make_ctx(cur), {"forget": as_batch(FORGET)})
    expected = hand_mean_nll(cur, FORGET)
    assert terms["forget_nll"] == pytest.approx(expected, rel=1e-5)
    assert float(loss) == pytest.approx(-expected, rel=1e-5)


def test_gradient_difference(models):
    cur, _ = models
    m = get_method("gradient_difference")
    method = m(m.Params(forget_weight=0.7, retain_weight=1.3))
    loss, terms = method.loss(make_ctx(cur), {"forget": as_batch(FORGET), "retain": as_batch(RETAIN)})
    f, r = hand_mean_nll(cur, FORGET), hand_mean_nll(cur, RETAIN)
    assert terms["forget_nll"] == pytest.approx(f, rel=1e-5)
    assert terms["retain_nll"] == pytest.approx(r, rel=1e-5)
    assert float(loss) == pytest.approx(-0.7 * f + 1.3 * r, rel=1e-5)


def test_llm_unlearn_terms(models):
    cur, ref = models
    m = get_method("llm_unlearn")
    method = m(m.Params())  # published weights 0.5 / 1 / 1
    batches = {"forget": as_batch(FORGET), "random": as_batch(RANDOM), "retain": as_batch(RETAIN)}
    loss, terms = method.loss(make_ctx(cur, ref), batches)
    f = hand_mean_nll(cur, FORGET)
    rnd = hand_mean_nll(cur, RANDOM)
    kl = hand_kl(ref, cur, RETAIN)
    assert kl > 1e-3
    assert terms["forget_nll"] == pytest.approx(f, rel=1e-5)
    assert terms["random_nll"] == pytest.approx(rnd, rel=1e-5)
    assert terms["retain_kl"] == pytest.approx(kl, rel=1e-4, abs=1e-7)
    assert float(loss) == pytest.approx(-0.5 * f + rnd + kl, rel=1e-4)


def test_kl_is_zero_against_itself_and_ignores_padding(models):
    cur, ref = models
    ctx = make_ctx(cur, copy.deepcopy(cur))
    from unlearnkit.methods.gradient_ascent import retain_kl

    assert float(retain_kl(ctx, as_batch(RETAIN))) == pytest.approx(0.0, abs=1e-6)
    # Padding: one padded batch of two equals the token-weighted mean of the two alone.
    ctx = make_ctx(cur, ref)
    both = float(retain_kl(ctx, as_batch(RETAIN)))
    singles = [float(retain_kl(ctx, as_batch([pair]))) for pair in RETAIN]
    weights = [len(r) for _, r in RETAIN]
    assert both == pytest.approx(sum(s * w for s, w in zip(singles, weights)) / sum(weights), rel=1e-5)


class PromptLogitScrambler(torch.nn.Module):
    """Wraps a model and replaces every logit that does not predict an answer token.

    If a loss read the prompt's (or the padding's) logits, its value would change.
    """

    def __init__(self, model, labels):
        super().__init__()
        self.inner = model
        following = labels[:, 1:] != IGNORE_INDEX
        keep = torch.zeros_like(labels, dtype=torch.bool)
        keep[:, :-1] = following
        self.keep = keep

    def forward(self, input_ids, attention_mask=None, use_cache=False):
        out = self.inner(input_ids=input_ids, attention_mask=attention_mask, use_cache=use_cache)
        noise = torch.randn_like(out.logits) * 50
        out.logits = torch.where(self.keep.unsqueeze(-1), out.logits, noise)
        return out


@pytest.mark.parametrize("name", ["ga", "gradient_difference", "llm_unlearn"])
def test_prompt_logits_never_contribute(models, name):
    cur, ref = models
    batches = {"forget": as_batch(FORGET), "random": as_batch(RANDOM), "retain": as_batch(RETAIN)}
    method = get_method(name)()
    loss_plain, _ = method.loss(make_ctx(cur, ref), batches)

    class Switch(torch.nn.Module):
        # Pick the scrambler that matches the batch being scored.
        def __init__(self):
            super().__init__()
            self.cur = cur

        def forward(self, input_ids, attention_mask=None, use_cache=False):
            for b in batches.values():
                if b["input_ids"].shape == input_ids.shape and torch.equal(b["input_ids"], input_ids):
                    return PromptLogitScrambler(cur, b["labels"])(input_ids, attention_mask, use_cache)
            raise AssertionError("unknown batch")

    loss_scrambled, _ = method.loss(make_ctx(Switch(), ref), batches)
    assert float(loss_scrambled) == pytest.approx(float(loss_plain), rel=1e-6)


def test_prompt_tokens_get_no_gradient_through_their_labels(models):
    """Changing a prompt token's label (it is masked) leaves the loss unchanged."""
    cur, _ = models
    batch = as_batch(FORGET)
    loss1, _ = get_method("ga")().loss(make_ctx(cur), {"forget": batch})
    assert (batch["labels"][:, :2] == IGNORE_INDEX).all()
    # The random-mismatch reference bug: a mask that starts at index 2 would train
    # on the question. Our labels mask exactly the prompt: check the count.
    n_answer = sum(len(r) for _, r in FORGET)
    assert int((batch["labels"] != IGNORE_INDEX).sum()) == n_answer
    assert float(loss1) == pytest.approx(-hand_mean_nll(cur, FORGET), rel=1e-5)


def test_answer_logits_only_computes_answer_columns(models):
    cur, _ = models
    batch = as_batch(FORGET)
    al = answer_logits(cur, batch)
    # Columns: positions that predict an answer token in at least one row.
    assert al.logits.shape[1] < batch["input_ids"].shape[1]
    assert int(al.mask.sum()) == sum(len(r) for _, r in FORGET)


@pytest.mark.parametrize("divergence", ["hinge", "unbounded", "anchor"])
def test_sku_terms(models, divergence):
    cur, ref = models
    m = get_method("sku")
    kl = hand_kl(ref, cur, RETAIN)
    # A target above the KL keeps the hinge active; check the hinge's value exactly.
    method = m(m.Params(e1=2.5, e2=1.5, e3=0.7, divergence=divergence, kl_target=kl + 0.3))
    batches = {"forget": as_batch(FORGET), "random": as_batch(RANDOM), "retain": as_batch(RETAIN)}
    loss, terms = method.loss(make_ctx(cur, ref), batches)
    f, rnd = hand_mean_nll(cur, FORGET), hand_mean_nll(cur, RANDOM)
    assert terms["forget_nll"] == pytest.approx(f, rel=1e-5)
    assert terms["random_nll"] == pytest.approx(rnd, rel=1e-5)
    assert terms["retain_kl"] == pytest.approx(kl, rel=1e-4)
    divergence_term = {"unbounded": -kl, "hinge": 0.3, "anchor": kl}[divergence]
    assert float(loss) == pytest.approx(2.5 * f + 1.5 * rnd + 0.7 * divergence_term, rel=1e-4)


def test_sku_hinge_is_flat_past_its_target(models):
    cur, ref = models
    m = get_method("sku")
    kl = hand_kl(ref, cur, RETAIN)
    method = m(m.Params(e1=1.0, e2=0.0, e3=1.0, kl_target=kl / 2))
    batches = {"forget": as_batch(FORGET), "random": as_batch(RANDOM), "retain": as_batch(RETAIN)}
    loss, _ = method.loss(make_ctx(cur, ref), batches)
    # Past the target the divergence contributes nothing: the loss is e1 * NLL alone.
    assert float(loss) == pytest.approx(hand_mean_nll(cur, FORGET), rel=1e-5)


def lora_on(model, seed=3):
    """A LoRA-wrapped copy of ``model`` whose adapter is not zero (B drawn at random)."""
    from peft import LoraConfig, get_peft_model

    wrapped = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in wrapped.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return wrapped


def test_sku_anchor_negated_is_the_kl_of_the_negated_copy(models):
    """anchor_negated = + KL(original || theta_o - lambda * delta) on retain, the model stage 2 returns."""
    from unlearnkit.negation import negate_lora_

    _, ref = models
    harmful = lora_on(ref)
    m = get_method("sku")
    method = m(m.Params(e1=2.5, e2=1.5, e3=0.7, divergence="anchor_negated", negation_scale=0.6))
    batches = {"forget": as_batch(FORGET), "random": as_batch(RANDOM), "retain": as_batch(RETAIN)}
    ctx = make_ctx(harmful, ref)
    loss, terms = method.loss(ctx, batches)
    # Hand computation on the negated weights themselves, built by stage 2's own code path.
    negated = negate_lora_(copy.deepcopy(harmful), 0.6)
    kl = hand_kl(ref, negated, RETAIN)
    f, rnd = hand_mean_nll(harmful, FORGET), hand_mean_nll(harmful, RANDOM)
    assert kl > 1e-3  # the adapter moves the negated copy: the test can tell the two apart
    assert terms["retain_kl"] == pytest.approx(kl, rel=1e-4)
    assert terms["forget_nll"] == pytest.approx(f, rel=1e-5)  # the forget term sees the harmful copy
    assert float(loss) == pytest.approx(2.5 * f + 1.5 * rnd + 0.7 * kl, rel=1e-4)
    # The scalings are restored: the model is the harmful copy again.
    assert hand_mean_nll(harmful, FORGET) == pytest.approx(f, rel=1e-12)


def test_sku_anchor_nll_is_the_hinged_rise_of_the_retain_nll(models):
    """anchor_measure nll = max(0, NLL_copy - NLL_original) of the retain answers, both ways round."""
    cur, ref = models
    m = get_method("sku")
    method = m(m.Params(e1=2.0, e2=0.0, e3=3.0, divergence="anchor", anchor_measure="nll"))
    batches = {"forget": as_batch(FORGET), "retain": as_batch(RETAIN)}
    rises = []
    for copy_model, original in ((cur, ref), (ref, cur)):
        loss, terms = method.loss(make_ctx(copy_model, original), batches)
        rise = hand_mean_nll(copy_model, RETAIN) - hand_mean_nll(original, RETAIN)
        rises.append(rise)
        assert terms["retain_nll_rise"] == pytest.approx(max(rise, 0.0), abs=1e-5)
        assert float(loss) == pytest.approx(2.0 * hand_mean_nll(copy_model, FORGET) + 3.0 * max(rise, 0.0), rel=1e-4)
    assert max(rises) > 1e-4 > min(rises)  # one direction is hinged at zero, the other is not


def test_sku_anchor_negated_nll_uses_the_negated_copy(models):
    from unlearnkit.negation import negate_lora_

    _, ref = models
    harmful = lora_on(ref)
    m = get_method("sku")
    method = m(m.Params(e1=1.0, e2=0.0, e3=2.0, divergence="anchor_negated", anchor_measure="nll",
                        negation_scale=1.5))
    negated = negate_lora_(copy.deepcopy(harmful), 1.5)
    rises = []
    # Anchors on either side of the negated copy (its line at other scales), so that
    # both sides of the hinge are seen; the method takes the original from ctx.reference.
    for original in (ref, negate_lora_(copy.deepcopy(harmful), 1.0), negate_lora_(copy.deepcopy(harmful), 2.0)):
        loss, terms = method.loss(make_ctx(harmful, original), {"forget": as_batch(FORGET), "retain": as_batch(RETAIN)})
        rise = hand_mean_nll(negated, RETAIN) - hand_mean_nll(original, RETAIN)
        rises.append(rise)
        assert terms["retain_nll_rise"] == pytest.approx(max(rise, 0.0), abs=1e-5)
        assert float(loss) == pytest.approx(hand_mean_nll(harmful, FORGET) + 2.0 * max(rise, 0.0), rel=1e-4)
    assert max(rises) > 1e-4 > min(rises)


def test_sku_anchor_negated_gradient_reaches_the_adapter(models):
    """The gradient of the negated anchor flows into A and B; the base weights stay frozen."""
    _, ref = models
    harmful = lora_on(ref)
    m = get_method("sku")
    method = m(m.Params(e1=0.0, e2=0.0, e3=1.0, divergence="anchor_negated"))
    loss, _ = method.loss(make_ctx(harmful, ref), {"forget": as_batch(FORGET), "retain": as_batch(RETAIN)})
    loss.backward()
    lora_grads = [p.grad for n, p in harmful.named_parameters() if "lora_" in n]
    assert lora_grads and all(g is not None for g in lora_grads)
    assert sum(float(g.abs().sum()) for g in lora_grads) > 0
    assert all(p.grad is None for n, p in harmful.named_parameters() if "lora_" not in n)


def test_sku_anchor_negated_needs_lora_and_a_scale(models):
    cur, ref = models
    m = get_method("sku")
    method = m(m.Params(divergence="anchor_negated"))
    batches = {"forget": as_batch(FORGET), "random": as_batch(RANDOM), "retain": as_batch(RETAIN)}
    with pytest.raises(RuntimeError, match="LoRA"):
        method.loss(make_ctx(cur, ref), batches)
    with pytest.raises(ValueError, match="negation_scale"):
        m.Params(divergence="anchor_negated", negation_scale=0.0)
    with pytest.raises(ValueError):
        m.Params(divergence="repel")
    with pytest.raises(ValueError, match="anchor_measure"):
        m.Params(divergence="hinge", anchor_measure="nll")
    # Checkpointed layers would recompute the un-negated forward in backward: refused.
    harmful = lora_on(ref)
    harmful.get_base_model().gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    with pytest.raises(RuntimeError, match="gradient checkpointing"):
        method.loss(make_ctx(harmful, ref), batches)


def test_sku_without_e2_needs_no_random_batch(models):
    cur, ref = models
    m = get_method("sku")
    method = m(m.Params(e1=1.5, e2=0.0, e3=2.0, divergence="anchor"))
    assert "random" not in method.batch_needs
    assert "random" in m(m.Params()).batch_needs
    loss, terms = method.loss(make_ctx(cur, ref), {"forget": as_batch(FORGET), "retain": as_batch(RETAIN)})
    assert "random_nll" not in terms
    assert float(loss) == pytest.approx(1.5 * hand_mean_nll(cur, FORGET) + 2.0 * hand_kl(ref, cur, RETAIN), rel=1e-4)


def test_task_vector_stage_one_learns_the_forget_answers(models):
    cur, _ = models
    loss, terms = get_method("task_vector")().loss(make_ctx(cur), {"forget": as_batch(FORGET)})
    assert float(loss) == pytest.approx(hand_mean_nll(cur, FORGET), rel=1e-5)


def test_llm_unlearn_without_random_weight_needs_no_random_batch(models):
    cur, ref = models
    m = get_method("llm_unlearn")
    method = m(m.Params(forget_weight=1.0, random_weight=0.0, retain_weight=2.0))
    assert "random" not in method.batch_needs
    loss, terms = method.loss(make_ctx(cur, ref), {"forget": as_batch(FORGET), "retain": as_batch(RETAIN)})
    assert "random_nll" not in terms
    assert float(loss) == pytest.approx(-hand_mean_nll(cur, FORGET) + 2.0 * hand_kl(ref, cur, RETAIN), rel=1e-4)
