"""Shared loss maths: answer-token log-probabilities, NLL and KL.

Every loss here is computed over ANSWER tokens only: positions whose label is
not IGNORE_INDEX. The prompt and the padding never contribute. Logits are asked
from the model only at the positions that predict an answer token (the
``logits_to_keep`` argument of transformers' causal LMs), so the vocabulary
projection is not paid for the prompt.

Normalisation: a mean over answer tokens divides by ``denominator``. The
training loop passes the answer-token count of the whole optimizer step (every
micro-batch of every process) divided by ``micro-batches x processes``: each
micro-batch's loss is divided by the number of micro-batches before backward
and the processes' gradients are averaged, so the accumulated gradient is the
gradient of one token mean over the step (exact, whatever the split of lengths).
Such a denominator may be below one (one answer token over four parts); only a
zero one (no token at all: the sum is zero too) is replaced by one.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from unlearnkit.data.tokenize import IGNORE_INDEX


@dataclass
class AnswerLogits:
    logits: torch.Tensor  # [B, K, V] float32, at the positions that predict answer tokens
    targets: torch.Tensor  # [B, K] the answer token each position predicts (0 where masked)
    mask: torch.Tensor  # [B, K] bool, True on real answer tokens


def answer_columns(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Columns of the sequence whose logits predict an answer token in some row.

    Position t predicts token t+1, so column t is needed when labels[:, t+1] is
    an answer token. Returns (columns, targets [B, K], mask [B, K]).
    """
    following = labels[:, 1:]
    needed = following != IGNORE_INDEX
    columns = needed.any(dim=0).nonzero(as_tuple=False).squeeze(1)
    targets = following[:, columns]
    mask = needed[:, columns]
    return columns, targets.masked_fill(~mask, 0), mask


def _core_model(model):
    """The transformers model under DDP and PEFT wrappers."""
    if hasattr(model, "module"):
        model = model.module
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


def _supports_logits_to_keep(model) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(type(_core_model(model)).forward).parameters
    except (TypeError, ValueError):
        return False


_KEEP_CACHE: dict[type, bool] = {}


def answer_logits(model, batch: dict[str, torch.Tensor]) -> AnswerLogits:
    """Run the model and return float32 logits only where answer tokens are predicted."""
    columns, targets, mask = answer_columns(batch["labels"])
    kind = type(_core_model(model))
    if kind not in _KEEP_CACHE:
        _KEEP_CACHE[kind] = _supports_logits_to_keep(model)
    kwargs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    if _KEEP_CACHE[kind]:
        logits = model(**kwargs, logits_to_keep=columns).logits
    else:
        logits = model(**kwargs).logits[:, columns]
    return AnswerLogits(logits=logits.float(), targets=targets, mask=mask)


def _safe_denominator(denom) -> torch.Tensor:
    d = torch.as_tensor(denom, dtype=torch.float32)
    return torch.where(d > 0, d, torch.ones_like(d))


def token_nll(al: AnswerLogits) -> torch.Tensor:
    """Negative log-likelihood of each answer token, [B, K], zero where masked."""
    nll = F.cross_entropy(al.logits.transpose(1, 2), al.targets, reduction="none")
    return nll * al.mask


def mean_nll(al: AnswerLogits, denominator: torch.Tensor | float | None = None) -> torch.Tensor:
    """Mean token cross-entropy over the batch's answer tokens."""
    denom = al.mask.sum() if denominator is None else denominator
    return token_nll(al).sum() / _safe_denominator(denom)


def kl_reference_current(
    reference_logits: torch.Tensor,
    current_logits: torch.Tensor,
    mask: torch.Tensor,
    denominator: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """KL(reference || current) per answer token, averaged over real tokens only.

    KL(p || q) = sum_v p_v (log p_v - log q_v), p = reference, q = current.
    """
    ref_logp = F.log_softmax(reference_logits.float(), dim=-1)
    cur_logp = F.log_softmax(current_logits.float(), dim=-1)
    per_token = (ref_logp.exp() * (ref_logp - cur_logp)).sum(-1)
    denom = mask.sum() if denominator is None else denominator
    return (per_token * mask).sum() / _safe_denominator(denom)


def sequence_logprob(al: AnswerLogits) -> torch.Tensor:
    """Sum of the answer tokens' log-probabilities of each sequence, [B] (log p(y|x))."""
    return -token_nll(al).sum(dim=1)


def sequence_lengths(al: AnswerLogits) -> torch.Tensor:
    """Number of answer tokens of each sequence, [B] (float32)."""
    return al.mask.sum(dim=1).to(torch.float32)


def has_answer(labels: torch.Tensor) -> torch.Tensor:
    """[B] bool: the rows that have at least one answer token (a masked filler row has none)."""
    return (labels[:, 1:] != IGNORE_INDEX).any(dim=1)
