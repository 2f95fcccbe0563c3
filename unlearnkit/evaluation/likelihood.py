"""Likelihood-based evaluation: answer NLL, perplexity, multiple-choice scores.

Everything goes through one scorer, :func:`token_logprobs`: it tokenises with the
training code (:func:`unlearnkit.data.tokenize.tokenize_example`, so prompts are
rendered and masked exactly as in training), batches with dynamic right padding
(:func:`unlearnkit.data.tokenize.collate`), and returns, for every example, the
log-probabilities of its scored tokens (those whose label is not
``IGNORE_INDEX``). The usual causal shift applies: the logits at position ``t``
predict the token at ``t + 1``, so the very first token of a sequence is never
scored (nothing precedes it).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from unlearnkit.losses import answer_logits
from unlearnkit.data.tokenize import IGNORE_INDEX, TokenizedExample, collate, pad_id_of, tokenize_example
from unlearnkit.data.types import Example, MCItem
from unlearnkit.errors import DataError


def _model_device(model) -> torch.device:
    try:
        return model.device
    except AttributeError:  # plain nn.Module
        return next(model.parameters()).device


@torch.no_grad()
def _score_tokenized(
    model, items: Sequence[TokenizedExample], pad_token_id: int, batch_size: int
) -> list[torch.Tensor]:
    """Log-probabilities of the scored tokens of each item, in input order.

    Returns one 1-D float32 CPU tensor per item (empty when the item has no
    scored token). The caller is responsible for ``model.eval()``. Logits are
    computed only at answer positions (the same path as the training losses).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = _model_device(model)
    results: list[torch.Tensor | None] = [None] * len(items)
    # Longest first: similar lengths share a batch (little padding), and an
    # out-of-memory error shows up on the first batch rather than the last.
    order = sorted(range(len(items)), key=lambda i: -len(items[i]))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = collate([items[i] for i in idx], pad_token_id, padding_side="right")
        if not (batch["labels"][:, 1:] != IGNORE_INDEX).any():
            for i in idx:
                results[i] = torch.zeros(0)
            continue
        al = answer_logits(model, {k: v.to(device) for k, v in batch.items()})
        # Gather only the scored positions before the softmax: a (tokens x vocab)
        # tensor instead of (batch x width x vocab).
        picked = al.logits[al.mask].log_softmax(dim=-1)
        token_lp = picked.gather(-1, al.targets[al.mask].unsqueeze(-1)).squeeze(-1).cpu()
        # Boolean indexing is row-major, so rows come out in batch order.
        counts = al.mask.sum(dim=1).tolist()
        for i, lp in zip(idx, torch.split(token_lp, counts)):
            results[i] = lp
    return results  # type: ignore[return-value]


def token_logprobs(
    model,
    tokenizer,
    examples: Sequence[Example],
    template: str,
    max_length: int = 512,
    batch_size: int = 8,
    add_eos: bool = True,
) -> list[torch.Tensor]:
    """Log-probabilities of every scored (answer) token of each example.

    Runs under ``torch.no_grad`` in eval mode and restores the model's mode.
    Returns one 1-D float32 CPU tensor per example, in input order.
    """
    items = [tokenize_example(e, tokenizer, template, max_length, add_eos=add_eos) for e in examples]
    was_training = model.training
    model.eval()
    try:
        return _score_tokenized(model, items, pad_id_of(tokenizer), batch_size)
    finally:
        model.train(was_training)


def answer_nll(
    model,
    tokenizer,
    examples: list[Example],
    template: str,
    max_length: int = 512,
    batch_size: int = 8,
    add_eos: bool = True,
) -> dict:
    """Negative log-likelihood of the answers given their prompts.

    Scores the response tokens (plus the end-of-sequence token, as in training,
    unless ``add_eos=False``); prompt tokens are masked out.

    Returns ``{"mean_nll": token-weighted mean NLL over all answer tokens,
    "per_example": [mean NLL of each example's answer tokens],
    "per_example_tokens": [answer tokens of each example], "tokens": total
    answer tokens}``. An example whose answer yields no scored token raises
    :class:`DataError`.
    """
    if not examples:
        raise DataError("answer_nll needs at least one example.")
    per_token = token_logprobs(model, tokenizer, examples, template, max_length, batch_size, add_eos)
    per_example: list[float] = []
    counts: list[int] = []
    total_nll = 0.0
    total_tokens = 0
    for ex, lp in zip(examples, per_token):
        if lp.numel() == 0:
            raise DataError(f"example {ex.prompt[:60]!r} has no answer token to score (empty response?).")
        nll = -float(lp.double().sum())
        per_example.append(nll / lp.numel())
        counts.append(int(lp.numel()))
        total_nll += nll
        total_tokens += lp.numel()
    return {"mean_nll": total_nll / total_tokens, "per_example": per_example, "per_example_tokens": counts,
            "tokens": total_tokens}


def perplexity(model, tokenizer, texts: list[str], max_length: int = 512, batch_size: int = 8) -> float:
    """Perplexity of raw texts: exp of the token-weighted mean NLL.

    Each text is tokenised whole (template ``raw``, empty prompt, no
    end-of-sequence token appended; longer texts are cut to ``max_length``
    tokens). The first token of a text has no prediction, so it is not scored —
    unless the tokenizer adds a BOS token, which then serves as its context and
    every text token is scored. Texts that leave nothing to score (a single token
    without BOS) are skipped; if none is left, :class:`DataError` is raised.
    """
    examples = [Example(prompt="", response=t) for t in texts if t]
    per_token = token_logprobs(model, tokenizer, examples, "raw", max_length, batch_size, add_eos=False)
    total_nll = sum(-float(lp.double().sum()) for lp in per_token)
    total_tokens = sum(lp.numel() for lp in per_token)
    if total_tokens == 0:
        raise DataError("perplexity needs at least one text of two tokens or more.")
    return math.exp(total_nll / total_tokens)


def mc_scores(
    model,
    tokenizer,
    items: list[MCItem],
    template: str = "qa",
    batch_size: int = 8,
    max_length: int = 512,
    cache: dict[tuple[str, str], float] | None = None,
) -> dict:
    """TruthfulQA-style multiple-choice scores.

    Each choice is scored by its total log-likelihood as the answer to the
    question: the sum of the log-probabilities of its answer tokens, WITHOUT an
    end-of-sequence token.

    - MC1: fraction of items whose best true choice scores strictly above every
      false one (the official ``>``: a tie is a miss).
    - MC2: mean over items of the total probability of the true choices, with the
      probabilities given by a softmax over the choices' total log-likelihoods.

    ``cache`` maps (question, choice) to its total log-likelihood; pairs found
    there are not scored again and new ones are added (MC1's choices are
    mostly among MC2's, so one cache across both halves the work).

    Returns ``{"mc1": ..., "mc2": ..., "n": number of items}``.
    """
    if not items:
        raise DataError("mc_scores needs at least one item.")
    examples: list[Example] = []
    for item in items:
        if not item.choices or len(item.choices) != len(item.labels):
            raise DataError(
                f"item {item.question[:60]!r} needs as many labels as choices, and at least one choice."
            )
        examples.extend(Example(prompt=item.question, response=c) for c in item.choices)
    known = {} if cache is None else cache
    todo: dict[tuple[str, str], Example] = {}
    for ex in examples:
        key = (ex.prompt, ex.response)
        if key not in known and key not in todo:
            todo[key] = ex
    # All new choices of all items are scored together, so batches stay full.
    if todo:
        per_token = token_logprobs(model, tokenizer, list(todo.values()), template, max_length, batch_size, add_eos=False)
        for key, lp in zip(todo, per_token):
            known[key] = float(lp.double().sum())
    totals = [known[(ex.prompt, ex.response)] for ex in examples]

    mc1_hits = 0
    mc2_sum = 0.0
    pos = 0
    for item in items:
        scores = torch.tensor(totals[pos : pos + len(item.choices)], dtype=torch.float64)
        pos += len(item.choices)
        truth = torch.tensor(item.labels, dtype=torch.bool)
        # A hit only when the true choice scores strictly above every false one
        # (the official `>`): a tie is not a hit, whichever choice argmax lists first.
        mc1_hits += int(bool(scores[truth].max() > scores[~truth].max()))
        mc2_sum += float(scores.softmax(dim=0)[truth].sum())
    return {"mc1": mc1_hits / len(items), "mc2": mc2_sum / len(items), "n": len(items)}
