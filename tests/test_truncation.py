"""Over-long examples: never a prompt cut to a fragment, every cut or drop counted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from unlearnkit.cli import main
from unlearnkit.config import load_config
from unlearnkit.data.spec import load_examples
from unlearnkit.data.tokenize import IGNORE_INDEX, tokenize_example, tokenize_set
from unlearnkit.data.types import Example
from unlearnkit.errors import DataError
from unlearnkit.train import run_unlearning

ROOT = Path(__file__).resolve().parents[1]
SMOL_CONFIG = ROOT / "configs" / "smollm2-pku-llm_unlearn.yaml"


def prompt_ids(t):
    return [i for i, lab in zip(t.input_ids, t.labels) if lab == IGNORE_INDEX]


def test_the_shipped_pku_config_never_trains_on_a_prompt_fragment(smol_tokenizer, shared_data, monkeypatch):
    monkeypatch.chdir(ROOT)
    cfg = load_config(SMOL_CONFIG)
    d = cfg.data
    tok = smol_tokenizer
    # The 800 forget examples (limit 800, before the holdout) as the old code drew them, without
    # dropping duplicate answers (the default now), so the 62 fragments it trained on are the ones counted.
    examples = load_examples(d.forget.model_copy(update={"dedupe": False}), tok)
    assert len(examples) == 800 and d.max_length == 128 and d.truncation == "answer_first"
    full = [tokenize_example(e, tok, d.template, 100_000) for e in examples]
    # What the old code trained on: 62 prompts reduced to ':'.
    legacy = [tokenize_example(e, tok, d.template, d.max_length) for e in examples]
    fragments = [i for i, t in enumerate(legacy) if tok.decode(prompt_ids(t)) == ":"]
    assert len(fragments) == 62

    kept, toks, report = tokenize_set(examples, tok, d.template, d.max_length, truncation=d.truncation)
    by_prompt_and_answer = {(e.prompt, e.response): t for e, t in zip(kept, toks)}
    for e, f in zip(examples, full):
        t = by_prompt_and_answer.get((e.prompt, e.response))
        if t is None:
            continue
        assert prompt_ids(t) == prompt_ids(f)  # the whole prompt, always
        assert len(t) <= d.max_length
    for i in fragments:
        t = by_prompt_and_answer.get((examples[i].prompt, examples[i].response))
        assert t is None or tok.decode(prompt_ids(t)) != ":"
    # Every cut and drop is counted, as computed independently from the full tokenisation.
    too_long = [f for f in full if len(f) > d.max_length]
    no_room = [f for f in too_long if len(prompt_ids(f)) + 1 > d.max_length]
    assert report.examples == 800
    assert report.dropped == len(no_room)
    assert report.truncated == len(too_long) - len(no_room) and report.truncated >= 62
    assert len(kept) == 800 - report.dropped


# Distinct answers: duplicate answers would be dropped before tokenisation.
FORGET = [{"prompt": "Tell me " + "very " * 60 + "much about thing number %d?" % i, "response": f"No way {i}."}
          for i in range(2)]
FORGET += [{"prompt": f"How do I do thing {i}?", "response": f"Here is how {i}: " + "step " * 80} for i in range(2)]
FORGET += [{"prompt": f"Short question {i}?", "response": f"A short answer {i}."} for i in range(4)]


def _cfg(tmp_path, model_dir, truncation=None):
    f = tmp_path / "forget.jsonl"
    f.write_text("".join(json.dumps(x) + "\n" for x in FORGET))
    data = {"template": "qa", "max_length": 40, "forget": {"spec": f"generic:{f}"}}
    if truncation:
        data["truncation"] = truncation
    return load_config(raw={
        "name": truncation or "default", "output_dir": str(tmp_path / "runs"),
        "model": {"name": str(model_dir), "lora": {"enabled": True, "r": 2, "alpha": 4, "dropout": 0.0}},
        "data": data, "method": {"name": "ga"},
        "train": {"max_steps": 1, "batch_size": 2, "lr": 1e-3, "progress": False, "save": "none"},
        "eval": {"enabled": False},
    })


def test_the_run_summary_counts_truncated_and_dropped_examples(tmp_path, tiny_model_dir, capsys):
    summary = run_unlearning(_cfg(tmp_path, tiny_model_dir))
    assert summary["truncation"]["forget"] == {"policy": "answer_first", "max_length": 40, "examples": 8,
                                               "truncated": 2, "dropped": 2}
    out = capsys.readouterr().out
    assert "warning: data.forget: 4 of 8 examples are longer than max_length=40: 2 dropped (their prompt does not " \
           "fit), 2 kept with the end of their answer cut (data.truncation=answer_first)." in out
    saved = json.loads((tmp_path / "runs" / "default" / "summary.json").read_text())
    assert saved["truncation"] == summary["truncation"]
    dropped = run_unlearning(_cfg(tmp_path, tiny_model_dir, "drop"))
    assert dropped["truncation"]["forget"]["dropped"] == 4 and dropped["truncation"]["forget"]["truncated"] == 0
    with pytest.raises(DataError, match=r"data.forget: 4 of 8 examples are longer than max_length=40"):
        run_unlearning(_cfg(tmp_path, tiny_model_dir, "error"))


def test_policies_on_single_examples(smol_tokenizer):
    long_prompt = Example("word " * 100 + "?", "Yes.")
    long_answer = Example("Q?", "token " * 100)
    with pytest.raises(DataError, match="leaves no room for its answer"):
        tokenize_example(long_prompt, smol_tokenizer, "qa", 32, truncation="answer_first")
    t = tokenize_example(long_answer, smol_tokenizer, "qa", 32, truncation="answer_first")
    full = tokenize_example(long_answer, smol_tokenizer, "qa", 1000)
    assert len(t) == 32 and prompt_ids(t) == prompt_ids(full) and t.answer_cut == len(full) - 32
    for policy in ("drop", "error"):
        with pytest.raises(DataError, match="more than max_length=32"):
            tokenize_example(long_answer, smol_tokenizer, "qa", 32, truncation=policy)


def test_data_preview_counts_and_shows_what_is_trained(tmp_path, capsys):
    f = tmp_path / "forget.jsonl"
    f.write_text("".join(json.dumps(x) + "\n" for x in FORGET))
    code = main(["data", "preview", f"generic:{f}", "-n", "4", "--max-length", "40"])
    out = capsys.readouterr().out
    assert code == 0
    assert "4 of 8 examples are longer than max_length=40: 2 dropped (their prompt does not fit), 2 kept with the " \
           "end of their answer cut (--truncation answer_first)." in out
    assert out.count("--- example 1: dropped: the prompt of example") == 1
    block = out.split("--- example 3:")[1]
    assert "answer cut by" in block.splitlines()[0]
    shown = block.split("⟧")[1].split("\n\n")[0]
    assert shown.count("step") < 80  # the cut answer, as trained, not the whole one
