"""The benchmark's reference way (bench/train_step.py) against the published loop and the library.

What must hold for the benchmark's ratios to be honest:
- its reference batches are padded exactly as ``DataCollatorForLanguageModeling``
  pads them (longest member, not a fixed length);
- its random-mismatch rows are one set of K answers shared by the batch;
- its loss terms equal the library's step wherever the two can be equal, and
  its KL term is the published loop's (every position, padding included).
"""

from __future__ import annotations

import copy
import importlib.util
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import ROOT, tiny_model

MAX_LENGTH = 96


def _load_bench(name: str = "train_step"):
    path = Path(ROOT) / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _load_bench()


@pytest.fixture(scope="module")
def llm_unlearn():
    from unlearnkit.methods import get_method

    return get_method("llm_unlearn")()


@pytest.fixture(scope="module")
def steps(smol_tokenizer, shared_data, llm_unlearn):
    """Two steps of real examples (PKU-SafeRLHF forget, TruthfulQA retain), batch 2."""
    from unlearnkit.methods import get_method

    spec = {"data_dir": str(shared_data), "steps": 2, "batch_size": 2, "max_length": MAX_LENGTH}
    return bench.step_examples(spec, smol_tokenizer, get_method("llm_unlearn"), llm_unlearn)


def _answer_ids(item):
    return [t for t, lab in zip(item.input_ids, item.labels) if lab != -100]


def _prompt_ids(item):
    return [t for t, lab in zip(item.input_ids, item.labels) if lab == -100]


# --------------------------------------------------------------------------- padding


def test_reference_batch_is_padded_as_the_lm_collator_pads(smol_tokenizer, steps):
    from transformers import DataCollatorForLanguageModeling

    from unlearnkit.data.tokenize import collate, pad_id_of

    items = steps[0]["random_reference"]  # 10 real rows: two questions x 5 answers
    lengths = [len(it) for it in items]
    assert len(set(lengths)) > 1, "the check needs a batch of unequal lengths"
    width = max(lengths)
    assert width < MAX_LENGTH

    batch = bench.reference_batch(items, smol_tokenizer)

    # 1. The transformers collator itself, on the same token lists.
    collator = DataCollatorForLanguageModeling(tokenizer=smol_tokenizer, mlm=False)
    expected = collator([{"input_ids": list(it.input_ids)} for it in items])
    assert batch["input_ids"].shape == (len(items), width)
    assert torch.equal(batch["input_ids"], expected["input_ids"])
    assert torch.equal(batch["attention_mask"], expected["attention_mask"])
    assert torch.equal(batch["lm_labels"], expected["labels"])

    # 2. By hand: right padding (SmolLM2's side) with the pad id, to the longest
    # member; the collator's labels are the ids with every pad-id token at -100
    # (SmolLM2's pad token is its EOS, so the closing EOS is -100 there too).
    pad = pad_id_of(smol_tokenizer)
    assert smol_tokenizer.padding_side == "right"
    for row, it in enumerate(items):
        n = len(it)
        assert batch["input_ids"][row, :n].tolist() == it.input_ids
        assert (batch["input_ids"][row, n:] == pad).all()
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (width - n)
        assert batch["lm_labels"][row].tolist() == [-100 if t == pad else t for t in batch["input_ids"][row].tolist()]

    # The answer mask the library's losses read sits on the same layout.
    assert torch.equal(batch["labels"], collate(items, pad)["labels"])

    # The strawman (fixed padding) is a different batch; the checks above would fail on it.
    fixed = bench.reference_batch(items, smol_tokenizer, fixed_length=MAX_LENGTH)
    assert fixed["input_ids"].shape[1] == MAX_LENGTH != expected["input_ids"].shape[1]


def test_every_reference_batch_kind_goes_through_the_collator(smol_tokenizer, steps):
    from transformers import DataCollatorForLanguageModeling

    collator = DataCollatorForLanguageModeling(tokenizer=smol_tokenizer, mlm=False)
    for kind in ("forget", "retain", "random_reference"):
        items = steps[1][kind]
        batch = bench.reference_batch(items, smol_tokenizer)
        expected = collator([{"input_ids": list(it.input_ids)} for it in items])
        assert batch["input_ids"].shape[1] == max(len(it) for it in items)
        assert torch.equal(batch["input_ids"], expected["input_ids"]), kind
        assert torch.equal(batch["lm_labels"], expected["labels"]), kind


# --------------------------------------------------------------------------- random rows


def _answers_by_question(rows, k):
    groups = [rows[i : i + k] for i in range(0, len(rows), k)]
    return [[tuple(_answer_ids(r)) for r in g] for g in groups], [{tuple(_prompt_ids(r)) for r in g} for g in groups]


def _is_shared(rows, k):
    answers, _ = _answers_by_question(rows, k)
    return all(a == answers[0] for a in answers)


def test_random_set_is_shared_by_the_batch(steps, llm_unlearn):
    k = llm_unlearn.num_random
    assert k == 5
    for step in steps:
        rows = step["random_reference"]
        assert len(rows) == 2 * k
        answers, prompts = _answers_by_question(rows, k)
        # Every forget question of the batch gets the very same K answers ...
        assert answers[0] == answers[1]
        assert len(set(answers[0])) == k  # ... K distinct draws (without replacement)
        # ... and each group of K rows carries one question, the batch's forget questions in order
        # (a long forget answer may have cut its own prompt from the start: compare the tail).
        assert [len(p) for p in prompts] == [1, 1]
        group_prompts = [next(iter(p)) for p in prompts]
        assert group_prompts[0] != group_prompts[1]
        for group_prompt, forget in zip(group_prompts, step["forget"]):
            own = tuple(_prompt_ids(forget))
            assert group_prompt[-len(own):] == own
    # A fresh set each step.
    assert _answers_by_question(steps[0]["random_reference"], k)[0][0] != \
        _answers_by_question(steps[1]["random_reference"], k)[0][0]
    # The check tells the two draws apart: the library's trainer draws per question.
    assert not all(_is_shared(step["random_ours"], k) for step in steps)


def test_shared_random_examples_draws_once():
    from unlearnkit.data.types import Example

    questions = [Example("q1", "own1"), Example("q2", "own2"), Example("q3", "own3")]
    pool = [f"a{i}" for i in range(50)]
    rows = bench.shared_random_examples(questions, pool, 4, random.Random(0))
    assert [r.prompt for r in rows] == ["q1"] * 4 + ["q2"] * 4 + ["q3"] * 4
    assert [r.response for r in rows[:4]] == [r.response for r in rows[4:8]] == [r.response for r in rows[8:]]
    assert [r.response for r in rows[:4]] == random.Random(0).sample(pool, 4)


# --------------------------------------------------------------------------- loss values


def _kinds(steps, random_key="random_reference"):
    """One step's batches; the retain pair has unequal lengths, so its batch holds padding."""
    out = {"forget": steps[0]["forget"], "random": steps[0][random_key]}
    pool = [it for step in steps for it in step["retain"]]
    first = pool[0]
    out["retain"] = [first, next(it for it in pool if len(it) != len(first))]
    return out


def _hand_kl_every_position(ref_logits, cur_logits):
    total, count = 0.0, 0
    for row in range(cur_logits.shape[0]):
        for pos in range(cur_logits.shape[1]):  # every position, padding and the last one included
            p = F.softmax(ref_logits[row, pos].double(), -1)
            q = F.log_softmax(cur_logits[row, pos].double(), -1)
            total += float((p * (p.log() - q)).sum())
            count += 1
    return total / count


@pytest.mark.parametrize("name", ["ga", "gradient_difference", "llm_unlearn"])
def test_reference_way_gives_the_library_step_values(smol_tokenizer, steps, name):
    from unlearnkit.data.tokenize import pad_id_of
    from unlearnkit.losses import answer_logits
    from unlearnkit.methods import get_method

    method = get_method(name)()
    vocab = len(smol_tokenizer)
    model = tiny_model("llama", vocab, seed=0)
    second = tiny_model("llama", vocab, seed=1)  # a different anchor, so the KL is far from zero
    kinds = _kinds(steps)
    pad = pad_id_of(smol_tokenizer)
    with torch.no_grad():
        lib_loss, lib = bench.library_step_loss(
            method, model, lambda b: answer_logits(second, b),
            {k: bench.library_batch(v, pad) for k, v in kinds.items()},
        )
        ref_batches = {k: bench.reference_batch(v, smol_tokenizer) for k, v in kinds.items()}
        ref_loss, ref = bench.reference_way_loss(method, model, second, ref_batches, comparable=True)

    # Equal: every term the library computes, and the total with the answer-masked KL.
    for term, value in lib.items():
        assert ref[term] == pytest.approx(value, rel=1e-5, abs=1e-6), term
    assert ref["loss_as_library"] == pytest.approx(float(lib_loss), rel=1e-5, abs=1e-6)

    if name != "llm_unlearn":
        assert float(ref_loss) == pytest.approx(float(lib_loss), rel=1e-5, abs=1e-6)
        return
    assert lib["retain_kl"] > 1e-2
    # Not equal, by design: the loop's KL averages over every position of the
    # padded retain batch, and that is the term the reference backpropagates.
    retain = ref_batches["retain"]
    with torch.no_grad():
        cur = model(input_ids=retain["input_ids"], attention_mask=retain["attention_mask"]).logits
        frz = second(input_ids=retain["input_ids"], attention_mask=retain["attention_mask"]).logits
    assert (retain["attention_mask"] == 0).any(), "the check needs padding in the retain batch"
    hand = _hand_kl_every_position(frz, cur)
    assert ref["retain_kl_every_position"] == pytest.approx(hand, rel=1e-5)
    # (a random tiny model's KL is nearly the same at every position, so the two
    # averages are close here, but far apart compared with float error)
    assert ref["retain_kl_every_position"] != pytest.approx(ref["retain_kl"], rel=1e-4)
    p = method.params
    expected = -p.forget_weight * ref["forget_nll"] + p.random_weight * ref["random_nll"] + p.retain_weight * hand
    assert float(ref_loss) == pytest.approx(expected, rel=1e-5)
    assert float(ref_loss) != pytest.approx(float(lib_loss), rel=1e-6, abs=1e-7)


def test_bench_loss_check_under_lora_uses_a_second_full_model(smol_tokenizer, steps, llm_unlearn):
    """The check the benchmark runs: the library's LoRA anchor (adapter disabled) against the
    reference's second full model, after the adapter has moved."""
    from unlearnkit.config import RunConfig
    from unlearnkit.models import LoraConfig, apply_lora
    from unlearnkit.train import Reference

    base = tiny_model("llama", len(smol_tokenizer), seed=0)
    second = copy.deepcopy(base).eval()
    model = apply_lora(base, LoraConfig(enabled=True, r=4, alpha=8.0, dropout=0.0, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(3)
    with torch.no_grad():
        for n, prm in model.named_parameters():
            if "lora_B" in n:
                prm.normal_(0, 0.5)  # the adapter has moved away from the base
    lib_ref = Reference(model, RunConfig())
    check = bench.loss_check(llm_unlearn, model, lambda b: lib_ref(model, b), second, steps[0], smol_tokenizer)
    assert check["compared"] == ["forget_nll", "random_nll", "retain_kl", "loss"]
    assert check["library"]["retain_kl"] > 1e-4
    assert check["max_abs_diff"] < 1e-5


def test_judge_speed_benchmark_judges_the_file_pairs_and_reports_each_judge(tmp_path, capsys):
    import json

    speed = _load_bench("judge_speed")
    data = tmp_path / "pku.json"
    rows = [{"prompt": f"q{i}", "response": [f"I'm sorry, I can't help with q{i}." if i % 2 else f"Sure: step {i}.",
                                             "other"]} for i in range(6)]
    data.write_text(json.dumps(rows))
    assert speed.pairs(data, 4) == (["q0", "q1", "q2", "q3"],
                                    ["Sure: step 0.", "I'm sorry, I can't help with q1.", "Sure: step 2.",
                                     "I'm sorry, I can't help with q3."])
    with pytest.raises(SystemExit, match="only 6 rows"):
        speed.pairs(data, 7)
    assert speed.main(["--judges", "refusal,refusal", "--n", "6", "--data", str(data)]) == 0
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| refusal |")]
    assert len(table) == 2 and all(line.endswith("| yes |") for line in table)
