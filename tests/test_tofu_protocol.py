"""The TOFU protocol as an experiment: two finetunes, unlearning, the tofu suite, the table.

A tiny Llama and tiny slices of the real TOFU files (a few items per set, copied
into the test's temporary folder) run through `unlearnkit run`'s machinery; a
second method reuses both finetuned models and their evaluations.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import save_peaked_llama
from unlearnkit.data.spec import DataSourceConfig, load_examples
from unlearnkit.errors import ConfigError, DataError
from unlearnkit.evaluation import tofu as T
from unlearnkit.evaluation import tofu_suite
from unlearnkit.reports import tofu as tofu_report
from unlearnkit.experiment import load_experiment, run_experiment

ROOT = Path(__file__).resolve().parents[1]


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


# --- also: one source made of several files ---------------------------------------------------


def test_also_appends_the_files_rows_before_limit(shared_data):
    tofu = shared_data / "tofu"
    src = DataSourceConfig(spec=f"tofu:{tofu}/forget01.json", also=[f"tofu:{tofu}/retain_perturbed.json"],
                           shuffle=False, dedupe=False)
    items = load_examples(src)
    forget, retain = _rows(tofu / "forget01.json"), _rows(tofu / "retain_perturbed.json")
    assert len(items) == 440
    assert [e.prompt for e in items] == [r["question"] for r in forget + retain]
    # The limit counts the joined rows: the 40 forget items, then the first retain authors.
    limited = load_examples(src.model_copy(update={"limit": 60}))
    assert [e.prompt for e in limited] == [r["question"] for r in forget + retain[:20]]
    # Perturbed fields of the appended file stay in meta.
    assert items[40].meta["paraphrased_answer"] == retain[0]["paraphrased_answer"]


def test_also_errors_name_the_entry(shared_data, tmp_path):
    tofu = shared_data / "tofu"
    with pytest.raises(DataError, match=r"also entry 'prompts:.*names recipe 'prompts'"):
        load_examples(DataSourceConfig(spec=f"tofu:{tofu}/forget01.json", also=[f"prompts:{tofu}/forget01.json"]))
    missing = tmp_path / "nope.json"
    with pytest.raises(DataError, match=r"also entry .*nope\.json.*no such file"):
        load_examples(DataSourceConfig(spec=f"tofu:{tofu}/forget01.json", also=[str(missing)]))


def test_config_check_finds_a_missing_also_file_before_anything_loads(shared_data, tmp_path):
    from unlearnkit.config import load_config

    tofu = shared_data / "tofu"
    raw = {"model": {"name": "smollm2-135m-instruct"}, "method": {"name": "finetune"},
           "data": {"forget": {"spec": f"tofu:{tofu}/forget01.json", "also": [f"tofu:{tofu}/retain_perturbed.json"]}}}
    load_config(raw=raw)  # both files exist
    raw["data"]["forget"]["also"].append(f"tofu:{tmp_path / 'nope.json'}")
    with pytest.raises(ConfigError, match=r"data\.forget\.also\[1\]: data file .*nope\.json does not exist"):
        load_config(raw=raw)
    # The alternative answers are checked the same way.
    raw["data"]["forget"]["also"].pop()
    raw["data"]["alternative"] = {"spec": f"answers:{tmp_path / 'idk.jsonl'}"}
    with pytest.raises(ConfigError, match=r"data\.alternative\.spec: data file .*idk\.jsonl does not exist"):
        load_config(raw=raw)


def test_also_on_the_hub_reads_configs_of_the_same_data_set(monkeypatch):
    import unlearnkit.data.spec as spec

    calls = []

    def fake_rows(source, hub_config=None, hub_split="train"):
        calls.append((source, hub_config))
        return [{"question": f"q {hub_config}", "answer": f"a {hub_config}"}]

    monkeypatch.setattr(spec, "load_rows", fake_rows)
    items = load_examples(DataSourceConfig(spec="tofu:locuslab/TOFU", hub_config="forget01", also=["retain99"],
                                           shuffle=False))
    assert calls == [("locuslab/TOFU", "forget01"), ("locuslab/TOFU", "retain99")]
    assert [e.response for e in items] == ["a forget01", "a retain99"]


# --- intervals --------------------------------------------------------------------------------


def test_intervals_collapse_on_constant_items_and_bracket_the_estimate():
    # Constant per-item values: every bootstrap draw gives the same figure, so the interval is that value.
    per = {"retain_Q_A_Prob": [0.5] * 4, "retain_Q_A_ROUGE": [0.8] * 4, "retain_Truth_Ratio": [0.6] * 4,
           "ra_Q_A_Prob_normalised": [0.4] * 3, "ra_Q_A_ROUGE": [0.9] * 3, "ra_Truth_Ratio": [0.5] * 3,
           "wf_Q_A_Prob_normalised": [0.7] * 3, "wf_Q_A_ROUGE": [1.0] * 3, "wf_Truth_Ratio": [0.2] * 3,
           "forget_truth_ratio": [0.5, 2.0, 0.5, 2.0], "forget_Q_A_ROUGE": [0.25, 0.75, 1.0, 0.0]}
    nine = [0.5, 0.8, 0.4, 0.4, 0.9, 0.5, 0.7, 1.0, 0.8]  # truth ratios as max(0, 1 - R)
    hm = 9 / sum(1 / v for v in nine)
    res = {"model_utility": hm, "forget_Q_A_ROUGE": 0.5, "forget_truth_ratio": 0.5, "retain_Truth_Ratio": 0.4,
           "mia_auc": None}
    out = tofu_suite.add_intervals(res, per)
    assert out["model_utility_ci95"] == pytest.approx([hm, hm])
    assert out["retain_Truth_Ratio_ci95"] == pytest.approx([0.4, 0.4])  # mean of max(0, 1 - 0.6)
    # min(R, 1/R) is 0.5 for R = 0.5 and R = 2: the forget truth ratio's interval is [0.5, 0.5].
    assert out["forget_truth_ratio_ci95"] == pytest.approx([0.5, 0.5])
    lo, hi = out["forget_Q_A_ROUGE_ci95"]
    assert 0.0 <= lo < 0.5 < hi <= 1.0
    # Four values: the bootstrap means lie on the grid of quarters-of-sums; the 2.5% point of
    # the mean of {0, .25, .75, 1} resampled 4 times is well below the mean, and seeded.
    again = tofu_suite.add_intervals(res, per)
    assert again["forget_Q_A_ROUGE_ci95"] == out["forget_Q_A_ROUGE_ci95"]
    assert "privleak_ci95" not in out and "mia_auc_ci95" not in out


def test_privleak_interval_is_the_auc_interval_mapped():
    per = {"mia_forget_scores": [0.1, 0.4, 0.2, 0.9, 0.3], "mia_holdout_scores": [0.5, 0.8, 0.35, 1.2]}
    auc = T.mia_auc(per["mia_forget_scores"], per["mia_holdout_scores"])
    out = tofu_suite.add_intervals({"mia_auc": auc, "model_utility": None, "reference_mia_auc": 0.6}, per)
    lo, hi = out["mia_auc_ci95"]
    assert 0 <= lo <= auc <= hi <= 1
    assert out["privleak_ci95"] == pytest.approx(sorted([T.privleak(lo, 0.6), T.privleak(hi, 0.6)]))


# --- the protocol as an experiment ------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, smol_tokenizer):
    return save_peaked_llama(tmp_path_factory.mktemp("tofu-model") / "tiny", smol_tokenizer, hidden_size=32)


@pytest.fixture(scope="module")
def slices(tmp_path_factory, shared_data):
    """Tiny TOFU files: 4 forget items (one author), 4 retain, 3 real authors, 3 world facts, 4 holdout."""
    tofu, out = shared_data / "tofu", tmp_path_factory.mktemp("tofu-slices")
    forget = _rows(tofu / "forget01_perturbed.json")[:4]
    retain = _rows(tofu / "retain_perturbed.json")[:4]
    return {
        "forget": _write(out / "forget.json", forget),
        "retain": _write(out / "retain.json", retain),
        "real_authors": _write(out / "ra.json", _rows(tofu / "real_authors_perturbed.json")[:3]),
        "world_facts": _write(out / "wf.json", _rows(tofu / "world_facts_perturbed.json")[:3]),
        # The retain rows again, then 4 questions of another author: the trained ones are dropped.
        "holdout": _write(out / "holdout.json", retain + _rows(tofu / "retain90.json")[200:204]),
    }


def _train(steps: int, lr: float) -> dict:
    return {"max_steps": steps, "batch_size": 4, "lr": lr, "scheduler": "constant", "progress": False, "threads": 1,
            "save": "merged"}


def protocol_raw(tmp_path: Path, model_dir: Path, s: dict, method: str) -> dict:
    src = lambda path, **kw: {"spec": f"tofu:{path}", "shuffle": False, "dedupe": False, **kw}  # noqa: E731
    data = {"template": "qa", "max_length": 128}
    finetune = lambda forget: {"data": {**data, "forget": forget}, "method": {"name": "finetune", "add_eos": True},  # noqa: E731
                               "train": _train(3, 1e-3), "eval": {"enabled": False}}
    return {
        "name": "tiny-tofu", "output_dir": str(tmp_path / "runs"), "original": str(model_dir),
        "vars": {"method": method},
        "eval": {"suites": ["tofu"], "options": {
            "progress": False, "template": "qa", "batch_size": 8, "max_length": 128,
            "tofu": {"forget": src(s["forget"]), "retain": src(s["retain"]), "real_authors": src(s["real_authors"]),
                     "world_facts": src(s["world_facts"]), "holdout": src(s["holdout"]), "max_new_tokens": 4}}},
        "stages": [
            {"name": "finetune-retain", "kind": "finetune", "model_from": "original", "config": finetune(src(s["retain"]))},
            {"name": "finetune-target", "kind": "finetune", "model_from": "original",
             "config": finetune(src(s["forget"], also=[f"tofu:{s['retain']}"]))},
            {"name": "eval-retain", "kind": "eval", "model_from": "finetune-retain",
             "set": ["options.tofu.is_reference=true"]},
            {"name": "eval-finetuned", "kind": "eval", "model_from": "finetune-target",
             "set": ["options.tofu.reference=eval-retain"]},
            {"name": "unlearn-${method}", "kind": "unlearn", "model_from": "finetune-target", "config": {
                "data": {**data, "forget": src(s["forget"]), "retain": src(s["retain"])},
                "method": {"name": "${method}"}, "train": _train(2, 1e-3), "eval": {"enabled": False}}},
            {"name": "eval-unlearn-${method}", "kind": "eval", "model_from": "unlearn-${method}",
             "set": ["options.tofu.reference=eval-retain"]},
        ],
        "report": {"rows": [{"label": "Retain", "stage": "eval-retain"}, {"label": "Finetuned", "stage": "eval-finetuned"},
                            {"label": "Unlearned: ${method}", "stage": "eval-unlearn-${method}"}]},
    }


def _tofu(folder: Path, stage: str) -> dict:
    return json.loads((folder / stage / "eval.json").read_text())["results"]["tofu"]


def test_tofu_protocol_runs_and_a_second_method_reuses_the_finetunes(tmp_path, model_dir, slices, capsys):
    from scipy.stats import ks_2samp

    folder = tmp_path / "runs" / "tiny-tofu"
    first = run_experiment(load_experiment(raw=protocol_raw(tmp_path, model_dir, slices, "ga")))
    assert [s["action"] for s in first["stages"]] == ["ran"] * 6
    capsys.readouterr()

    # The target model trained on the forget and the retain items; the retain model on the retain items only.
    target = json.loads((folder / "finetune-target" / "manifest.json").read_text())
    retain = json.loads((folder / "finetune-retain" / "manifest.json").read_text())
    assert target["data"]["forget"]["count"] == 8 and retain["data"]["forget"]["count"] == 4

    ref, ft, ul = (_tofu(folder, s) for s in ("eval-retain", "eval-finetuned", "eval-unlearn-ga"))
    # Forget quality: the KS p-value between this model's and the retain model's forget truth ratios.
    assert ref["forget_quality"] == 1.0 and ref["privleak"] == 0.0 and ref["is_reference"]
    for res in (ft, ul):
        assert res["reference"]["eval"] == str(folder / "eval-retain" / "eval.json")
        expected = ks_2samp(res["per_item"]["forget_truth_ratio"], ref["per_item"]["forget_truth_ratio"], method="exact")
        assert res["forget_quality"] == pytest.approx(expected.pvalue, rel=1e-9)
        assert res["privleak"] == pytest.approx(T.privleak(res["mia_auc"], ref["mia_auc"]))
    # The holdout lost the trained questions (4) and kept the other author's 4.
    assert ft["n"] == {"forget": 4, "retain": 4, "real_authors": 3, "world_facts": 3, "holdout": 4}
    assert ft["excluded_trained"] == {"holdout": 4}
    assert ft["trained_on"]["forget"] and not ft["trained_on"]["holdout"]
    # Finetuning on the forget items made them more likely than the retain model finds them.
    assert ft["forget_Q_A_Prob"] > ref["forget_Q_A_Prob"]
    for key in ("model_utility", "forget_Q_A_ROUGE", "forget_truth_ratio", "mia_auc", "privleak"):
        lo, hi = ft[f"{key}_ci95"]
        assert lo <= ft[key] + 1e-12 and ft[key] <= hi + 1e-12, key

    # The report: open-unlearning's columns, one row per model.
    md = (folder / "report.md").read_text()
    for col in ("Forget quality", "Model utility", "Forget ROUGE-L recall", "Forget truth ratio", "Privacy leak"):
        assert col in md
    assert [r["label"] for r in first["rows"]] == ["Retain", "Finetuned", "Unlearned: ga"]
    assert "| Unlearned: ga |" in first["markdown_table"]

    # A second method: both finetunes and their evaluations are reused, not retrained.
    markers = [folder / s / f for s in ("finetune-retain", "finetune-target") for f in ("summary.json", "model/model.safetensors")]
    markers += [folder / "eval-retain" / "eval.json", folder / "eval-finetuned" / "eval.json"]
    mtimes = [p.stat().st_mtime_ns for p in markers]
    second = run_experiment(load_experiment(raw=protocol_raw(tmp_path, model_dir, slices, "gradient_difference")))
    out = capsys.readouterr().out
    assert [s["action"] for s in second["stages"]] == ["skipped"] * 4 + ["ran", "ran"]
    assert out.count("done earlier, skipped") == 4 and "[5/6] unlearn-gradient_difference" in out
    assert [p.stat().st_mtime_ns for p in markers] == mtimes

    # `unlearnkit report tofu` over the folder: every model once, both methods.
    rows = tofu_report.collect([folder])
    assert [label for label, _ in rows] == ["Retain", "Finetuned", "Unlearned: ga", "Unlearned: gradient_difference"]
    from unlearnkit.cli import main

    assert main(["report", "tofu", str(folder), "--output", str(tmp_path / "table.md")]) == 0
    table = (tmp_path / "table.md").read_text()
    assert table.count("\n| ") == 4 and "Unlearned: gradient_difference" in table

    # Changing the retain model invalidates every evaluation that reads its result.
    changed = protocol_raw(tmp_path, model_dir, slices, "gradient_difference")
    changed["stages"][0]["config"]["train"]["lr"] = 5e-4
    exp = load_experiment(raw=changed)
    old = load_experiment(raw=protocol_raw(tmp_path, model_dir, slices, "gradient_difference"))
    fp = {s.name: s.fingerprint for s in exp.stages}
    fp_old = {s.name: s.fingerprint for s in old.stages}
    assert fp["eval-finetuned"] != fp_old["eval-finetuned"] and fp["finetune-target"] == fp_old["finetune-target"]
    with pytest.raises(ConfigError, match="finetune-retain"):
        run_experiment(exp)


def test_tofu_suite_reference_errors(tmp_path, model_dir, slices):
    from unlearnkit.evaluation.suite import EvalOptions, run_eval

    src = lambda path: {"spec": f"tofu:{path}", "shuffle": False, "dedupe": False}  # noqa: E731
    tofu = {"forget": src(slices["forget"]), "retain": None, "real_authors": None, "world_facts": None,
            "max_new_tokens": 2}
    opts = lambda **kw: EvalOptions.model_validate({"progress": False, "template": "qa", "tofu": {**tofu, **kw}})  # noqa: E731
    with pytest.raises(DataError, match="does not exist"):
        run_eval(str(model_dir), ["tofu"], opts(reference=str(tmp_path / "missing.json")))
    ref = run_eval(str(model_dir), ["tofu"], opts(is_reference=True))
    assert ref["results"]["tofu"]["model_utility"] is None and ref["results"]["tofu"]["forget_quality"] == 1.0
    path = tmp_path / "ref.json"
    path.write_text(json.dumps(ref))
    same = run_eval(str(model_dir), ["tofu"], opts(reference=str(path)))["results"]["tofu"]
    assert same["forget_quality"] == 1.0  # the same model: identical truth ratios
    with pytest.raises(ConfigError, match="not both"):
        run_eval(str(model_dir), ["tofu"], opts(reference=str(path), is_reference=True))
    fewer = {**tofu["forget"], "limit": 2}
    with pytest.raises(DataError, match="same forget set"):
        run_eval(str(model_dir), ["tofu"], opts(reference=str(path), forget=fewer))
    # An unknown tofu option is an error that names it (here through a run config).
    from unlearnkit.config import load_config

    with pytest.raises(ConfigError, match=r"eval\.suite\.tofu\.typo: unknown key"):
        load_config(raw={"eval": {"suite": {"tofu": {"typo": 1}}}})


# --- shipped configs --------------------------------------------------------------------------

SHIPPED = sorted((ROOT / "configs" / "tofu").glob("*.yaml"))
EXPERIMENTS = [p for p in SHIPPED if "stages" in (yaml.safe_load(p.read_text()) or {})]


SPLITS = [[], ["vars.forget=forget05", "vars.retain=retain95", "vars.holdout=holdout05", "vars.warmup_steps=7"],
          ["vars.forget=forget10", "vars.retain=retain90", "vars.holdout=holdout10", "vars.warmup_steps=13"]]


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[p.name for p in EXPERIMENTS])
def test_shipped_tofu_experiments_resolve(path, monkeypatch, shared_data):
    monkeypatch.chdir(ROOT)
    for overrides in SPLITS if "llama" in path.name else [[]]:
        exp = load_experiment(path, overrides)
        kinds = [s.kind for s in exp.stages]
        assert kinds == ["finetune", "finetune", "eval", "eval", "unlearn", "eval"]
        reference = exp.stages[2]
        assert reference.eval_options.tofu.is_reference
        assert reference.model_from in {s.name for s in exp.stages[:2]} - {"finetune-target"}
        for s in exp.stages[3:]:
            if s.kind == "eval":
                assert s.reference == reference.name
                assert s.eval_options.tofu.reference == str(exp.folder / reference.name / "eval.json")
        assert exp.stages[4].model_from == "finetune-target"
        assert [label for label, _ in exp.report_rows()][1] == "Finetuned"


def test_published_protocol_settings(monkeypatch):
    """open-unlearning's published settings (docs/tofu.md cites where each comes from)."""
    monkeypatch.chdir(ROOT)
    for overrides, forget, retain, warmup in zip(SPLITS, ("forget01", "forget05", "forget10"),
                                                ("retain99", "retain95", "retain90"), (2, 7, 13)):
        exp = load_experiment(ROOT / "configs" / "tofu" / "llama-3.2-1b.yaml", overrides)
        assert exp.stages[0].name == "finetune-target"
        target, retain_ft, unlearn = exp.stages[0].run_config, exp.stages[1].run_config, exp.stages[4].run_config
        assert exp.cfg.original == "meta-llama/Llama-3.2-1B-Instruct"
        assert target.data.forget.hub_config == "full" and retain_ft.data.forget.hub_config == retain
        for ft in (target, retain_ft):
            assert (ft.train.lr, ft.train.epochs, ft.train.batch_size * ft.train.grad_accum, ft.train.weight_decay) \
                == (1e-5, 5, 32, 0.0)
            assert not ft.model.lora.enabled
        assert unlearn.data.forget.hub_config == forget and unlearn.data.retain.hub_config == retain
        assert (unlearn.train.lr, unlearn.train.epochs, unlearn.train.batch_size * unlearn.train.grad_accum) == (1e-5, 10, 32)
        assert unlearn.train.weight_decay == 0.01 and unlearn.train.warmup_steps == warmup
        assert exp.stages[3].eval_options.tofu.holdout.hub_config == f"holdout{forget[-2:]}"
        # The target model is one stage for every split: its fingerprint does not depend on the split.
        assert exp.stages[0].fingerprint == load_experiment(ROOT / "configs" / "tofu" / "llama-3.2-1b.yaml").stages[0].fingerprint


def test_cpu_protocol_sizes(monkeypatch, shared_data):
    """The CPU protocol trains what docs/tofu.md says: forget01 + 2 retain authors, and those authors alone."""
    from unlearnkit.data.spec import load_examples as load
    from unlearnkit.train import prepare_data
    from unlearnkit.methods import get_method

    monkeypatch.chdir(ROOT)
    exp = load_experiment(ROOT / "configs" / "tofu" / "smollm2-forget01.yaml")
    by = {s.name: s for s in exp.stages}
    target = load(by["finetune-target"].run_config.data.forget)
    retain = load(by["finetune-retain"].run_config.data.forget)
    forget01 = _rows(shared_data / "tofu" / "forget01.json")
    assert len(target) == 80 and len(retain) == 40
    assert [e.prompt for e in target[:40]] == [r["question"] for r in forget01]
    assert [e.prompt for e in target[40:]] == [e.prompt for e in retain]
    unlearn = next(s for s in exp.stages if s.kind == "unlearn").run_config
    data = prepare_data(unlearn, None, get_method(unlearn.method["name"]))
    assert len(data.forget) == 40 and [e.prompt for e in data.retain] == [e.prompt for e in retain]
    opts = by["eval-finetuned"].eval_options.tofu
    assert [e.prompt for e in load(opts.retain)] == [e.prompt for e in retain]
    assert len(load(opts.forget)) == 40
    # The holdout's first 40 rows are the trained retain questions (dropped at evaluation); 40 others follow.
    holdout = load(opts.holdout)
    trained = {e.prompt for e in target}
    assert [e.prompt for e in holdout[:40]] == [e.prompt for e in retain]
    assert len([e for e in holdout[40:] if e.prompt not in trained]) == 40


def test_report_labels_keep_a_sweeps_tag(tmp_path):
    """Two points of one method (stages unlearn-npo and unlearn-npo-lr1e-3) get two labels."""
    def stage(name, record, method=None):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "stage.json").write_text(json.dumps(record))
        if method:
            (folder / "config.yaml").write_text(yaml.safe_dump({"method": {"name": method}}))
        return folder

    for tag in ("", "-lr1e-3"):
        stage(f"unlearn-npo{tag}", {"kind": "unlearn"}, method="npo")
        stage(f"eval-unlearn-npo{tag}", {"kind": "eval", "model_from": f"unlearn-npo{tag}"})
    stage("unlearn-other", {"kind": "unlearn"}, method="ga")  # a stage named otherwise: the method alone
    stage("eval-other", {"kind": "eval", "model_from": "unlearn-other"})
    labels = {name: tofu_report._stage_label(tmp_path / name, {})[1]
              for name in ("eval-unlearn-npo", "eval-unlearn-npo-lr1e-3", "eval-other")}
    assert labels == {"eval-unlearn-npo": "Unlearned: npo", "eval-unlearn-npo-lr1e-3": "Unlearned: npo-lr1e-3",
                      "eval-other": "Unlearned: ga"}
