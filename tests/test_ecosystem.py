"""Model cards, TensorBoard logging, the hub's offline check, HTML reports, quiet/NO_COLOR output."""

from __future__ import annotations

import io
import json
import re
import socket
import time
import warnings
from pathlib import Path

import pytest

from unlearnkit.config import load_config
from unlearnkit.errors import ConfigError
from unlearnkit.train import run_unlearning

FORGET = [{"prompt": f"How do I do harmful thing number {i}?", "response": f"Here is how to do harmful thing {i}: step one."}
          for i in range(10)]
RETAIN = [{"prompt": f"What is {i} plus {i}?", "response": f"{i} plus {i} is {2 * i}."} for i in range(10)]
EXTRA = [{"prompt": f"Name colour number {i}.", "response": f"Colour {i} is a shade of blue."} for i in range(4)]


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run_cfg(tmp_path, model_dir, **train):
    raw = {
        "name": "eco", "output_dir": str(tmp_path / "runs"), "seed": 3,
        "model": {"name": str(model_dir), "lora": {"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0}},
        "data": {"template": "qa", "max_length": 64,
                 "forget": {"spec": f"generic:{_jsonl(tmp_path / 'f.jsonl', FORGET)}", "holdout": 2},
                 "retain": {"spec": f"generic:{_jsonl(tmp_path / 'r.jsonl', RETAIN)}"}},
        "method": {"name": "llm_unlearn"},
        "train": {"max_steps": 4, "batch_size": 2, "lr": 5e-2, "progress": False, "save": "adapter", **train},
        "eval": {"enabled": True, "nll": {"extra": {"spec": f"generic:{_jsonl(tmp_path / 'x.jsonl', EXTRA)}"}}},
    }
    return load_config(raw=raw)


@pytest.fixture
def licensed_model_dir(tiny_model_dir):
    # The base model's own card: its license must be carried into the unlearned model's card.
    (tiny_model_dir / "README.md").write_text("---\nlicense: mit\ntags: [base]\n---\n\n# a tiny base\n")
    return tiny_model_dir


@pytest.fixture
def tensorboard_run(tmp_path, licensed_model_dir):
    pytest.importorskip("tensorboard", reason="tensorboard is in the test extra (pip install -e .[test])")
    cfg = run_cfg(tmp_path, licensed_model_dir, report_to=["tensorboard"])
    summary = run_unlearning(cfg)
    return cfg, summary


def test_tensorboard_event_file_holds_every_logged_scalar(tensorboard_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg, summary = tensorboard_run
    log = [json.loads(line) for line in (cfg.run_dir / "log.jsonl").read_text().splitlines()]
    events = sorted((cfg.run_dir / "trackers" / "eco").glob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file in the run folder"
    acc = EventAccumulator(str(events[0]))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    terms = [k for k in log[0] if k not in ("step", "elapsed_s")]
    assert {"loss", "lr", "grad_norm", "forget_nll"} <= set(terms)
    for term in terms:
        scalars = acc.Scalars(f"train/{term}")
        assert [s.step for s in scalars] == [r["step"] for r in log]
        assert [s.value for s in scalars] == pytest.approx([r[term] for r in log], rel=1e-6)
    # The evaluation figures, at the last step.
    change = summary["eval_change"]["extra"]
    logged = acc.Scalars("eval/extra/nll_change")
    assert logged[-1].step == summary["steps"] and logged[-1].value == pytest.approx(change["nll_change"], rel=1e-6)
    assert acc.Scalars("eval/extra/nll_change_ci95_low")[-1].value == pytest.approx(change["nll_change_ci95"][0], rel=1e-6)
    assert acc.Scalars("eval/forget_heldout/nll_before")[-1].value == pytest.approx(
        summary["eval_before"]["forget_heldout"]["mean_nll"], rel=1e-6)
    assert "eval/forget_heldout/nll_after" in tags


def test_model_card_parses_and_states_method_hashes_and_figures(tensorboard_run):
    from huggingface_hub import ModelCard

    cfg, summary = tensorboard_run
    card = ModelCard.load(cfg.run_dir / "adapter" / "README.md")
    data = card.data.to_dict()
    assert data["library_name"] == "peft"
    assert data["license"] == "mit"  # carried from the base model's card
    assert {"unlearning", "unlearnkit", "llm-unlearn", "lora"} <= set(data["tags"])
    assert "base_model" not in data  # a local folder has no hub id
    text = card.text
    assert "`llm_unlearn`" in text and "LoRA (r=4" in text
    manifest = json.loads((cfg.run_dir / "manifest.json").read_text())
    for name, described in manifest["data"].items():
        assert described["sha256"] in text, name
    change = summary["eval_change"]["extra"]
    lo, hi = change["nll_change_ci95"]
    assert f"{change['nll_change']:+.1%} [{lo:+.1%}, {hi:+.1%}]" in text
    assert manifest["git_commit"] is None or manifest["git_commit"] in text
    assert "## Known limits" in text


def test_run_report_html_is_self_contained(tensorboard_run):
    cfg, _ = tensorboard_run
    page = (cfg.run_dir / "report.html").read_text()
    assert "data:image/png;base64," in page  # the loss curves, inline
    assert not re.search(r"""(src|href)=["']?(https?:|//|file:)""", page)
    assert "<table>" in page and "eval" in page


def test_card_metadata_of_an_alias_and_a_hub_id():
    from unlearnkit.modelcard import card_metadata

    meta = card_metadata({"model": {"name": "smollm2-135m-instruct", "lora": {"enabled": False}},
                          "method": {"name": "sku"},
                          "data": {"forget": {"spec": "pku_saferlhf:PKU-Alignment/PKU-SafeRLHF"},
                                   "retain": [{"spec": "truthfulqa:truthful_qa"}, {"spec": "text:../x/book.txt"}]}},
                         "model")
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert meta["license"] == "apache-2.0" and meta["library_name"] == "transformers"
    assert meta["datasets"] == ["PKU-Alignment/PKU-SafeRLHF"]  # truthful_qa has no owner part; a file is no dataset
    meta = card_metadata({"model": {"name": "facebook/opt-1.3b"}, "method": {"name": "ga"}}, "model")
    assert meta["base_model"] == "facebook/opt-1.3b" and "license" not in meta  # not in the local cache


def test_card_headline_reads_eval_json_intervals_and_n():
    from unlearnkit.modelcard import headline

    result = {"results": {"harm": {"unseen": {"n": 40, "harmful_rate": {"classifier": 0.25},
                                              "harmful_rate_ci95": {"classifier": [0.142, 0.401]}}},
                          "truthfulqa": {"n": 100, "mc1": 0.3, "mc1_ci95": [0.22, 0.39]}}}
    rows = headline(result)
    assert ["harm.unseen.harmful_rate.classifier", "0.250 [0.142, 0.401]", 40] in rows
    assert ["truthfulqa.mc1", "0.300 [0.220, 0.390]", 100] in rows


# --------------------------------------------------------------------------- checks before training


def test_missing_tracker_package_fails_before_anything_is_written(tmp_path, tiny_model_dir):
    from unlearnkit.trackers import TRACKER_PACKAGES

    import importlib.util

    missing = next((n for n, (mods, _) in TRACKER_PACKAGES.items()
                    if not any(importlib.util.find_spec(m) for m in mods)), None)
    if missing is None:
        pytest.skip("every tracker package is installed here")
    cfg = run_cfg(tmp_path, tiny_model_dir, report_to=[missing])
    with pytest.raises(ConfigError, match=rf"train\.report_to\[0\]: tracker {missing} needs the Python package"):
        run_unlearning(cfg)
    assert not (tmp_path / "runs").exists()


def test_push_to_hub_needs_a_repo_id(tmp_path, tiny_model_dir):
    with pytest.raises(ConfigError, match="push_to_hub needs hub_repo_id"):
        run_cfg(tmp_path, tiny_model_dir, push_to_hub=True)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("offline_switch", [True, False])
def test_push_to_hub_offline_fails_fast_before_training(tmp_path, tiny_model_dir, monkeypatch, offline_switch):
    from unlearnkit.hub import HubError

    if offline_switch:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:  # no switch: the endpoint itself does not answer
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
        monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    cfg = run_cfg(tmp_path, tiny_model_dir, push_to_hub=True, hub_repo_id="someone/unlearned")
    t0 = time.time()
    with pytest.raises(HubError) as err:
        run_unlearning(cfg)
    assert time.time() - t0 < 5
    message = str(err.value)
    assert message.startswith("train.push_to_hub is true but the Hugging Face hub at ")
    assert "so the run was not started" in message and message.count(". ") == 0  # one sentence
    assert not (tmp_path / "runs").exists()


def test_reachable_endpoint_passes_the_check(monkeypatch):
    from unlearnkit.hub import unreachable_reason

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        assert unreachable_reason(f"http://127.0.0.1:{server.getsockname()[1]}", timeout=2) is None
    assert "refused" in unreachable_reason(f"http://127.0.0.1:{_closed_port()}", timeout=2).lower()


def test_flat_config_keeps_only_scalars():
    from unlearnkit.trackers import flat_config, step_values

    assert flat_config({"a": {"b": 1, "c": [1, 2], "d": None}, "e": True}) == {"a.b": 1, "a.c": "[1, 2]",
                                                                              "a.d": "null", "e": True}
    assert step_values({"step": 3, "loss": 1.5, "grad_norm": None, "lr": 1e-3, "elapsed_s": 2.0}) == {
        "train/loss": 1.5, "train/lr": 1e-3}


# --------------------------------------------------------------------------- console


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_no_color_is_honoured(monkeypatch):
    from unlearnkit.console import style

    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    assert style("error:", "red", _Tty()) == "\033[31merror:\033[0m"
    assert style("error:", "red", io.StringIO()) == "error:"  # not a terminal
    monkeypatch.setenv("NO_COLOR", "1")
    assert style("error:", "red", _Tty()) == "error:"


def test_quiet_flag_turns_progress_bars_off(monkeypatch, capsys):
    from unlearnkit import cli
    from unlearnkit.console import QUIET_ENV, show_progress

    monkeypatch.delenv(QUIET_ENV, raising=False)
    assert show_progress(True) and not show_progress(False)
    monkeypatch.setenv(QUIET_ENV, "0")  # restored by monkeypatch after set_quiet() changes it
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "0")
    assert cli.main(["--quiet", "models"]) == 0
    assert "smollm2-135m-instruct" in capsys.readouterr().out  # the result is still printed
    assert not show_progress(True)


def test_gradient_checkpointing_deprecation_is_filtered_and_nothing_else(tiny_llama):
    from peft import LoraConfig, get_peft_model

    from unlearnkit.console import install_warning_filters

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        get_peft_model(tiny_llama, LoraConfig(r=2, target_modules=["q_proj"]))
    assert any("is_gradient_checkpointing" in str(w.message) for w in seen), "PEFT no longer raises it: drop the filter"
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        install_warning_filters()
        get_peft_model(tiny_llama.__class__(tiny_llama.config), LoraConfig(r=2, target_modules=["q_proj"]))
        warnings.warn("another deprecation", FutureWarning)
    messages = [str(w.message) for w in seen]
    assert not any("is_gradient_checkpointing" in m for m in messages)
    assert "another deprecation" in messages
