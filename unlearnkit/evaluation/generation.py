"""Batched text generation with the training template.

Prompts are rendered with :func:`unlearnkit.data.templates.render_prompt`, i.e.
exactly as the model saw them in training, and tokenised the same way as
:func:`unlearnkit.data.tokenize.tokenize_example` tokenises prompts. Batches are
left-padded (a decoder continues from the last column, so every prompt must end
there) and sorted by length so that a batch pads little; the answers come back in
the caller's order.
"""

from __future__ import annotations

from typing import Sequence

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig

from unlearnkit.console import show_progress
from unlearnkit.data.templates import prompt_adds_special_tokens, render_prompt
from unlearnkit.data.tokenize import TokenizedExample, collate, pad_id_of
from unlearnkit.errors import DataError


def _model_device(model) -> torch.device:
    try:
        return model.device
    except AttributeError:  # plain nn.Module
        return next(model.parameters()).device


def _eos_ids(model, tokenizer) -> list[int]:
    """Every token that ends an answer: the tokenizer's EOS and the model's own.

    Chat checkpoints often list extra stop tokens (e.g. an end-of-turn token) in
    their generation config; setting ``eos_token_id`` ourselves would drop them,
    so both sources are merged.
    """
    ids: list[int] = []
    sources = [tokenizer.eos_token_id, getattr(getattr(model, "generation_config", None), "eos_token_id", None)]
    for src in sources:
        for i in src if isinstance(src, (list, tuple)) else [src]:
            if i is not None and int(i) not in ids:
                ids.append(int(i))
    return ids


def _generation_config(
    max_new_tokens: int, do_sample: bool, temperature: float, top_p: float, pad_id: int, eos: list[int]
) -> GenerationConfig:
    """An explicit config, so a checkpoint's own sampling defaults never leak in.

    Greedy decoding gets the library's neutral sampling values (they are unused,
    and setting them avoids "flag ignored" warnings from a checkpoint that ships,
    say, ``temperature=0.6``). Sampling is controlled by ``temperature`` and
    ``top_p`` alone: ``top_k=0`` switches off the top-k filter that transformers
    would otherwise apply by default.
    """
    if do_sample:
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {temperature}")
        sampling = {"temperature": float(temperature), "top_p": float(top_p), "top_k": 0}
    else:
        sampling = {"temperature": 1.0, "top_p": 1.0, "top_k": 50}
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        num_beams=1,
        use_cache=True,
        pad_token_id=pad_id,
        eos_token_id=eos or None,
        **sampling,
    )


def _cut_at_eos(tokens: list[int], eos: set[int]) -> list[int]:
    """Drop the first end-of-sequence token and everything after it (the padding
    ``generate`` appends once a row is done is not always a special token)."""
    for k, t in enumerate(tokens):
        if t in eos:
            return tokens[:k]
    return tokens


def encode_prompts(tokenizer, prompts: Sequence[str], template: str) -> list[list[int]]:
    """Each prompt rendered with the template and tokenised as training tokenises prompts."""
    add_special = prompt_adds_special_tokens(template)
    encoded: list[list[int]] = []
    for p in prompts:
        text = render_prompt(template, tokenizer, p)
        ids = list(tokenizer(text, add_special_tokens=add_special)["input_ids"]) if text or add_special else []
        if not ids:
            raise DataError(f"prompt {p[:60]!r} renders to no token; generation needs at least one.")
        encoded.append(ids)
    return encoded


def generate_ids(
    model,
    tokenizer,
    encoded: Sequence[Sequence[int]],
    max_new_tokens: int | Sequence[int],
    batch_size: int = 8,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    progress: bool = False,
    desc: str = "generating",
) -> list[list[int]]:
    """The generation core: the new token ids of each encoded input, cut at the first end-of-sequence token.

    Every generating caller (answers, memorisation continuations, generative
    judges) runs through here. ``max_new_tokens`` is one budget or one per
    input; inputs are batched by budget, then length, longest first (similar
    lengths share a batch, and running out of memory happens on the first batch
    rather than after most of the work), left-padded, and come back in input
    order. With ``do_sample`` the outputs are reproducible for a ``seed`` (and
    the same inputs, batch size and device): the random state is seeded inside
    a forked RNG, so the caller's global state is left untouched. Runs under
    ``no_grad`` in eval mode and restores the model's mode.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    budgets = [max_new_tokens] * len(encoded) if isinstance(max_new_tokens, int) else list(max_new_tokens)
    if len(budgets) != len(encoded):
        raise ValueError(f"need one max_new_tokens per input, got {len(budgets)} for {len(encoded)}")
    pad_id = pad_id_of(tokenizer)
    eos = _eos_ids(model, tokenizer)
    eos_set = set(eos)
    device = _model_device(model)
    order = sorted(range(len(encoded)), key=lambda i: (-budgets[i], -len(encoded[i])))
    batches = [order[k : k + batch_size] for k in range(0, len(order), batch_size)]
    out: list[list[int]] = [[] for _ in encoded]
    # fork_rng restores the global RNG state on exit, so seeding here does not
    # perturb a training run that generates mid-way.
    rng_devices: list[int] = []
    if device.type == "cuda":
        rng_devices = [device.index if device.index is not None else torch.cuda.current_device()]
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=rng_devices, enabled=do_sample), torch.no_grad():
            if do_sample:
                torch.manual_seed(seed)
            for idx in tqdm(batches, desc=desc, disable=not show_progress(progress), unit="batch"):
                budget = max(budgets[i] for i in idx)
                if budget < 1:
                    continue
                config = _generation_config(budget, do_sample, temperature, top_p, pad_id, eos)
                # collate pads on the left here; the tokenizer's own padding side
                # is never touched, so no state leaks to the caller.
                batch = collate([TokenizedExample(input_ids=list(encoded[i]), labels=list(encoded[i])) for i in idx],
                                pad_id, padding_side="left")
                input_ids = batch["input_ids"].to(device)
                gen = model.generate(input_ids=input_ids, attention_mask=batch["attention_mask"].to(device),
                                     generation_config=config)
                for i, toks in zip(idx, gen[:, input_ids.shape[1] :].tolist()):
                    out[i] = _cut_at_eos(toks[: budgets[i]], eos_set)
    finally:
        model.train(was_training)
    return out


def generate(model, tokenizer, prompts: list[str], template: str = "chat", max_new_tokens: int = 64,
             batch_size: int = 8, progress: bool = True, desc: str = "generating", **sampling) -> list[str]:
    """Generate one answer per prompt; answers are returned in the order of ``prompts``.

    Greedy by default; ``sampling`` (``do_sample``, ``temperature``, ``top_p``,
    ``seed``) as :func:`generate_ids` takes them, reproducible for a seed. Each
    answer is the generated continuation only, cut at the first end-of-sequence
    token, decoded without special tokens and stripped. The model's train/eval
    mode is restored afterwards.
    """
    if not prompts:
        return []
    ids = generate_ids(model, tokenizer, encode_prompts(tokenizer, prompts, template), max_new_tokens, batch_size,
                       progress=progress, desc=desc, **sampling)
    return [tokenizer.decode(toks, skip_special_tokens=True).strip() for toks in ids]
