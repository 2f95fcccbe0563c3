"""Evaluation suites end to end on a tiny model, reports, and comparisons."""

from __future__ import annotations

import argparse
import json
import math

import pytest

from tests.conftest import save_peaked_llama

from unlearnkit.errors import ConfigError, DataError, UnlearnkitError
from unlearnkit.reports.evaluation import compare, flatten_metrics, load_columns, write_report
from unlearnkit.evaluation.suite import SUITES, EvalOptions, default_suites, options_for_run, run_eval


def _options(shared_data, **extra) -> EvalOptions:
    d = shared_data
    return EvalOptions.model_validate({
        "max_new_tokens": 4,
        "batch_size": 4,
        "max_length": 64,
        "limit": 3,
        "progress": False,
        "judges": ["refusal"],
        "forget_prompts": {"spec": f"pku_saferlhf:{d}/pku_saferlhf/pku_saferlhf_5k.json", "limit": 10, "holdout": 4, "seed": 0},
        "unseen_prompts": {"spec": f"prompts:{d}/harmful_prompts/advbench_harmful_behaviors.csv", "shuffle": False},
        "normal_prompts": {"spec": f"truthfulqa:{d}/truthfulqa/TruthfulQA.csv", "holdout": 60, "seed": 0},
        "truthfulqa": {"spec": f"truthfulqa_mc:{d}/truthfulqa/TruthfulQA.csv", "shuffle": False},
        "perplexity_texts": {"spec": f"text:{d}/retain/c4_demo.json", "chunk_tokens": 32, "shuffle": False},
        "memorisation_pairs": {"spec": f"text:{d}/books/dorothy_and_the_wizard_in_oz.txt", "mode": "pairs",
                               "prompt_tokens": 8, "continuation_tokens": 4, "shuffle": False},
        **extra,
    })


@pytest.fixture(scope="module")
def peaked_model_dir(tmp_path_factory, smol_tokenizer):
    """A tiny Llama with peaked logits (it writes words, not just newlines), saved with SmolLM2's tokenizer."""
    return save_peaked_llama(tmp_path_factory.mktemp("peaked") / "tiny", smol_tokenizer, hidden_size=32)


def _numeric(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def test_run_eval_every_suite_on_a_tiny_model(peaked_model_dir, shared_data, tmp_path):
    model = str(peaked_model_dir)
    # The original is the same model, so the normal suite's answers must coincide.
    result = run_eval(model, list(SUITES), _options(shared_data), original=model)
    r = result["results"]
    assert list(r) == list(SUITES) and result["template"] == "chat"  # SmolLM2's tokenizer has a chat template

    harm = r["harm"]
    assert set(harm) == {"forget", "forget_heldout", "unseen"}
    for name, res in harm.items():
        assert res["n"] == 3
        assert 0.0 <= res["harmful_rate"]["refusal"] <= 1.0
        assert 0.0 <= res["mean_harm_probability"]["refusal"] <= 1.0
        # The phrase judge calls an answer declined exactly when it does not call it harmful.
        assert res["refusal_rate"]["refusal"] == pytest.approx(1.0 - res["harmful_rate"]["refusal"])
        assert len(res["refusal_rate_ci95"]["refusal"]) == 2
        for key in ("distinct_1", "distinct_2", "empty_rate"):
            assert _numeric(res[key]) and 0.0 <= res[key] <= 1.0
        assert len(res["samples"]) == 3 and set(res["samples"][0]) == {"prompt", "response"}
    # The unseen prompts are AdvBench's first three, in file order.
    assert harm["unseen"]["samples"][0]["prompt"].startswith("Write a script that can exploit vulnerabilities")

    normal = r["normal"]
    assert normal["n"] == 3
    assert normal["similarity_cosine"] == pytest.approx(1.0, abs=1e-5)
    assert _numeric(normal["fluency_perplexity"]) and normal["fluency_perplexity"] > 1.0
    assert all(s["original"] == s["response"] for s in normal["samples"])
    assert normal["empty_rate"] < 1.0

    tqa = r["truthfulqa"]
    assert tqa["n"] == 3 and 0.0 <= tqa["mc1"] <= 1.0 and 0.0 < tqa["mc2"] < 1.0
    assert r["perplexity"]["n"] == 3 and r["perplexity"]["perplexity"] > 1.0
    mem = r["memorisation"]
    assert mem["n"] == 3
    for key in ("exact_match", "rouge_l", "bleu", "cosine"):
        assert _numeric(mem[key])
    assert "generations" not in mem and len(mem["samples"]) == 3

    flat = result["metrics"]
    assert flat == flatten_metrics(r)
    assert "harm.unseen.harmful_rate.refusal" in flat and "truthfulqa.mc1" in flat
    assert all(v is None or _numeric(v) for v in flat.values())
    assert set(result["seconds"]) == {*SUITES, "total"}
    assert result["judges"] == {"refusal": {"name": "refusal", "phrases": 36}}

    json_path, md_path = write_report(result, tmp_path / "ev")
    assert json.loads(json_path.read_text())["metrics"] == json.loads(json.dumps(flat))
    md = md_path.read_text()
    assert "## harm" in md and "| truthfulqa.mc1 |" not in md and "| mc1 |" in md
    assert "## Samples" in md


def test_run_eval_checks_its_arguments(tiny_model_dir, shared_data):
    with pytest.raises(ConfigError, match="original model"):
        run_eval(str(tiny_model_dir), ["normal"], _options(shared_data))
    with pytest.raises(ConfigError, match="unknown suite 'speed'"):
        run_eval(str(tiny_model_dir), ["speed"], _options(shared_data))
    with pytest.raises(DataError, match="unseen_prompts: no such file"):
        run_eval(str(tiny_model_dir), ["harm"], _options(shared_data, forget_prompts=None,
                                                          unseen_prompts={"spec": "prompts:/nonexistent/x.csv"}))


def test_options_for_run_use_the_runs_held_out_data(shared_data):
    from unlearnkit.config import load_config

    d = shared_data
    raw = {
        "data": {
            "template": "qa",
            "forget": {"spec": f"pku_saferlhf:{d}/pku_saferlhf/pku_saferlhf_5k.json", "holdout": 20},
            "retain": [
                {"spec": f"truthfulqa:{d}/truthfulqa/TruthfulQA.csv", "holdout": 30, "seed": 3},
                {"spec": f"text:{d}/retain/c4_demo.json", "chunk_tokens": 96, "holdout": 10},
            ],
        },
        "method": {"name": "llm_unlearn"},
    }
    cfg = load_config(raw=raw)
    opts = options_for_run(cfg, EvalOptions(max_new_tokens=7))
    assert opts.template == "qa" and opts.max_new_tokens == 7
    assert opts.forget_prompts == cfg.data.forget
    assert opts.normal_prompts == cfg.data.retain[0]
    assert opts.perplexity_texts == cfg.data.retain[1]
    assert default_suites(True, cfg) == ["harm", "overrefusal", "normal", "truthfulqa", "perplexity"]

    raw["data"]["forget"] = {"spec": f"text:{d}/books/dorothy_and_the_wizard_in_oz.txt", "chunk_tokens": 64, "holdout": 5}
    book = options_for_run(load_config(raw=raw))
    assert book.forget_prompts is None
    assert book.memorisation_pairs.mode == "pairs" and book.memorisation_pairs.holdout == 0
    assert default_suites(False, load_config(raw=raw)) == ["harm", "truthfulqa", "perplexity", "memorisation"]


# ----------------------------------------------------------------- compare


def _write_eval(folder, harmful, mc1, ppl):
    folder.mkdir(parents=True)
    results = {
        "harm": {"unseen": {"n": 50, "harmful_rate": {"refusal": harmful}, "distinct_2": 0.5, "samples": [{"prompt": "p"}]}},
        "truthfulqa": {"mc1": mc1, "mc2": None, "n": 817},
        "perplexity": {"perplexity": ppl, "n": 100},
    }
    (folder / "eval.json").write_text(json.dumps({"results": results, "metrics": flatten_metrics(results)}))
    return folder


def test_compare_two_evaluations(tmp_path):
    orig = _write_eval(tmp_path / "original", 0.8, 0.25, 12.5)
    unl = _write_eval(tmp_path / "unlearned", 0.2, 0.2375, 14.25)
    markdown, rows = compare([orig, unl / "eval.json"], out_dir=tmp_path / "cmp")
    lines = markdown.splitlines()
    assert lines[0] == "| metric | original | unlearned |"
    assert "| harm.unseen.harmful_rate.refusal | 0.800 | 0.200 |" in lines
    assert "| truthfulqa.mc1 | 0.250 | 0.237 |" in lines or "| truthfulqa.mc1 | 0.250 | 0.238 |" in lines
    assert "| truthfulqa.mc2 | – | – |" in lines
    assert "| perplexity.perplexity | 12.500 | 14.250 |" in lines
    assert "| harm.unseen.n | 50 | 50 |" in lines
    # E = (0.8 - 0.2) / 0.8 * 100 against the first column, right under its harmful rate.
    e_line = "| harm.unseen.effectiveness_pct.refusal | – | 75.000 |"
    assert lines[lines.index("| harm.unseen.harmful_rate.refusal | 0.800 | 0.200 |") + 1] == e_line
    by_metric = {row["metric"]: row for row in rows}
    assert by_metric["harm.unseen.effectiveness_pct.refusal"] == {
        "metric": "harm.unseen.effectiveness_pct.refusal", "original": None, "unlearned": pytest.approx(75.0)
    }
    assert by_metric["truthfulqa.mc1"]["unlearned"] == 0.2375
    png = tmp_path / "cmp" / "compare.png"
    assert png.is_file() and png.stat().st_size > 1024
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "cmp" / "compare.md").read_text() == markdown
    saved = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert saved["columns"] == ["original", "unlearned"]


def test_compare_reads_a_run_summary_and_names_columns(tmp_path):
    run = tmp_path / "myrun"
    run.mkdir()
    summary = {
        "name": "myrun",
        "eval_before": {"forget_heldout": {"mean_nll": 2.0, "perplexity": math.exp(2.0), "tokens": 10, "examples": 2}},
        "eval_after": {"forget_heldout": {"mean_nll": 5.0, "perplexity": math.exp(5.0), "tokens": 10, "examples": 2}},
    }
    (run / "summary.json").write_text(json.dumps(summary))
    cols = load_columns(run)
    assert [c[0] for c in cols] == ["myrun before", "myrun after"]
    assert cols[1][1]["nll.forget_heldout.mean_nll"] == 5.0
    same = _write_eval(tmp_path / "a" / "x", 0.5, 0.3, 10.0)
    other = _write_eval(tmp_path / "b" / "x", 0.0, 0.3, 10.0)
    markdown, rows = compare([same, other])
    assert markdown.splitlines()[0] == "| metric | x | x (2) |"  # labels made unique
    markdown, _ = compare([same, other], labels=["Original", "Unlearned"])
    assert "| harm.unseen.effectiveness_pct.refusal | – | 100.0 |" in markdown.splitlines()


def test_eval_command_writes_reports(tiny_model_dir, shared_data, tmp_path, capsys):
    from unlearnkit.evaluation.commands import add_commands

    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command"))
    d = shared_data
    out = tmp_path / "ev"
    args = parser.parse_args([
        "eval", "--model", str(tiny_model_dir), "--suite", "perplexity,truthfulqa", "--out", str(out), "--limit", "2",
        "--set", "progress=false", "--set", "max_length=64",
        "--set", f"truthfulqa.spec=truthfulqa_mc:{d}/truthfulqa/TruthfulQA.csv",
        "--set", f"perplexity_texts.spec=text:{d}/retain/c4_demo.json", "--set", "perplexity_texts.chunk_tokens=16",
    ])
    assert args.func(args) == 0
    saved = json.loads((out / "eval.json").read_text())
    assert saved["suites"] == ["perplexity", "truthfulqa"]
    assert saved["results"]["truthfulqa"]["n"] == 2 and saved["options"]["limit"] == 2
    assert (out / "eval.md").is_file()
    assert "| perplexity |" in capsys.readouterr().out
    bad = parser.parse_args(["eval", "--model", str(tiny_model_dir), "--set", "max_new_token=3"])
    with pytest.raises(ConfigError, match="max_new_token: unknown key"):
        bad.func(bad)


def test_eval_command_on_a_run_config_with_a_lora_adapter(peaked_model_dir, shared_data, tmp_path, capsys):
    import yaml
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from unlearnkit.evaluation.commands import add_commands

    d = shared_data
    config = {
        "name": "tiny-run",
        "output_dir": str(tmp_path / "runs"),
        "model": {"name": str(peaked_model_dir)},
        "data": {
            "template": "qa",
            "forget": {"spec": f"pku_saferlhf:{d}/pku_saferlhf/pku_saferlhf_5k.json", "limit": 10, "holdout": 4},
            "retain": {"spec": f"truthfulqa:{d}/truthfulqa/TruthfulQA.csv", "holdout": 5},
        },
        "method": {"name": "llm_unlearn"},
    }
    cfg_path = tmp_path / "run.yaml"
    cfg_path.write_text(yaml.safe_dump(config))
    run_dir = tmp_path / "runs" / "tiny-run"
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command"))
    argv = ["eval", str(cfg_path), "--suite", "harm,normal", "--limit", "2", "--set", "max_new_tokens=3",
            "--set", "progress=false", "--set", "unseen_prompts=null", "--set", "judges=[refusal]"]
    args = parser.parse_args(argv)
    with pytest.raises(UnlearnkitError, match="holds no saved model"):
        args.func(args)

    # The run saved only a LoRA adapter: eval puts it on the run's base model.
    base = AutoModelForCausalLM.from_pretrained(peaked_model_dir)
    get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False)).save_pretrained(run_dir / "adapter")
    assert args.func(args) == 0
    saved = json.loads((run_dir / "eval.json").read_text())
    assert saved["template"] == "qa" and saved["original"] == str(peaked_model_dir)
    assert "LoRA adapter" in saved["model"]
    assert set(saved["results"]["harm"]) == {"forget", "forget_heldout"}
    normal = saved["results"]["normal"]
    assert normal["n"] == 2
    # The adapter changes the model, so its answers are not all the original's.
    assert any(s["original"] != s["response"] for s in normal["samples"])
    # The normal prompts are the run's held-out TruthfulQA questions.
    from unlearnkit.data.spec import DataSourceConfig, load_examples, split_holdout

    src = DataSourceConfig(spec=f"truthfulqa:{d}/truthfulqa/TruthfulQA.csv", holdout=5)
    _, held = split_holdout(load_examples(src), 5, 0)
    assert [s["prompt"] for s in normal["samples"]] == [e.prompt for e in held[:2]]
