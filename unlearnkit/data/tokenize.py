"""Tokenisation with prompt masking, dynamic padding and length buckets."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

from unlearnkit.data.templates import prompt_adds_special_tokens, render_prompt, render_response
from unlearnkit.data.types import Example
from unlearnkit.errors import DataError

IGNORE_INDEX = -100


@dataclass
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX on every prompt token

    def __len__(self) -> int:
        return len(self.input_ids)


def end_token_id(tokenizer) -> int | None:
    return tokenizer.eos_token_id


def tokenize_example(
    example: Example,
    tokenizer,
    template: str,
    max_length: int,
    add_eos: bool = True,
) -> TokenizedExample:
    """Tokenise one example; every prompt token is masked out of the labels.

    Prompt and response are tokenised separately and concatenated, so the mask
    boundary is exact whatever the tokenizer merges. When the pair is longer than
    ``max_length``, the prompt is cut first, from its start (its end holds the
    answer marker the model needs), keeping a leading BOS; if the response alone
    is still too long, its tail is cut (the end-of-sequence token goes with it).
    """
    if not example.prompt:
        # A text chunk (no prompt) is raw text whatever the run's template: a
        # question/answer frame around a book passage would teach the frame.
        template = "raw"
    prompt_text = render_prompt(template, tokenizer, example.prompt)
    response_text = render_response(template, example.response)
    prompt_ids: list[int] = (
        tokenizer(prompt_text, add_special_tokens=prompt_adds_special_tokens(template))["input_ids"]
        if prompt_text or prompt_adds_special_tokens(template)
        else []
    )
    response_ids: list[int] = tokenizer(response_text, add_special_tokens=False)["input_ids"] if response_text else []
    eos = end_token_id(tokenizer)
    if add_eos and example.response and eos is not None:
        response_ids = response_ids + [eos]

    total = len(prompt_ids) + len(response_ids)
    if total > max_length:
        overflow = total - max_length
        bos = tokenizer.bos_token_id
        keep_head = 1 if prompt_ids and bos is not None and prompt_ids[0] == bos else 0
        cuttable = max(0, len(prompt_ids) - keep_head - 1)  # keep at least one real prompt token
        cut = min(overflow, cuttable)
        if cut:
            prompt_ids = prompt_ids[:keep_head] + prompt_ids[keep_head + cut :]
            overflow -= cut
        if overflow:
            response_ids = response_ids[: len(response_ids) - overflow]
    if example.response and not response_ids:
        raise DataError(f"max_length={max_length} leaves no room for the response of example {example.prompt[:60]!r}.")

    input_ids = prompt_ids + response_ids
    labels = [IGNORE_INDEX] * len(prompt_ids) + list(response_ids)
    return TokenizedExample(input_ids=input_ids, labels=labels)


def tokenize_examples(
    examples: Sequence[Example], tokenizer, template: str, max_length: int, add_eos: bool = True
) -> list[TokenizedExample]:
    return [tokenize_example(e, tokenizer, template, max_length, add_eos) for e in examples]


def pad_id_of(tokenizer) -> int:
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    if tokenizer.eos_token_id is not None:
        return tokenizer.eos_token_id
    return 0


def collate(
    items: Sequence[TokenizedExample], pad_token_id: int, padding_side: str = "right"
) -> dict[str, torch.Tensor]:
    """Pad a batch to its own longest member (never to a fixed maximum)."""
    if not items:
        raise DataError("cannot build an empty batch.")
    width = max(len(it) for it in items)
    ids = torch.full((len(items), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, it in enumerate(items):
        n = len(it)
        sl = slice(0, n) if padding_side == "right" else slice(width - n, width)
        ids[row, sl] = torch.tensor(it.input_ids, dtype=torch.long)
        labels[row, sl] = torch.tensor(it.labels, dtype=torch.long)
        mask[row, sl] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def bucketed_batches(
    lengths: Sequence[int], batch_size: int, seed: int, epoch: int, bucket_batches: int = 16, shuffle: bool = True
) -> list[list[int]]:
    """Index batches for one epoch: shuffled, then length-sorted within buckets.

    Every index appears exactly once per epoch. The order depends only on
    ``(seed, epoch)``, so a resumed run sees the same batches. Within a bucket of
    ``bucket_batches`` batches the examples are sorted by length, so a batch pads
    little; the batches are then shuffled so that lengths do not drift over the
    epoch.
    """
    n = len(lengths)
    order = list(range(n))
    rng = random.Random(f"{seed}:{epoch}")
    if shuffle:
        rng.shuffle(order)
    bucket = max(1, batch_size * bucket_batches)
    batches: list[list[int]] = []
    for start in range(0, n, bucket):
        chunk = sorted(order[start : start + bucket], key=lambda i: lengths[i])
        batches.extend(chunk[k : k + batch_size] for k in range(0, len(chunk), batch_size))
    if shuffle:
        rng.shuffle(batches)
    return batches


class BatchStream:
    """An endless, resumable stream of index batches over a data set.

    Epoch after epoch, each one reshuffled; ``state()``/``load_state()`` give the
    position so that a resumed run continues with the very next batch.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, shuffle: bool = True):
        if not lengths:
            raise DataError("a training stream needs at least one example.")
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.position = 0
        self._batches = bucketed_batches(self.lengths, batch_size, seed, 0, shuffle=shuffle)

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        return self

    def __next__(self) -> list[int]:
        if self.position >= len(self._batches):
            self.epoch += 1
            self.position = 0
            self._batches = bucketed_batches(self.lengths, self.batch_size, self.seed, self.epoch, shuffle=self.shuffle)
        batch = self._batches[self.position]
        self.position += 1
        return batch

    def state(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state(self, state: dict) -> None:
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self._batches = bucketed_batches(self.lengths, self.batch_size, self.seed, self.epoch, shuffle=self.shuffle)
