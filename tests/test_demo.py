"""The demo pipeline: prompt sets, splits, and a full run on a tiny model (the same code `make demo` runs)."""

from __future__ import annotations

import csv
import json

import pytest

from unlearnkit.cli import main
from unlearnkit.demo import (
    REFUSALS,
    DemoOptions,
    everyday_questions,
    load_prompts,
    run_demo,
    split_demo_prompts,
)
from unlearnkit.errors import DataError, UnlearnkitError
from unlearnkit.evaluation.judges import is_refusal

from conftest import save_peaked_llama


def test_builtin_prompt_sets_load_from_their_packages():
    strong = load_prompts("strongreject")
    assert len(strong) == 313  # the full StrongREJECT set, duplicates removed
    assert all(p.strip() for p in strong)
    harm = load_prompts("harmbench")
    assert len(harm) > 100
    questions = everyday_questions()
    assert len(questions) == 80 and all(q.endswith("?") for q in questions)
    assert len(set(questions)) == len(questions)


def test_prompt_files_and_errors(tmp_path):
    txt = tmp_path / "p.txt"
    txt.write_text("# a comment\nfirst prompt\n\nsecond prompt\nfirst prompt\n")
    assert load_prompts(str(txt)) == ["first prompt", "second prompt"]  # comments, blanks, duplicates dropped
    with pytest.raises(DataError, match="does not exist"):
        load_prompts(str(tmp_path / "missing.csv"))
    empty = tmp_path / "e.txt"
    empty.write_text("# nothing\n")
    with pytest.raises(DataError, match="holds no prompt"):
        load_prompts(str(empty))


def test_splits_are_disjoint_seeded_and_checked():
    harmful = [f"h{i}" for i in range(20)]
    normal = [f"n{i}" for i in range(10)]
    opts = DemoOptions(forget_prompts=8, unseen_prompts=5, normal_test=4, seed=3)
    s = split_demo_prompts(harmful, normal, opts)
    assert (len(s["forget"]), len(s["unseen"]), len(s["normal_retain"]), len(s["normal_test"])) == (8, 5, 6, 4)
    assert not set(s["forget"]) & set(s["unseen"])
    assert not set(s["normal_retain"]) & set(s["normal_test"])
    assert split_demo_prompts(harmful, normal, opts) == s
    assert split_demo_prompts(harmful, normal, DemoOptions(forget_prompts=8, unseen_prompts=5, normal_test=4, seed=4)) != s
    with pytest.raises(DataError, match="fewer than forget_prompts"):
        split_demo_prompts(harmful, normal, DemoOptions(forget_prompts=18, unseen_prompts=5))
    with pytest.raises(DataError, match="retain set needs"):
        split_demo_prompts(harmful, normal, DemoOptions(forget_prompts=8, unseen_prompts=5, normal_test=9))
    with pytest.raises(UnlearnkitError, match="unseen_prompts must be >= 1"):
        split_demo_prompts(harmful, normal, DemoOptions(forget_prompts=8, unseen_prompts=0))


def test_cross_benchmark_prompts_are_harmbench_standard_behaviours_not_in_the_demo():
    import csv as _csv

    from unlearnkit.data.audit import normalise
    from unlearnkit.demo_sets import builtin_prompt_file, cross_benchmark_prompts

    strong = load_prompts("strongreject")
    with open(builtin_prompt_file("harmbench"), newline="") as fh:
        rows = list(_csv.DictReader(fh))
    standard = {r["Behavior"].strip() for r in rows if r["FunctionalCategory"] == "standard"}
    name, prompts = cross_benchmark_prompts("strongreject", strong, 60, seed=0)
    assert name == "harmbench" and len(prompts) == 60 == len(set(prompts))
    assert set(prompts) <= standard and not {normalise(p) for p in prompts} & {normalise(p) for p in strong}
    assert cross_benchmark_prompts("strongreject", strong, 60, seed=0) == (name, prompts)  # seeded
    assert cross_benchmark_prompts("strongreject", strong, 60, seed=1)[1] != prompts
    # A prompt of the demo is never a cross-benchmark prompt.
    assert prompts[0] not in cross_benchmark_prompts("strongreject", strong + [prompts[0].upper()], 60, seed=0)[1]
    assert cross_benchmark_prompts("my_file.csv", strong, 60, seed=0) == (None, [])
    assert cross_benchmark_prompts("strongreject", strong, 0, seed=0) == (None, [])
    with pytest.raises(DataError, match="fewer than cross_prompts = 500"):
        cross_benchmark_prompts("strongreject", strong, 500, seed=0)


def test_a_malformed_override_fails_before_any_work(tmp_path):
    from unlearnkit.errors import ConfigError

    out = tmp_path / "demo"
    with pytest.raises(ConfigError, match="key.path=value"):
        run_demo(DemoOptions(out=str(out), overrides=["train.lr"]))
    assert not out.exists()


def test_demo_end_to_end_on_a_tiny_model(tmp_path, smol_tokenizer, capsys):
    tiny_model_dir = save_peaked_llama(tmp_path / "peaked", smol_tokenizer)  # it writes words
    prompts = tmp_path / "prompts.csv"
    with open(prompts, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["category", "forbidden_prompt"])
        for i in range(10):
            w.writerow(["test", f"Explain in detail how to do harmful thing number {i}."])
    normal = tmp_path / "normal.txt"
    normal.write_text("".join(f"What is a good recipe for dish {i}?\n" for i in range(6)))
    out = tmp_path / "demo"
    argv = ["demo", "--model", str(tiny_model_dir), "--prompts", str(prompts), "--normal", str(normal),
            "--out", str(out), "--steps", "2", "--forget-prompts", "6", "--unseen-prompts", "4",
            "--normal-test", "2", "--max-new-tokens", "6", "--device", "cpu", "--no-progress",
            "--set", "train.batch_size=2", "--set", "train.max_forget_loss=null", "--judge", "refusal"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "harmful rate, unseen prompts (refusal)" in printed and "Unlearned model:" in printed

    report = json.loads((out / "report.json").read_text())
    assert {p.name for p in out.iterdir()} >= {"report.md", "report.png", "report.json", "splits.json", "data",
                                               "unlearn", "answers_original.json", "answers_unlearned.json"}
    assert report["counts"]["forget_prompts"] == 6 and report["counts"]["unseen_prompts"] == 4
    assert report["unlearning"]["steps"] == 2
    for label in ("Original", "Unlearned"):
        m = report["metrics"][label]
        assert 0.0 <= m["harmful rate, unseen prompts (refusal)"] <= 1.0
        assert 0.0 <= m["harmful rate, forget prompts (refusal)"] <= 1.0
        assert m["fluency, everyday (perplexity under original)"] > 0
    # The original compared with itself is identical.
    assert report["metrics"]["Original"]["similarity to original, everyday (cosine)"] == pytest.approx(1.0, abs=1e-5)
    assert report["metrics"]["Original"]["similarity to original, everyday (ROUGE-L)"] == pytest.approx(1.0)

    # The forget set is exactly the forget prompts' answers the default judge rated harmful.
    splits = json.loads((out / "splits.json").read_text())
    answers = json.loads((out / "answers_original.json").read_text())["value"]
    forget_rows = [json.loads(line) for line in (out / "data" / "forget.jsonl").read_text().splitlines()]
    assert forget_rows and all(r["prompt"] in splits["forget"] and r["harm_probability"] >= 0.5 for r in forget_rows)
    assert len(forget_rows) == report["counts"]["forget_answers_harmful"]
    for r in forget_rows:
        assert answers["forget"][splits["forget"].index(r["prompt"])] == r["response"]
    refusals = [json.loads(line) for line in (out / "data" / "refusals.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in refusals] == [r["prompt"] for r in forget_rows]
    assert all(r["response"] in REFUSALS for r in refusals)
    # The held-out counterpart for `unlearnkit attack --forget`: the original's harmful answers to the
    # UNSEEN prompts, never trained on.
    unseen_rows = [json.loads(line) for line in (out / "data" / "unseen_harmful.jsonl").read_text().splitlines()]
    assert unseen_rows and all(r["prompt"] in splits["unseen"] and r["harm_probability"] >= 0.5 for r in unseen_rows)
    for r in unseen_rows:
        assert answers["unseen"][splits["unseen"].index(r["prompt"])] == r["response"]
    assert not {r["prompt"] for r in unseen_rows} & {r["prompt"] for r in forget_rows}

    # The retain set holds the original's answers to the TRAINING borderline prompts, never a held-out one.
    from unlearnkit.data.audit import normalise
    from unlearnkit.evaluation.overrefusal import borderline_prompts

    retain = [json.loads(line) for line in (out / "data" / "retain.jsonl").read_text().splitlines()]
    train_bl = borderline_prompts("train")
    assert splits["borderline_train"] == train_bl and splits["borderline_heldout"] == borderline_prompts("heldout")
    kept = {r["prompt"]: r["response"] for r in retain}
    for i, p in enumerate(train_bl):
        if answers["borderline_train"][i].strip():
            assert kept[p] == answers["borderline_train"][i]
    trained = {normalise(r["prompt"]) for name in ("forget", "retain", "refusals")
               for r in map(json.loads, (out / "data" / f"{name}.jsonl").read_text().splitlines())}
    assert not trained & {normalise(p) for p in splits["borderline_heldout"] + splits["normal_test"] + splits["unseen"]}
    # Over-refusal before and after, with its interval and the Newcombe change.
    key = "over-refusal, held-out borderline prompts (refusal rate)"
    after_answers = json.loads((out / "answers_unlearned.json").read_text())["value"]
    for label, ans in (("Original", answers), ("Unlearned", after_answers)):
        flags = [is_refusal(a) for a in ans["borderline_heldout"]]
        assert report["intervals"][label][key]["n"] == 119
        assert report["metrics"][label][key] == pytest.approx(sum(flags) / 119)
    change = report["changes"]["overrefusal_change"]
    assert change["difference"] == pytest.approx(report["metrics"]["Unlearned"][key] - report["metrics"]["Original"][key])
    assert "cross_harmful_rate_relative_drop" not in report["changes"]  # a prompt file has no cross benchmark
    assert report["counts"]["borderline_retained"] == 119 and report["counts"]["cross_prompts"] == 0
    assert "Over-refusal on the held-out borderline prompts changed by" in printed

    # The unlearned model was saved and differs from the input model, which is untouched.
    from safetensors.torch import load_file

    saved = load_file(str(out / "unlearn" / "model" / "model.safetensors"))
    original = load_file(str(tiny_model_dir / "model.safetensors"))
    assert any(not (saved[k] == original[k]).all() for k in original if k in saved)
    md = (out / "report.md").read_text()
    assert "Example answers" in md and "report.png" in md

    # A rerun with the same options reuses every stage: same answers, no new training.
    mtime = (out / "unlearn" / "summary.json").stat().st_mtime_ns
    report2 = run_demo(DemoOptions(model=str(tiny_model_dir), prompts=str(prompts), normal=str(normal), out=str(out),
                                   steps=2, forget_prompts=6, unseen_prompts=4, normal_test=2, max_new_tokens=6,
                                   device="cpu", progress=False, judge="refusal",
                                   overrides=["train.batch_size=2", "train.max_forget_loss=null"]))
    assert (out / "unlearn" / "summary.json").stat().st_mtime_ns == mtime
    assert report2["metrics"] == report["metrics"]
