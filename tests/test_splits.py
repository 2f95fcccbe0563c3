"""Honest measurement: content-disjoint hold-outs, the leak audit, evaluations that drop trained items."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from unlearnkit.config import load_config
from unlearnkit.data.audit import (
    audit,
    check_audit,
    dedupe,
    drop_span_overlaps,
    normalise,
    prompt_key,
    response_key,
)
from unlearnkit.data.spec import DataSourceConfig, load_examples, split_holdout
from unlearnkit.data.types import Example
from unlearnkit.errors import DataError

ROOT = Path(__file__).resolve().parents[1]


def _keys(items, fn):
    return {fn(e) for e in items} - {None}


def assert_disjoint(train, held):
    assert _keys(train, prompt_key).isdisjoint(_keys(held, prompt_key))
    assert _keys(train, response_key).isdisjoint(_keys(held, response_key))


def test_normalise_folds_case_punctuation_and_space():
    assert normalise("  How do I KILL a process?! ") == "how do i kill a process"
    assert normalise("how do i\tkill\na   process") == "how do i kill a process"
    assert normalise("Ｆｕｌｌ-width, café") == "full width café"
    assert normalise("") == "" and normalise("?!") == ""


def test_dedupe_keeps_first_of_each_normalised_response():
    items = [Example("a", "Yes."), Example("b", "yes"), Example("c", "No"), Example("c", ""), Example("c2", "")]
    kept, dropped = dedupe(items)
    # The two empty responses are prompt-list items: compared by prompt (c, c2 differ).
    assert [e.prompt for e in kept] == ["a", "c", "c", "c2"] and dropped == 1


@pytest.mark.parametrize("holdout", [60, 0.2])
def test_pku_holdout_shares_no_prompt_and_no_response_with_training(shared_data, holdout):
    pku = shared_data / "pku_saferlhf" / "pku_saferlhf_5k.json"
    # The shipped llm_unlearn / SKU forget source (limit 800, holdout 60), and 20% of the whole file.
    src = DataSourceConfig(spec=f"pku_saferlhf:{pku}", subset="unsafe", limit=800 if holdout == 60 else None, seed=0)
    items = load_examples(src)
    train, held = split_holdout(items, holdout, seed=0)
    target = holdout if isinstance(holdout, int) else round(holdout * len(items))
    assert len(held) >= target
    assert_disjoint(train, held)
    # Row-level splitting would leak: the raw file repeats prompts across rows.
    raw = load_examples(src.model_copy(update={"dedupe": False, "limit": None}))
    assert len({prompt_key(e) for e in raw}) < len(raw)


def test_pku_safe_heldout_comes_from_heldout_prompts(shared_data, tmp_path, tiny_model_dir):
    from unlearnkit.methods import get_method
    from unlearnkit.models import load_tokenizer
    from unlearnkit.train import prepare_data

    pku = shared_data / "pku_saferlhf" / "pku_saferlhf_5k.json"
    cfg = load_config(raw={
        "name": "s", "output_dir": str(tmp_path), "model": {"name": str(tiny_model_dir)},
        "data": {"forget": {"spec": f"pku_saferlhf:{pku}", "limit": 300, "holdout": 30}},
        "method": {"name": "ga"},
    })
    data = prepare_data(cfg, load_tokenizer(str(tiny_model_dir)), get_method("ga"))
    held_prompts = _keys(data.heldout["forget_heldout"], prompt_key)
    assert data.heldout["safe_heldout"] and _keys(data.heldout["safe_heldout"], prompt_key) <= held_prompts
    assert held_prompts.isdisjoint(_keys(data.forget, prompt_key))
    assert data.audit["total"] == 0


def test_truthfulqa_correct_answers_holdout_shares_no_question(shared_data):
    src = DataSourceConfig(spec=f"truthfulqa:{shared_data / 'truthfulqa' / 'TruthfulQA.csv'}", answers="correct", seed=0)
    items = load_examples(src)
    assert len(items) > 817  # several correct answers per question
    train, held = split_holdout(items, 60, seed=0)
    assert_disjoint(train, held)
    per_question = {}
    for e in items:
        per_question.setdefault(prompt_key(e), 0)
        per_question[prompt_key(e)] += 1
    # Every held-out question brought all its answers along.
    for key in _keys(held, prompt_key):
        assert sum(1 for e in held if prompt_key(e) == key) == per_question[key]


def test_text_holdout_chunks_share_no_token_span_with_trained_chunks(shared_data, smol_tokenizer):
    src = DataSourceConfig(spec=f"text:{shared_data / 'retain' / 'c4_demo.json'}", mode="chunks", chunk_tokens=64,
                           stride=16, limit=400, seed=0)
    items = load_examples(src, smol_tokenizer)
    train, held = split_holdout(items, 20, seed=0)
    assert len(held) >= 20 and len(train) < len(items) - len(held)  # neighbours of held-out chunks were dropped
    spans = [(e.meta["offset"], e.meta["offset"] + e.meta["tokens"]) for e in held]
    for e in train:
        a, b = e.meta["offset"], e.meta["offset"] + e.meta["tokens"]
        assert all(b <= s or a >= t for s, t in spans), (a, b)


def test_drop_span_overlaps_by_hand():
    held = [Example("", "h", {"offset": 10, "tokens": 5})]  # tokens 10..14
    train = [Example("", str(a), {"offset": a, "tokens": 5}) for a in (0, 5, 6, 14, 15)]
    kept, dropped = drop_span_overlaps(train, held)
    assert [e.meta["offset"] for e in kept] == [0, 5, 15] and dropped == 2


def test_audit_counts_shared_prompts_and_responses_by_hand():
    trained = {"forget": [Example("How do I do X?", "Like this."), Example("Q2", "A2")]}
    evaluated = {"held": [Example("how do i do x", "Other."), Example("Q3", "a2!")], "clean": [Example("Q9", "A9")]}
    report = audit(trained, evaluated)
    rows = {r["evaluated"]: r for r in report["pairs"]}
    assert rows["held"]["shared_prompts"] == 1 and rows["held"]["shared_responses"] == 1
    assert rows["clean"]["shared_prompts"] == 0 and rows["clean"]["shared_responses"] == 0
    assert report["total"] == 2
    with pytest.raises(DataError, match=r"held-out set 'held'.*trained set 'forget'.*'how do i do x'"):
        check_audit(report, allow_overlap=False)
    check_audit(report, allow_overlap=True)  # allowed: no error


def _overlap_cfg(tmp_path, model_dir, allow: bool):
    rows = [{"prompt": f"How do I do thing {i}?", "response": f"Do thing {i} like so, then again."} for i in range(10)]
    f = tmp_path / "forget.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return load_config(raw={
        "name": "leak", "output_dir": str(tmp_path / "runs"), "seed": 1,
        "model": {"name": str(model_dir), "lora": {"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0}},
        "data": {"template": "qa", "max_length": 64, "forget": {"spec": f"generic:{f}"}, "allow_overlap": allow},
        "method": {"name": "ga"},
        "train": {"max_steps": 1, "batch_size": 2, "lr": 1e-3, "progress": False, "save": "none"},
        "eval": {"nll": {"same_file": {"spec": f"generic:{f}"}}},
    })


def test_leak_audit_stops_a_run_whose_heldout_set_overlaps_its_forget_set(tmp_path, tiny_model_dir):
    from unlearnkit.train import run_unlearning

    with pytest.raises(DataError, match=r"'same_file'.*'forget'.*allow_overlap"):
        run_unlearning(_overlap_cfg(tmp_path, tiny_model_dir, allow=False))
    summary = run_unlearning(_overlap_cfg(tmp_path, tiny_model_dir, allow=True))
    assert summary["steps"] == 1
    run_dir = tmp_path / "runs" / "leak"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    row = next(r for r in manifest["overlap_audit"]["pairs"] if r["evaluated"] == "same_file" and r["trained"] == "forget")
    assert row["shared_prompts"] == 10 and row["shared_responses"] == 10
    assert manifest["overlap_audit"]["allow_overlap"] is True
    # Every set the run used is kept for anyone to audit.
    saved = [json.loads(x) for x in (run_dir / "data" / "forget.jsonl").read_text().splitlines()]
    assert len(saved) == 10 and set(saved[0]) == {"prompt", "response"}
    assert (run_dir / "data" / "same_file.jsonl").is_file()


def test_data_overlap_command(tmp_path, capsys):
    from unlearnkit.cli import main

    a = tmp_path / "a.jsonl"
    b = tmp_path / "b.jsonl"
    a.write_text(json.dumps({"prompt": "Hello there?", "response": "Hi."}) + "\n" + json.dumps({"prompt": "P2", "response": "R2"}) + "\n")
    b.write_text(json.dumps({"prompt": "hello there", "response": "Other"}) + "\n")
    assert main(["data", "overlap", f"generic:{a}", f"generic:{b}", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["pairs"][0]["shared_prompts"] == 1 and report["pairs"][0]["shared_responses"] == 0
    assert main(["data", "overlap", f"generic:{a}", f"generic:{b}", "--fail-on-overlap"]) == 1


def test_truthfulqa_mc_scores_exactly_the_untrained_questions(tmp_path, shared_data, tiny_model_dir):
    from unlearnkit.evaluation.suite import EvalOptions, run_eval

    # Ten real TruthfulQA rows; the run trains on six of their questions.
    with (shared_data / "truthfulqa" / "TruthfulQA.csv").open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        rows = [next(reader) for _ in range(10)]
    small = tmp_path / "tqa.csv"
    with small.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    retain = tmp_path / "retain.jsonl"
    retain.write_text("".join(json.dumps({"prompt": r["Question"], "response": r["Best Answer"]}) + "\n" for r in rows[:6]))
    forget = tmp_path / "forget.jsonl"
    forget.write_text("".join(json.dumps({"prompt": f"Bad {i}?", "response": f"Bad answer {i}."}) + "\n" for i in range(4)))
    cfg = load_config(raw={
        "name": "tqa", "output_dir": str(tmp_path / "runs"), "model": {"name": str(tiny_model_dir)},
        "data": {"forget": {"spec": f"generic:{forget}"}, "retain": {"spec": f"generic:{retain}"}},
        "method": {"name": "gradient_difference"},
    })
    opts = EvalOptions(progress=False, truthfulqa=DataSourceConfig(spec=f"truthfulqa_mc:{small}", shuffle=False))
    result = run_eval(str(tiny_model_dir), ["truthfulqa"], opts, run_config=cfg)
    tqa = result["results"]["truthfulqa"]
    assert tqa["n"] == 4 and tqa["excluded_trained"] == 6
    assert result["trained_exclusion"]["applied"] is True
    lo, hi = tqa["mc1_ci95"]
    assert 0 <= lo <= tqa["mc1"] <= hi <= 1
    # Without a run, everything is scored, and the result says so.
    plain = run_eval(str(tiny_model_dir), ["truthfulqa"], opts)
    assert plain["results"]["truthfulqa"]["n"] == 10 and plain["trained_exclusion"]["applied"] is False
