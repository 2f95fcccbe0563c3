"""Relearning as an attack: finetune a copy of the unlearned model for a few steps.

A handful of gradient steps on a little of the forgotten data, or even on
unrelated text, brings most of it back when the unlearning only hid it (Deeb &
Roger 2024, arXiv 2410.08827; Lucki et al. 2024, arXiv 2409.18025); whether a
model resists depends on the attacker's learning rate (Qi et al. 2024, arXiv
2412.07097), so the attack is swept over several.

The loop is plain next-token cross-entropy on the answer tokens, with the
training code's tokenisation (prompt tokens masked, :mod:`unlearnkit.data.tokenize`)
and loss (:func:`unlearnkit.losses.mean_nll`): AdamW, a constant learning rate,
gradient norm clipped at 1. The forget metric is measured after every step
count in ``steps`` along ONE run (with a constant rate, the first 5 steps of a
25-step run are a 5-step run). The attack works on a copy: the model given is
never changed.
"""

from __future__ import annotations

import copy
import random
from typing import Callable, Sequence

import torch

from unlearnkit.data.tokenize import BatchStream, collate, pad_id_of, tokenize_set
from unlearnkit.data.types import Example
from unlearnkit.errors import ConfigError
from unlearnkit.losses import answer_logits, mean_nll


def attacker_copy(model, mode: str, lora_r: int = 8, lora_alpha: float = 16.0):
    """A trainable copy of ``model``: every weight (``full``) or a fresh LoRA adapter on all linear layers (``lora``)."""
    from unlearnkit.models import LoraConfig, apply_lora, is_peft

    if mode not in ("full", "lora"):
        raise ConfigError(f"relearning mode must be 'full' or 'lora', not {mode!r}.")
    twin = copy.deepcopy(model)
    if is_peft(twin):  # an unlearned LoRA model: attack its merged weights
        twin = twin.merge_and_unload()
    if mode == "lora":
        twin = apply_lora(twin, LoraConfig(enabled=True, r=lora_r, alpha=lora_alpha, dropout=0.0,
                                           target_modules="all-linear"))
    else:
        for p in twin.parameters():
            p.requires_grad_(True)
    return twin


def relearn(model, tokenizer, examples: Sequence[Example], *, template: str, steps: Sequence[int], lr: float,
            measure: Callable[[object], dict], mode: str = "full", batch_size: int = 4, max_length: int = 512,
            seed: int = 0, progress: bool = True, desc: str = "relearning") -> list[dict]:
    """Finetune a copy of ``model`` on ``examples`` and call ``measure(copy)`` after each step count.

    Returns one ``{"step", "loss", **measure(copy)}`` per entry of ``steps``
    (sorted), ``loss`` being the mean training loss of the steps since the
    previous measurement.
    """
    from tqdm.auto import tqdm

    steps = sorted({int(s) for s in steps})
    if not steps or steps[0] < 1:
        raise ConfigError(f"relearning steps must be positive whole numbers, got {list(steps)}.")
    if not examples:
        raise ConfigError("relearning needs at least one example to train on.")
    torch.manual_seed(seed)
    random.seed(seed)
    twin = attacker_copy(model, mode)
    _, toks, _ = tokenize_set(list(examples), tokenizer, template, max_length, what="relearning data")
    stream = BatchStream([len(t) for t in toks], batch_size, seed)
    params = [p for p in twin.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    device = next(twin.parameters()).device
    pad = pad_id_of(tokenizer)
    results: list[dict] = []
    losses: list[float] = []
    twin.train()
    try:
        for step in tqdm(range(1, steps[-1] + 1), desc=desc, disable=not progress, unit="step"):
            batch = collate([toks[i] for i in next(stream)], pad)
            loss = mean_nll(answer_logits(twin, {k: v.to(device) for k, v in batch.items()}))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimiser.step()
            losses.append(float(loss.detach()))
            if step in steps:
                twin.eval()
                results.append({"step": step, "loss": sum(losses) / len(losses), **measure(twin)})
                losses = []
                twin.train()
    finally:
        del twin, optimiser
    return results


def benign_slice(texts: Sequence[Example], tokenizer, target_tokens: int) -> list[Example]:
    """Benign examples, in order, until their tokens reach ``target_tokens`` (the attack data's size)."""
    out: list[Example] = []
    total = 0
    for ex in texts:
        if total >= target_tokens:
            break
        out.append(ex)
        total += len(tokenizer(ex.prompt + ex.response, add_special_tokens=False)["input_ids"])
    if total < target_tokens:
        raise ConfigError(f"the benign text holds {total} tokens, fewer than the {target_tokens} of the relearning "
                          "data it must match; give a larger benign source.")
    return out


def example_tokens(examples: Sequence[Example], tokenizer) -> int:
    """Tokens of prompt + response over the examples (the size a benign slice is matched to)."""
    return sum(len(tokenizer(e.prompt + " " + e.response, add_special_tokens=False)["input_ids"]) for e in examples)
