"""The batches of a training step, built by kind.

A method names the kinds its loss reads (``Method.needs``); the loop asks
:class:`StepBatches` for exactly those. The kinds:

- ``forget``: forget examples, from a length-bucketed, reshuffled stream;
- ``retain``: retain examples, from their own stream;
- ``random``: each forget prompt of the step paired with ``num_random`` answers
  that are not its own, from the method's pool (random mismatch);
- ``alternative``: each forget prompt paired with one alternative answer
  (``data.alternative``): its own answer there when the set has the prompt,
  else a seeded draw from the whole set.

Draws depend on the seed, the step, the question and how often it came up in
the step, never on how the step is split into micro-batches or processes.
"""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Sequence

import torch

from unlearnkit.data.audit import prompt_key
from unlearnkit.data.tokenize import IGNORE_INDEX, BatchStream, TokenizedExample, collate, tokenize_example
from unlearnkit.data.types import Example
from unlearnkit.losses import has_answer

KINDS = ("forget", "retain", "random", "alternative")


def draw_other(own: str, pool: Sequence[str], rng: random.Random) -> str:
    """An answer drawn from ``pool`` that is not ``own`` (up to 16 tries, as a pool of one repeated answer allows)."""
    answer = pool[rng.randrange(len(pool))]
    for _attempt in range(15):
        if answer != own:
            break
        answer = pool[rng.randrange(len(pool))]
    return answer


def mismatched_examples(questions: Sequence[Example], pool: Sequence[str], k: int, rng_for) -> list[Example]:
    """Each question repeated ``k`` times, each time with an answer that is not its own.

    ``rng_for(index, question)`` gives the generator of one question's draws.
    """
    rows = []
    for i, q in enumerate(questions):
        rng = rng_for(i, q)
        rows.extend(Example(q.prompt, draw_other(q.response, pool, rng)) for _ in range(k))
    return rows


def without_final_eos(item: TokenizedExample, eos_id: int | None) -> TokenizedExample:
    """The example with its closing EOS kept as input but masked out of the labels."""
    if eos_id is None or not item.labels or item.labels[-1] != eos_id:
        return item
    return TokenizedExample(item.input_ids, [*item.labels[:-1], IGNORE_INDEX])


class StepBatches:
    """Builds every kind of batch of a step, on the device, for this process's share."""

    def __init__(self, cfg, data, forget_tok: list[TokenizedExample], retain_tok: list[TokenizedExample],
                 tokenizer, pad_id: int, acc, method):
        self.cfg, self.data, self.tokenizer, self.pad_id, self.acc, self.method = cfg, data, tokenizer, pad_id, acc, method
        self.forget_tok, self.retain_tok = forget_tok, retain_tok
        global_batch = cfg.train.batch_size * acc.num_processes
        self.forget_stream = BatchStream([len(t) for t in forget_tok], global_batch, cfg.seed)
        self.retain_stream = BatchStream([len(t) for t in retain_tok], global_batch, cfg.seed + 1) if retain_tok else None
        self._seen: dict[tuple[str, int], int] = {}
        self._by_prompt: dict[str, list[str]] = defaultdict(list)
        for e in data.alternative:
            key = prompt_key(e)
            if key:
                self._by_prompt[key].append(e.response)
        self._alternative_pool = [e.response for e in data.alternative]

    # ------------------------------------------------------------- plumbing
    def local(self, indices: list[int]) -> list[int]:
        """This process's share of a global batch."""
        return indices[self.acc.process_index :: self.acc.num_processes]

    def collate(self, items: list[TokenizedExample], filler: TokenizedExample | None = None) -> dict:
        """A padded batch on the device.

        A process whose share of a global batch is empty (the last, short batch
        of an epoch: 5 examples, batch 2, 2 processes) gets ``filler`` with every
        label masked: it adds no answer token and no gradient, but it runs the
        same forward and backward passes, so the gradient all-reduce still meets
        every process.
        """
        if not items and filler is not None:
            items = [TokenizedExample(list(filler.input_ids), [IGNORE_INDEX] * len(filler.input_ids))]
        return {k: v.to(self.acc.device) for k, v in collate(items, self.pad_id).items()}

    def _tokenize_pairs(self, examples: list[Example]) -> dict:
        # The forget prompt fits (the set was tokenised under data.truncation); a long drawn answer loses its tail.
        cfg = self.cfg

        def tok(e):
            return tokenize_example(e, self.tokenizer, cfg.data.template, cfg.data.max_length, truncation="answer_first")

        local = [tok(examples[j]) for j in self.local(list(range(len(examples))))]
        return self.collate(local, filler=None if local else tok(examples[0]))

    def _rng(self, kind: str, step: int, i: int) -> random.Random:
        occurrence = self._seen.get((kind, i), 0)
        self._seen[(kind, i)] = occurrence + 1
        suffix = "" if kind == "random" else f":{kind}"
        return random.Random(f"{self.cfg.seed}:random:{step}:{i}:{occurrence}{suffix}")

    # ---------------------------------------------------------------- kinds
    def random(self, forget_idx: list[int], step: int) -> dict:
        """Forget questions, each paired with ``num_random`` answers that are not its own."""
        questions = [self.data.forget[i] for i in forget_idx]
        rows = mismatched_examples(questions, self.data.random_pool, self.method.num_random,
                                   lambda j, q: self._rng("random", step, forget_idx[j]))
        return self._tokenize_pairs(rows)

    def alternative(self, forget_idx: list[int], step: int) -> dict:
        """Each forget question with one alternative answer (its own in data.alternative, else a draw)."""
        rows = []
        for i in forget_idx:
            q = self.data.forget[i]
            rng = self._rng("alternative", step, i)
            own = self._by_prompt.get(prompt_key(q) or "")
            choices = own or self._alternative_pool
            rows.append(Example(q.prompt, choices[rng.randrange(len(choices))]))
        return self._tokenize_pairs(rows)

    def step(self, step: int, micro: int) -> dict[str, dict]:
        """The batches the method reads, for micro-batch ``micro`` of optimizer step ``step``."""
        if micro == 0:
            self._seen = {}
        needs = self.method.batch_needs
        forget_idx = next(self.forget_stream)
        batches = {}
        if "forget" in needs:
            items = [self.forget_tok[i] for i in self.local(forget_idx)]
            if not self.method.forget_eos_is_target:
                items = [without_final_eos(t, self.tokenizer.eos_token_id) for t in items]
            batches["forget"] = self.collate(items, filler=self.forget_tok[forget_idx[0]])
        if "retain" in needs:
            retain_idx = next(self.retain_stream)
            batches["retain"] = self.collate([self.retain_tok[i] for i in self.local(retain_idx)],
                                             filler=self.retain_tok[retain_idx[0]])
        if "random" in needs:
            batches["random"] = self.random(forget_idx, step)
        if "alternative" in needs:
            batches["alternative"] = self.alternative(forget_idx, step)
        return batches

    # ---------------------------------------------------------- normalisers
    def denominator(self, mask: torch.Tensor) -> torch.Tensor:
        """For batches without an attached normaliser (not built by the loop)."""
        count = mask.sum().to(torch.float32)
        if self.acc.num_processes == 1:
            return count
        total = self.acc.reduce(count.detach().clone(), reduction="sum")
        return total / self.acc.num_processes

    def attach_normalisers(self, micro_batches: list[dict[str, dict]]) -> None:
        """Give each batch the normalisers of its kind over the whole optimizer step.

        The answer tokens (and the sequences with an answer) of each kind are
        counted over every micro-batch and every process; each part divides by
        that count over ``micro-batches x processes`` (see :mod:`unlearnkit.losses`).
        """
        kinds = sorted({k for batches in micro_batches for k in batches})
        if not kinds:
            return
        tokens = [float(sum(int((b[k]["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in micro_batches)) for k in kinds]
        seqs = [float(sum(int(has_answer(b[k]["labels"]).sum()) for b in micro_batches)) for k in kinds]
        world = self.acc.num_processes
        local = torch.tensor(tokens + seqs, dtype=torch.float64 if self.acc.device.type == "cpu" else torch.float32,
                             device=self.acc.device)
        total = self.acc.reduce(local, reduction="sum") if world > 1 else local
        parts = len(micro_batches) * world
        for batches in micro_batches:
            for j, k in enumerate(kinds):
                batches[k]["normaliser"] = (total[j] / parts).to(torch.float32)
                batches[k]["sequence_normaliser"] = (total[len(kinds) + j] / parts).to(torch.float32)

    # ---------------------------------------------------------- checkpoints
    def state(self) -> dict:
        return {"forget_stream": self.forget_stream.state(),
                "retain_stream": self.retain_stream.state() if self.retain_stream else None}

    def load_state(self, state: dict) -> None:
        self.forget_stream.load_state(state["forget_stream"])
        if self.retain_stream and state.get("retain_stream"):
            self.retain_stream.load_state(state["retain_stream"])
