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


# What training does with an example longer than max_length (data.truncation):
# - answer_first: cut the answer's tail; an example whose prompt alone does not fit is dropped
#   (a prompt is never cut to a fragment);
# - drop: drop every example that does not fit;
# - error: refuse the data set.
# "prompt_start" (cut the prompt from its start, keep the answer) is what scoring code uses.
TRUNCATION_POLICIES: tuple[str, ...] = ("answer_first", "drop", "error")


@dataclass
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX on every prompt token
    answer_cut: int = 0  # answer tokens cut off to fit max_length

    def __len__(self) -> int:
        return len(self.input_ids)


class ExampleTooLong(DataError):
    """An example that does not fit max_length under the truncation policy (it is dropped or refused)."""


def end_token_id(tokenizer) -> int | None:
    return tokenizer.eos_token_id


def tokenize_example(
    example: Example,
    tokenizer,
    template: str,
    max_length: int,
    add_eos: bool = True,
    truncation: str = "prompt_start",
) -> TokenizedExample:
    """Tokenise one example; every prompt token is masked out of the labels.

    Prompt and response are tokenised separately and concatenated, so the mask
    boundary is exact whatever the tokenizer merges. When the pair is longer than
    ``max_length``, ``truncation`` decides (see :data:`TRUNCATION_POLICIES`):
    ``answer_first`` cuts the response's tail and raises :class:`ExampleTooLong`
    when the prompt itself leaves no room for one response token; ``drop`` and
    ``error`` raise it for any example that does not fit. ``prompt_start`` (the
    default, for scoring) cuts the prompt first, from its start (its end holds
    the answer marker the model needs), keeping a leading BOS; if the response
    alone is still too long, its tail is cut (the end-of-sequence token goes with it).
    """
    if truncation not in (*TRUNCATION_POLICIES, "prompt_start"):
        raise DataError(f"unknown truncation {truncation!r}; choose one of {', '.join(TRUNCATION_POLICIES)}.")
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
    answer_cut = 0
    if total > max_length:
        overflow = total - max_length
        if truncation in ("drop", "error"):
            raise ExampleTooLong(f"example {example.prompt[:60]!r} has {total} tokens, more than max_length={max_length}.")
        if truncation == "answer_first":
            if example.response and len(prompt_ids) + 1 > max_length:
                raise ExampleTooLong(f"the prompt of example {example.prompt[:60]!r} alone has {len(prompt_ids)} tokens, "
                                     f"which leaves no room for its answer in max_length={max_length}.")
            answer_cut = overflow
            response_ids = response_ids[: len(response_ids) - overflow]
        else:
            bos = tokenizer.bos_token_id
            keep_head = 1 if prompt_ids and bos is not None and prompt_ids[0] == bos else 0
            cuttable = max(0, len(prompt_ids) - keep_head - 1)  # keep at least one real prompt token
            cut = min(overflow, cuttable)
            if cut:
                prompt_ids = prompt_ids[:keep_head] + prompt_ids[keep_head + cut :]
                overflow -= cut
            if overflow:
                answer_cut = overflow
                response_ids = response_ids[: len(response_ids) - overflow]
    if example.response and not response_ids:
        raise DataError(f"max_length={max_length} leaves no room for the response of example {example.prompt[:60]!r}.")

    input_ids = prompt_ids + response_ids
    labels = [IGNORE_INDEX] * len(prompt_ids) + list(response_ids)
    return TokenizedExample(input_ids=input_ids, labels=labels, answer_cut=answer_cut)


def tokenize_examples(
    examples: Sequence[Example], tokenizer, template: str, max_length: int, add_eos: bool = True
) -> list[TokenizedExample]:
    return [tokenize_example(e, tokenizer, template, max_length, add_eos) for e in examples]


@dataclass
class TruncationReport:
    """How many examples of a set were cut or dropped to fit max_length."""

    policy: str
    max_length: int
    examples: int = 0
    truncated: int = 0  # kept with the answer's tail cut
    dropped: int = 0

    def as_dict(self) -> dict:
        return {"policy": self.policy, "max_length": self.max_length, "examples": self.examples,
                "truncated": self.truncated, "dropped": self.dropped}

    def sentence(self, what: str) -> str | None:
        """A warning line when anything was cut or dropped, else None."""
        if not (self.truncated or self.dropped):
            return None
        parts = []
        if self.dropped:
            parts.append(f"{self.dropped} dropped (their prompt does not fit)" if self.policy == "answer_first"
                         else f"{self.dropped} dropped")
        if self.truncated:
            parts.append(f"{self.truncated} kept with the end of their answer cut")
        return (f"warning: {what}: {self.truncated + self.dropped} of {self.examples} examples are longer than "
                f"max_length={self.max_length}: {', '.join(parts)} (data.truncation={self.policy}).")


def tokenize_set(
    examples: Sequence[Example], tokenizer, template: str, max_length: int, *, truncation: str = "answer_first",
    add_eos: bool = True, what: str = "data", strict: bool = True,
) -> tuple[list[Example], list[TokenizedExample], TruncationReport]:
    """Tokenise a training set under a truncation policy: (kept examples, their tokens, the counts).

    A prompt is never cut. With ``error`` an example that does not fit is a
    DataError naming how many do not, and the first of them (``strict=False``:
    only counted, as ``data preview`` does).
    """
    if truncation not in TRUNCATION_POLICIES:
        raise DataError(f"unknown truncation {truncation!r}; choose one of {', '.join(TRUNCATION_POLICIES)}.")
    report = TruncationReport(truncation, max_length, examples=len(examples))
    kept: list[Example] = []
    toks: list[TokenizedExample] = []
    first_error: str | None = None
    for ex in examples:
        try:
            t = tokenize_example(ex, tokenizer, template, max_length, add_eos, truncation=truncation)
        except ExampleTooLong as exc:
            report.dropped += 1
            first_error = first_error or str(exc)
            continue
        report.truncated += int(t.answer_cut > 0)
        kept.append(ex)
        toks.append(t)
    if not strict:
        return kept, toks, report
    if truncation == "error" and report.dropped:
        raise DataError(f"{what}: {report.dropped} of {report.examples} examples are longer than max_length={max_length} "
                        f"(first: {first_error.rstrip('.')}); raise data.max_length, or set data.truncation to "
                        "answer_first or drop.")
    if examples and not kept:
        raise DataError(f"{what}: none of its {report.examples} examples fits max_length={max_length} "
                        f"({first_error}); raise data.max_length.")
    return kept, toks, report


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
