"""Templates and tokenisation: the prompt is masked exactly, padding is dynamic."""

from __future__ import annotations

import pytest

from unlearnkit.data.templates import render_prompt
from unlearnkit.data.tokenize import (
    IGNORE_INDEX,
    BatchStream,
    bucketed_batches,
    collate,
    tokenize_example,
)
from unlearnkit.data.types import Example

EXAMPLES = [
    Example("How do I bake bread?", "Mix flour, water and yeast, then bake it."),
    Example("What is the capital of France?", "Paris."),
    Example("Tell me a story about a cat", "Once upon a time there was a cat with a hat."),
]


@pytest.mark.parametrize("template", ["qa", "chat", "raw"])
def test_labels_decode_to_exactly_the_response(smol_tokenizer, template):
    tok = smol_tokenizer
    for ex in EXAMPLES:
        t = tokenize_example(ex, tok, template, max_length=512)
        labelled = [i for i, lab in zip(t.input_ids, t.labels) if lab != IGNORE_INDEX]
        # Every labelled token equals its input token (labels are not shifted here).
        assert labelled == [lab for lab in t.labels if lab != IGNORE_INDEX]
        text = tok.decode(labelled)
        expected_response = (" " if template == "qa" else "") + ex.response
        assert text == expected_response + tok.eos_token
        masked = tok.decode([i for i, lab in zip(t.input_ids, t.labels) if lab == IGNORE_INDEX])
        assert ex.prompt in masked
        assert ex.response not in masked
        # The masked part is exactly the rendered prompt (plus the tokenizer's BOS, if any).
        assert masked.endswith(render_prompt(template, tok, ex.prompt))


def test_labels_with_a_second_tokenizer(word_tokenizer):
    tok = word_tokenizer
    ex = Example("How do I bake bread ?", "Mix flour water and yeast then bake it .")
    t = tokenize_example(ex, tok, "qa", max_length=512)
    labelled = [i for i, lab in zip(t.input_ids, t.labels) if lab != IGNORE_INDEX]
    assert tok.decode(labelled) == ex.response + " " + tok.eos_token
    prompt_ids = [i for i, lab in zip(t.input_ids, t.labels) if lab == IGNORE_INDEX]
    assert tok.decode(prompt_ids) == "### Question : How do I bake bread ? ### Answer :"


def test_chat_template_needs_one(word_tokenizer):
    from unlearnkit.errors import DataError

    with pytest.raises(DataError, match="chat template"):
        tokenize_example(EXAMPLES[0], word_tokenizer, "chat", 64)


def test_truncation_cuts_the_prompt_first_and_keeps_its_end(smol_tokenizer):
    tok = smol_tokenizer
    long_prompt = "word " * 200 + "final question?"
    ex = Example(long_prompt, "Short answer.")
    full = tokenize_example(ex, tok, "qa", max_length=4096)
    n_resp = sum(1 for lab in full.labels if lab != IGNORE_INDEX)
    t = tokenize_example(ex, tok, "qa", max_length=40)
    assert len(t) == 40
    # The response survives whole; the prompt keeps its end (the answer marker).
    assert sum(1 for lab in t.labels if lab != IGNORE_INDEX) == n_resp
    assert t.input_ids[-n_resp:] == full.input_ids[-n_resp:]
    prompt_part = tok.decode(t.input_ids[: 40 - n_resp])
    assert prompt_part.endswith("final question?\n### Answer:")


def test_truncation_cuts_a_long_response_tail(smol_tokenizer):
    ex = Example("Q?", "token " * 300)
    t = tokenize_example(ex, smol_tokenizer, "qa", max_length=32)
    assert len(t) == 32
    assert t.labels[-1] != smol_tokenizer.eos_token_id or t.input_ids[-1] != smol_tokenizer.eos_token_id


def test_collate_pads_to_the_longest_only():
    from unlearnkit.data.tokenize import TokenizedExample

    a = TokenizedExample([5, 6, 7], [IGNORE_INDEX, 6, 7])
    b = TokenizedExample([8, 9], [IGNORE_INDEX, 9])
    batch = collate([a, b], pad_token_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 9, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [-100, 9, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    left = collate([a, b], pad_token_id=0, padding_side="left")
    assert left["input_ids"].tolist() == [[5, 6, 7], [0, 8, 9]]


def test_bucketed_batches_cover_every_index_once_and_bucket_lengths():
    lengths = [((i * 37) % 101) + 1 for i in range(200)]
    batches = bucketed_batches(lengths, batch_size=4, seed=3, epoch=0)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(200))
    # Length-sorted within buckets: the padding waste is far below random batching.
    waste = sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)
    rnd = [list(range(k, min(k + 4, 200))) for k in range(0, 200, 4)]
    waste_random = sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in rnd)
    assert waste < waste_random / 3
    # Another epoch reshuffles; the same (seed, epoch) repeats exactly.
    assert bucketed_batches(lengths, 4, 3, 1) != batches
    assert bucketed_batches(lengths, 4, 3, 0) == batches


def test_batch_stream_sees_everything_and_resumes():
    lengths = list(range(1, 11))
    s = BatchStream(lengths, batch_size=3, seed=0)
    first_epoch = [next(s) for _ in range(s.batches_per_epoch)]
    assert sorted(i for b in first_epoch for i in b) == list(range(10))
    state = s.state()
    following = [next(s) for _ in range(5)]
    s2 = BatchStream(lengths, batch_size=3, seed=0)
    s2.load_state(state)
    assert [next(s2) for _ in range(5)] == following
