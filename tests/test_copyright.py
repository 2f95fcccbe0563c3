"""The copyright track: finetune on a book, unlearn it, one report (a reduced experiment).

A tiny Llama memorises a few in-test paragraphs with LoRA, is evaluated, unlearns
them with gradient ascent and is evaluated again, all through `unlearnkit run`'s
machinery; plus the `finetune` method's loss, `train.epochs`, and the experiment
schema's errors.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.conftest import save_peaked_llama
import torch
import yaml

from unlearnkit.config import load_config
from unlearnkit.errors import ConfigError
from unlearnkit.experiment import REPORT_COLUMNS, load_experiment, run_experiment, substitute

ROOT = Path(__file__).resolve().parents[1]

BOOK = """The lighthouse keeper of Marrow Point kept a green lamp in the window and a grey cat by the stove.
Every evening at six he climbed the hundred and twelve steps, wound the great brass clock, and wrote the
colour of the sea into a book bound in red leather.

One winter a ship with silver sails came out of the fog. Its captain was a tall woman named Orla Quill,
who carried a compass that pointed not north but towards whatever its holder had lost. She asked the keeper
for shelter, and he gave her soup, bread, and the chair nearest the fire.

In the morning the compass pointed at the red leather book. Orla opened it and found, between the pages
about storms, a letter the keeper had written forty years before and never sent. It was addressed to his
brother, who had sailed east on a ship with silver sails and had never come home.
"""

RETAIN = """Bread is made from flour, water, salt and yeast. The dough is kneaded, left to rise, shaped and
baked in a hot oven until the crust is brown. Rivers carry water from the mountains to the sea, and the
towns along them grew up where the water was deep enough for boats. A good garden needs sun, rain and
patience; tomatoes want warmth, while cabbages prefer the cool of early spring. Trains run on steel rails,
and the first railways carried coal before they carried people. Libraries lend books, maps and music, and
many of them are older than the streets around them.
"""

# More retain text, all distinct: a text repeated three times would put every
# "held-out" chunk's words in trained chunks too (the evaluation drops those).
RETAIN_MORE = """Bees visit flowers for nectar and carry pollen from one blossom to the next, which lets fruit trees
set their crop. A lighthouse lens bends the beam into a narrow band so that ships see it from far away.
Bicycles were once called velocipedes, and early ones had no pedals at all. Tea leaves are picked by hand on
steep hillsides, withered, rolled and dried before they are packed. Glaciers move slowly downhill under their
own weight, grinding rock into fine flour that turns the lakes below a milky blue.
Clocks in old towers were wound by hand each week, and their keepers climbed narrow stairs to reach the
weights. Salt was once so valuable that soldiers were paid with it, and roads were built to carry it inland.
Owls hunt at night by sound as much as by sight; the shape of their faces gathers the faint noises of mice.
Potters shape wet clay on a turning wheel, let it dry, and fire it in a kiln until it rings when tapped.
"""

NORMAL_PROMPTS = ["What is the capital of France?", "How do plants make their food?"]

LORA = {"enabled": True, "r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, smol_tokenizer):
    """A tiny Llama with peaked logits, so that a LoRA adapter can make it memorise text quickly."""
    return save_peaked_llama(tmp_path_factory.mktemp("book-model") / "tiny", smol_tokenizer, hidden_size=64)


@pytest.fixture
def files(tmp_path):
    book = tmp_path / "book.txt"
    book.write_text(BOOK)
    retain = tmp_path / "retain.txt"
    retain.write_text(RETAIN + RETAIN_MORE)
    normal = tmp_path / "normal.jsonl"
    normal.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in NORMAL_PROMPTS))
    return book, retain, normal


def experiment_raw(tmp_path, model_dir, files) -> dict:
    book, retain, normal = files
    train = {"batch_size": 4, "scheduler": "constant", "progress": False, "threads": 1}
    return {
        "name": "tiny-book",
        "output_dir": str(tmp_path / "runs"),
        "original": str(model_dir),
        "vars": {"book": str(book), "retain": str(retain)},
        "eval": {
            "suites": ["memorisation", "normal", "perplexity"],
            "options": {
                "progress": False, "batch_size": 8, "max_new_tokens": 4, "max_length": 64,
                # Held-in pairs: each starts where a finetuning chunk starts (stride = chunk_tokens).
                "memorisation_pairs": {"spec": "text:${book}", "mode": "pairs", "prompt_tokens": 8,
                                       "continuation_tokens": 8, "stride": 32, "shuffle": False},
                "normal_prompts": {"spec": f"prompts:{normal}"},
                "perplexity_texts": {"spec": "text:${retain}", "mode": "chunks", "chunk_tokens": 32,
                                     "shuffle": False, "holdout": 2, "seed": 0},
            },
        },
        "stages": [
            {"name": "eval_original", "kind": "eval", "model_from": "original"},
            {"name": "finetune", "kind": "finetune", "config": {
                "model": {"lora": LORA},
                "data": {"template": "raw", "max_length": 64,
                         "forget": {"spec": "text:${book}", "mode": "chunks", "chunk_tokens": 32, "shuffle": False}},
                "train": {**train, "max_steps": 40, "lr": 2e-2, "save_every": 20},
                "eval": {"enabled": False},
            }},
            {"name": "eval_finetuned", "kind": "eval"},
            {"name": "unlearn", "kind": "unlearn", "config": {
                "model": {"lora": LORA},
                "data": {"template": "raw", "max_length": 64,
                         "forget": {"spec": "text:${book}", "mode": "pairs", "prompt_tokens": 8,
                                    "continuation_tokens": 8, "shuffle": False},
                         # The same split as the evaluation's perplexity_texts (shuffle, holdout, seed).
                         "retain": {"spec": "text:${retain}", "mode": "chunks", "chunk_tokens": 32, "shuffle": False,
                                    "holdout": 2, "seed": 0}},
                "method": {"name": "ga"},
                "train": {**train, "max_steps": 4, "lr": 1e-2},
                "eval": {"enabled": False},
            }},
            {"name": "eval_unlearned", "kind": "eval", "model_from": "unlearn"},
        ],
    }


def _numeric(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def test_reduced_copyright_experiment_end_to_end(tmp_path, model_dir, files, capsys):
    raw = experiment_raw(tmp_path, model_dir, files)
    report = run_experiment(load_experiment(raw=raw))
    folder = tmp_path / "runs" / "tiny-book"
    out = capsys.readouterr().out
    # Every stage says what it does.
    for i, name in enumerate(["eval_original", "finetune", "eval_finetuned", "unlearn", "eval_unlearned"], start=1):
        assert f"[{i}/5] {name}" in out

    # Stage folders, each with its own result; the unlearning stage started from the finetuned model.
    assert (folder / "finetune" / "summary.json").is_file() and (folder / "finetune" / "model" / "config.json").is_file()
    assert (folder / "unlearn" / "summary.json").is_file() and (folder / "unlearn" / "model").is_dir()
    for name in ("eval_original", "eval_finetuned", "eval_unlearned"):
        assert (folder / name / "eval.json").is_file() and (folder / name / "eval.md").is_file()
    unlearn_cfg = yaml.safe_load((folder / "unlearn" / "config.yaml").read_text())
    assert unlearn_cfg["model"]["name"] == str(folder / "finetune" / "model")
    assert unlearn_cfg["method"]["name"] == "ga"

    # Finetuning made the model reproduce the book: held-in pairs' ROUGE-L rose strictly.
    mem = {name: json.loads((folder / name / "eval.json").read_text())["results"]["memorisation"]
           for name in ("eval_original", "eval_finetuned", "eval_unlearned")}
    assert mem["eval_finetuned"]["rouge_l"] > mem["eval_original"]["rouge_l"] + 0.2, mem
    assert mem["eval_finetuned"]["n"] == mem["eval_original"]["n"] >= 5
    # Gradient ascent pushed the book's NLL up and its reproduction down.
    assert mem["eval_unlearned"]["rouge_l"] < mem["eval_finetuned"]["rouge_l"], mem
    log = [json.loads(line) for line in (folder / "unlearn" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["forget_nll"] > log[0]["forget_nll"]

    # The paper's table: three rows, the named columns, numbers in every cell.
    saved = json.loads((folder / "report.json").read_text())
    assert [r["label"] for r in saved["rows"]] == ["Original", "Finetuned", "Unlearned"]
    assert saved["columns"] == [label for _, label in REPORT_COLUMNS]
    for row in saved["rows"]:
        assert all(_numeric(row["values"][c]) for c in saved["columns"]), row
    by_label = {r["label"]: r["values"] for r in saved["rows"]}
    assert by_label["Original"]["Normal similarity to original (cosine)"] == 1.0
    assert by_label["Finetuned"]["Book ROUGE-L"] == pytest.approx(mem["eval_finetuned"]["rouge_l"])
    md = (folder / "report.md").read_text()
    for label in ("Original", "Finetuned", "Unlearned", "Book ROUGE-L", "Book BLEU", "Book embedding cosine",
                  "Retain perplexity"):
        assert label in md
    assert (folder / "compare.md").is_file() and (folder / "compare.png").is_file()
    assert report["rows"] == saved["rows"]

    # A rerun skips every finished stage: nothing is rewritten, the report is.
    markers = [folder / "finetune" / "summary.json", folder / "unlearn" / "summary.json",
               folder / "eval_finetuned" / "eval.json", folder / "finetune" / "model" / "model.safetensors"]
    mtimes = [p.stat().st_mtime_ns for p in markers]
    again = run_experiment(load_experiment(raw=raw))
    assert [s["action"] for s in again["stages"]] == ["skipped"] * 5
    assert [p.stat().st_mtime_ns for p in markers] == mtimes
    assert "done earlier, skipped" in capsys.readouterr().out
    assert again["rows"] == saved["rows"]

    # A finished stage whose config changed is not silently reused...
    changed = experiment_raw(tmp_path, model_dir, files)
    changed["stages"][3]["config"]["train"]["lr"] = 5e-3
    with pytest.raises(ConfigError, match=r"stage 'unlearn' .* --from unlearn"):
        run_experiment(load_experiment(raw=changed))
    # ...and --from reruns it and every later stage, leaving the earlier ones alone.
    finetune_mtime = markers[0].stat().st_mtime_ns
    third = run_experiment(load_experiment(raw=changed), from_stage="unlearn")
    assert [s["action"] for s in third["stages"]] == ["skipped", "skipped", "skipped", "ran", "ran"]
    assert markers[0].stat().st_mtime_ns == finetune_mtime


def test_interrupted_training_stage_resumes(tmp_path, model_dir, files, capsys):
    raw = experiment_raw(tmp_path, model_dir, files)
    raw["stages"] = raw["stages"][1:2]  # the finetune stage alone
    exp = load_experiment(raw=raw)
    # Interrupt it after 20 of 40 steps (a checkpoint is saved there).
    from unlearnkit.train import run_unlearning

    paused = run_unlearning(exp.stages[0].run_config, stop_at=20)
    assert paused["status"] == "paused"
    report_raw = {**raw, "stages": raw["stages"] + [{"name": "eval_finetuned", "kind": "eval"}]}
    result = run_experiment(load_experiment(raw=report_raw))
    assert [s["action"] for s in result["stages"]] == ["resumed", "ran"]
    assert "resuming from the last checkpoint" in capsys.readouterr().out
    summary = json.loads((tmp_path / "runs" / "tiny-book" / "finetune" / "summary.json").read_text())
    assert summary["steps"] == 40 and summary["status"] == "completed"
    steps = [json.loads(line)["step"] for line in
             (tmp_path / "runs" / "tiny-book" / "finetune" / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 41))
    assert [r["label"] for r in result["rows"]] == ["Finetuned"]


# --- the experiment schema -----------------------------------------------------------------------


# Each bad experiment: a path into the raw experiment, the value set there, and the error it must give.
BAD_EXPERIMENTS = [
    (("stages", 2, "modle_from"), "finetune", r"stages\[2\]\.modle_from: unknown key"),
    (("eval", "options", "memorisation_pair"), {}, r"eval\.options\.memorisation_pair: unknown key"),
    (("stages", 1, "config", "train", "lrr"), 1, r"stage 'finetune' \(stages\[1\]\.config\): train\.lrr: unknown key"),
    (("stages", 3, "model_from"), "eval_finetuned",
     r"stages\[3\]\.model_from: 'eval_finetuned' is not an earlier finetune or unlearn"),
    (("stages", 1, "config", "method"), {"name": "ga"}, r"stages\[1\]: a finetune stage runs method finetune"),
    (("stages", 0, "kind"), "evaluate", r"stages\[0\]\.kind"),
    (("vars", "book"), None, r"vars\.book is not set; give it with --set vars\.book="),
]


@pytest.mark.parametrize("path,value,error", BAD_EXPERIMENTS, ids=[".".join(map(str, p)) for p, _, _ in BAD_EXPERIMENTS])
def test_bad_experiment_keys_are_rejected_with_their_path(tmp_path, model_dir, files, path, value, error):
    raw = experiment_raw(tmp_path, model_dir, files)
    node = raw
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(ConfigError, match=error):
        load_experiment(raw=raw)


def test_variables_substitute_with_their_type_or_as_text():
    variables = {"book": "b.txt", "n": 3}
    assert substitute({"a": "text:${book}", "b": ["${n}"], "c": 1}, variables, "") == {"a": "text:b.txt", "b": [3], "c": 1}
    with pytest.raises(ConfigError, match=r"x\.y: \$\{nope\} is not defined in vars \(defined: book, n\)"):
        substitute({"y": "${nope}"}, variables, "x")


def test_default_stage_inputs_and_row_labels(tmp_path, model_dir, files):
    exp = load_experiment(raw=experiment_raw(tmp_path, model_dir, files))
    froms = {s.name: s.model_from for s in exp.stages}
    # An eval stage without model_from measures the latest trained model.
    assert froms == {"eval_original": "original", "finetune": "original", "eval_finetuned": "finetune",
                     "unlearn": "finetune", "eval_unlearned": "unlearn"}
    assert [label for label, _ in exp.report_rows()] == ["Original", "Finetuned", "Unlearned"]
    assert exp.stage("finetune").run_config.method == {"name": "finetune", "add_eos": False}


def test_experiment_without_an_eval_stage_trains_and_says_it_has_no_table(tmp_path, model_dir, files):
    raw = experiment_raw(tmp_path, model_dir, files)
    finetune = next(s for s in raw["stages"] if s["name"] == "finetune")
    finetune["config"]["train"].update(max_steps=2, save_every=None)
    raw["stages"] = [finetune]
    report = run_experiment(load_experiment(raw=raw))
    assert report["rows"] == [] and "No eval stage" in report["markdown_table"]
    assert [s["action"] for s in report["stages"]] == ["ran"]
    folder = tmp_path / "runs" / "tiny-book"
    assert "No eval stage" in (folder / "report.md").read_text()
    assert (folder / "finetune" / "model").is_dir() or (folder / "finetune" / "adapter").is_dir()


# --- shipped experiments ------------------------------------------------------------------------

SHIPPED = sorted((ROOT / "configs" / "copyright").glob("*.yaml"))
EXPERIMENTS = [p for p in SHIPPED if "stages" in (yaml.safe_load(p.read_text()) or {})]


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[p.name for p in EXPERIMENTS])
def test_shipped_experiments_resolve(path, monkeypatch, shared_data):
    monkeypatch.chdir(ROOT)  # shipped files name ../shared/data relative to the project
    oz = str(shared_data / "books" / "dorothy_and_the_wizard_in_oz.txt")
    raw = yaml.safe_load(path.read_text())
    overrides = [f"vars.book={oz}"] if raw.get("vars", {}).get("book") is None else []
    exp = load_experiment(path, overrides)
    kinds = [s.kind for s in exp.stages]
    assert "finetune" in kinds and "unlearn" in kinds and "eval" in kinds
    labels = [label for label, _ in exp.report_rows()]
    assert labels[:2] == ["Original", "Finetuned"] and labels[2].startswith("Unlearned")
    finetune = next(s for s in exp.stages if s.kind == "finetune").run_config
    assert finetune.model.lora.enabled and finetune.model.lora.r == 16 and finetune.model.lora.alpha == 32
    for s in exp.stages:
        if s.kind == "unlearn":
            assert s.run_config.model.name == str(exp.folder / s.model_from / "model")
    if "opt" in path.name:  # the paper's settings
        assert finetune.model.lora.target_modules == ["q_proj", "v_proj"] and finetune.model.lora.dropout == 0.05
        assert finetune.train.lr == 2e-4 and finetune.train.warmup_steps == 100
        assert finetune.train.weight_decay == 0.1 and finetune.train.epochs == 3
        assert finetune.data.forget.chunk_tokens == 2048


def test_shipped_stage_configs_validate_alone(monkeypatch, shared_data):
    monkeypatch.chdir(ROOT)
    stage_files = [p for p in SHIPPED if p not in EXPERIMENTS]
    assert stage_files
    for path in stage_files:
        cfg = load_config(path)
        assert Path(cfg.data.forget.spec.split(":", 1)[1]).is_file()


# --- the finetune method and train.epochs --------------------------------------------------------


def test_finetune_loss_is_the_mean_answer_nll(tiny_llama, smol_tokenizer):
    from unlearnkit.data.tokenize import collate, tokenize_examples
    from unlearnkit.data.types import Example
    from unlearnkit.methods import LossContext, get_method

    examples = [Example("", "The keeper wound the clock."), Example("Once upon", " a time there was a ship.")]
    method = get_method("finetune")()
    toks = tokenize_examples(examples, smol_tokenizer, "raw", 64, add_eos=method.add_eos)
    # No end-of-sequence token: a book does not end after each chunk.
    assert all(t.input_ids[-1] != smol_tokenizer.eos_token_id for t in toks)
    batch = collate(toks, smol_tokenizer.pad_token_id)
    loss, terms = method.loss(LossContext(model=tiny_llama, denominator=lambda m: m.sum()), {"forget": batch})
    # By hand: -log p(token | earlier tokens) over every scored (non-masked) token, averaged.
    with torch.no_grad():
        logits = tiny_llama(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    total, count = 0.0, 0
    for row in range(len(toks)):
        for t in range(1, batch["input_ids"].shape[1]):
            label = int(batch["labels"][row, t])
            if label == -100:
                continue
            total -= float(torch.log_softmax(logits[row, t - 1].double(), -1)[label])
            count += 1
    assert loss.item() == pytest.approx(total / count, rel=1e-4)
    assert terms["forget_nll"] == pytest.approx(loss.item())


def book_finetune_raw(tmp_path, name: str, model_dir, book) -> dict:
    """A run config that learns the book's 32-token chunks in order, without evaluation (add method, train)."""
    return {
        "name": name, "output_dir": str(tmp_path / "runs"),
        "model": {"name": str(model_dir), "lora": LORA},
        "data": {"template": "raw", "max_length": 64,
                 "forget": {"spec": f"text:{book}", "mode": "chunks", "chunk_tokens": 32, "shuffle": False}},
        "eval": {"enabled": False},
    }


def test_train_epochs_become_exact_steps(tmp_path, model_dir, smol_tokenizer, files, capsys):
    from unlearnkit.data.spec import load_examples
    from unlearnkit.train import run_unlearning

    book, _, _ = files
    raw = {**book_finetune_raw(tmp_path, "epochs", model_dir, book), "method": {"name": "finetune"},
           "train": {"epochs": 1.5, "batch_size": 4, "lr": 1e-3, "progress": False, "save": "none"}}
    cfg = load_config(raw=raw)
    n_chunks = len(load_examples(cfg.data.forget, smol_tokenizer))
    summary = run_unlearning(cfg)
    expected = math.ceil(1.5 * math.ceil(n_chunks / 4))
    assert summary["steps"] == summary["max_steps"] == expected
    saved = yaml.safe_load((tmp_path / "runs" / "epochs" / "config.yaml").read_text())
    assert saved["train"]["max_steps"] == expected and saved["train"]["epochs"] is None
    assert load_config(raw=saved).train.max_steps == expected  # the saved config reloads as the same run
    with pytest.raises(ConfigError, match=r"train: give train\.epochs or train\.max_steps, not both"):
        load_config(raw={**raw, "train": {**raw["train"], "max_steps": 3}})
    assert load_config(raw=raw, overrides=["train.max_steps=null"]).train.epochs == 1.5


def test_finetune_command_checks_the_method(tmp_path, model_dir, files, capsys):
    import argparse

    from unlearnkit.experiment import add_commands

    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command"))
    book, _, _ = files
    cfg = {**book_finetune_raw(tmp_path, "ft", model_dir, book),
           "train": {"max_steps": 2, "batch_size": 4, "lr": 1e-3, "progress": False}}
    path = tmp_path / "ft.yaml"
    path.write_text(yaml.safe_dump(cfg))
    # No method section: finetune is set.
    args = parser.parse_args(["finetune", str(path)])
    assert args.func(args) == 0
    saved = yaml.safe_load((tmp_path / "runs" / "ft" / "config.yaml").read_text())
    assert saved["method"]["name"] == "finetune" and (tmp_path / "runs" / "ft" / "model").is_dir()
    args = parser.parse_args(["finetune", str(path), "--set", "method.name=ga", "--overwrite"])
    with pytest.raises(ConfigError, match="method.name is 'ga'; `unlearnkit finetune` runs method finetune"):
        args.func(args)


def test_two_text_retain_corpora_keep_their_own_held_out_sets(tmp_path, smol_tokenizer, files):
    from unlearnkit.methods import get_method
    from unlearnkit.train import prepare_data

    book, retain, _ = files
    other = tmp_path / "other.txt"
    other.write_text(BOOK.upper() * 2)
    chunks = {"mode": "chunks", "chunk_tokens": 16, "holdout": 2, "seed": 0}
    cfg = load_config(raw={
        "data": {"template": "raw", "forget": {"spec": f"text:{book}", "mode": "pairs", "prompt_tokens": 8,
                                                "continuation_tokens": 8},
                 "retain": [{"spec": f"text:{retain}", **chunks}, {"spec": f"text:{other}", **chunks}]},
        "method": {"name": "gradient_difference"},
    })
    data = prepare_data(cfg, smol_tokenizer, get_method("gradient_difference"))
    assert {"retain_text_heldout", "retain_text_1_heldout"} <= set(data.heldout)
    assert data.heldout["retain_text_heldout"] != data.heldout["retain_text_1_heldout"]
    assert data.descriptions["retain_text"] != data.descriptions["retain_text_1"]
