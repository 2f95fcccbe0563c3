"""Run configs: shipped files validate, defaults fill in, errors name the key, --set works."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from unlearnkit.config import RunConfig, dump_config, load_config, parse_override
from unlearnkit.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "configs").glob("*.yaml"))


@pytest.fixture
def at_root(monkeypatch):
    # Shipped configs name their data relative to the project root (../shared/data).
    monkeypatch.chdir(ROOT)
    return ROOT


def write(tmp_path: Path, data: dict | str, name: str = "cfg.yaml") -> Path:
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return p


def config_error(**kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(**kwargs)
    return str(info.value)


# --- shipped configs -------------------------------------------------------------------------


def test_there_are_shipped_configs():
    assert SHIPPED, f"no configs/*.yaml in {ROOT}"


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_config_validates(path, at_root, shared_data):
    cfg = load_config(path)
    raw = yaml.safe_load(path.read_text())
    assert isinstance(cfg, RunConfig)
    assert cfg.name == raw["name"]
    assert cfg.method["name"] == raw["method"]["name"]
    # Every named local data file resolves to a real file (validation checked it; so do we).
    # Hub names (the published GPU configs) are loaded by name for users with network.
    sources = [cfg.data.forget, cfg.data.random, *cfg.data.retain_sources, *cfg.eval.nll.values()]
    for ds in filter(None, sources):
        location = ds.spec.split(":", 1)[-1]
        if location.startswith((".", "/")):
            assert Path(location).is_file(), location
        else:
            assert "/" in location or "_" in location, f"{location} is neither a local path nor a hub name"


SMOL = ROOT / "configs" / "smollm2-pku-llm_unlearn.yaml"


def test_shipped_config_matches_its_file(at_root, shared_data):
    # The resolved values are the file's values (compared with the YAML read independently).
    raw = yaml.safe_load(SMOL.read_text())
    cfg = load_config(SMOL)
    assert cfg.model.name == raw["model"]["name"]
    assert cfg.model.lora.enabled is raw["model"]["lora"]["enabled"]
    assert cfg.model.lora.target_modules == raw["model"]["lora"]["target_modules"]
    assert cfg.train.lr == pytest.approx(float(raw["train"]["lr"]))
    assert cfg.train.max_steps == raw["train"]["max_steps"]
    assert cfg.data.forget.spec == raw["data"]["forget"]["spec"]
    assert cfg.data.forget.limit == raw["data"]["forget"]["limit"]
    retain = raw["data"]["retain"]
    retain = retain if isinstance(retain, list) else [retain]
    assert [ds.spec for ds in cfg.data.retain_sources] == [r["spec"] for r in retain]
    for key, value in raw["method"].items():
        assert cfg.method[key] == value
    assert cfg.run_dir == Path(raw["output_dir"]) / raw["name"]


# --- defaults ----------------------------------------------------------------------------------


def test_defaults_are_filled_in():
    cfg = load_config(raw={"method": {"name": "llm_unlearn"}})
    assert cfg.train.scheduler == "linear"
    assert cfg.train.max_steps == 1000
    assert cfg.train.batch_size == 2
    assert cfg.train.lr == pytest.approx(2e-6)
    assert cfg.data.template == "qa"
    assert cfg.model.name == "smollm2-135m-instruct"
    assert cfg.model.lora.enabled is False
    assert cfg.model.lora.r == 8
    assert cfg.method == {
        "name": "llm_unlearn",
        "forget_eos": "ascend",
        "forget_weight": 0.5,
        "random_weight": 1.0,
        "retain_weight": 1.0,
        "num_random": 5,
    }


def test_empty_config_defaults_to_llm_unlearn():
    cfg = load_config(raw={})
    assert cfg.method["name"] == "llm_unlearn"
    assert cfg.method["num_random"] == 5


def test_given_method_params_are_kept_and_rest_filled():
    cfg = load_config(raw={"method": {"name": "llm_unlearn", "num_random": 3}})
    assert cfg.method["num_random"] == 3
    assert cfg.method["forget_weight"] == 0.5
    params = cfg.method_params()
    assert params.num_random == 3 and params.retain_weight == 1.0


def test_empty_yaml_file_gives_defaults(tmp_path):
    cfg = load_config(write(tmp_path, ""))
    assert cfg == load_config(raw={})


# --- errors name the key or the file -----------------------------------------------------------


@pytest.mark.parametrize(
    "raw, key",
    [
        ({"foo": 1}, "foo"),
        ({"train": {"lrr": 1e-4}}, "train.lrr"),
        ({"model": {"lora": {"rank": 4}}}, "model.lora.rank"),
        ({"method": {"name": "llm_unlearn", "foo": 1}}, "method.foo"),
        ({"data": {"forget": {"spec": "x.json", "subsett": "safe"}}}, "data.forget.subsett"),
    ],
    ids=["top", "train", "lora", "method", "data-source"],
)
def test_unknown_key_is_named(tmp_path, raw, key):
    path = write(tmp_path, raw)
    msg = config_error(path=path)
    assert f"{key}: unknown key" in msg
    assert str(path) in msg


def test_wrong_type_is_named(tmp_path):
    path = write(tmp_path, {"train": {"batch_size": "two"}})
    msg = config_error(path=path)
    assert "train.batch_size" in msg
    assert "integer" in msg
    assert "'two'" in msg
    assert str(path) in msg


@pytest.mark.parametrize(
    "override, key, got",
    [("train.lr=-1", "train.lr", "-1"), ("model.lora.dropout=1.5", "model.lora.dropout", "1.5"),
     ("train.lr=2", "train.lr", "2"), ("train.max_steps=0", "train.max_steps", "0")],
)
def test_out_of_range_value_is_named(override, key, got):
    msg = config_error(raw={}, overrides=[override])
    assert msg.startswith("invalid config")
    assert f"{key}:" in msg
    assert f"(got {got})" in msg


def test_out_of_range_method_param_is_named():
    msg = config_error(raw={"method": {"name": "llm_unlearn", "num_random": 0}})
    assert "method.num_random" in msg
    assert "greater than or equal to 1" in msg


def test_several_errors_are_all_reported():
    msg = config_error(raw={"train": {"lrr": 1, "batch_size": 0}})
    assert "train.lrr: unknown key" in msg
    assert "train.batch_size" in msg


def test_missing_data_file_is_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, {"data": {"forget": {"spec": "../nope.json"}}})
    msg = config_error(path=path)
    assert "data.forget.spec" in msg
    assert "../nope.json" in msg
    assert "does not exist" in msg


def test_missing_data_file_with_recipe_prefix_is_named(tmp_path):
    missing = tmp_path / "gone" / "pku.json"
    msg = config_error(raw={"data": {"retain": {"spec": f"pku_saferlhf:{missing}"}}})
    assert "data.retain.spec:" in msg
    assert str(missing) in msg


def test_missing_file_in_a_retain_list_is_named_by_index(tmp_path, shared_data):
    present = shared_data / "truthfulqa" / "TruthfulQA.csv"
    missing = tmp_path / "c4.json"
    msg = config_error(raw={"data": {"retain": [{"spec": f"truthfulqa:{present}"}, {"spec": f"text:{missing}"}]}})
    assert "data.retain[1].spec:" in msg
    assert str(missing) in msg


@pytest.mark.parametrize(
    "retain, expected",
    [
        ({"spec": "x.json", "subsett": "safe"}, "data.retain.subsett: unknown key"),
        ({"spec": "x.json", "limit": 0}, "data.retain.limit: Input should be greater than or equal to 1"),
        ([{"spec": "x.json"}, {"spec": "y.json", "subsett": "safe"}], "data.retain[1].subsett: unknown key"),
    ],
    ids=["one-unknown", "one-range", "list-unknown"],
)
def test_retain_errors_name_the_key_not_the_union(retain, expected):
    msg = config_error(raw={"data": {"retain": retain}})
    assert expected in msg
    # Only the branch that matches the input's shape is reported, without type names.
    assert "DataSourceConfig" not in msg
    assert "valid list" not in msg and "valid dictionary" not in msg
    assert msg.count(";") == 0


def test_missing_eval_file_is_named(tmp_path):
    missing = tmp_path / "c4.json"
    msg = config_error(raw={"eval": {"nll": {"c4": {"spec": f"text:{missing}"}}}})
    assert "eval.nll.c4.spec" in msg
    assert str(missing) in msg


def test_hub_name_is_not_checked_as_a_file():
    cfg = load_config(raw={"data": {"forget": {"spec": "pku_saferlhf:PKU-Alignment/PKU-SafeRLHF"}}})
    assert cfg.data.forget.spec == "pku_saferlhf:PKU-Alignment/PKU-SafeRLHF"


def test_missing_config_file_is_named(tmp_path):
    path = tmp_path / "absent.yaml"
    msg = config_error(path=path)
    assert str(path) in msg
    assert "does not exist" in msg


def test_invalid_yaml_is_named(tmp_path):
    path = write(tmp_path, "train:\n  lr: [1e-4\n  batch_size: 2\n")
    msg = config_error(path=path)
    assert str(path) in msg
    assert "not valid YAML" in msg


def test_yaml_that_is_not_a_mapping_is_refused(tmp_path):
    path = write(tmp_path, "- a\n- b\n")
    msg = config_error(path=path)
    assert str(path) in msg
    assert "mapping" in msg


def test_unknown_method_lists_known_ones():
    msg = config_error(raw={"method": {"name": "forgetify"}})
    assert "method.name" in msg
    assert "'forgetify'" in msg
    for known in ("ga", "gradient_difference", "llm_unlearn"):
        assert known in msg


def test_method_without_name_is_refused():
    msg = config_error(raw={"method": {"forget_weight": 1.0}})
    assert msg.startswith("invalid config: method.name is required")
    assert "<root>" not in msg and "Value error" not in msg


# --- --set overrides ---------------------------------------------------------------------------


def test_set_overrides_are_typed():
    cfg = load_config(
        raw={},
        overrides=[
            "train.lr=1e-4",
            "train.max_steps=2",
            "output_dir=/tmp/x",
            "model.lora.target_modules=[q_proj, v_proj]",
            "model.lora.enabled=true",
        ],
    )
    assert isinstance(cfg.train.lr, float) and cfg.train.lr == pytest.approx(1e-4)
    assert cfg.train.max_steps == 2
    assert cfg.output_dir == "/tmp/x"
    assert cfg.model.lora.target_modules == ["q_proj", "v_proj"]
    assert cfg.model.lora.enabled is True


def test_set_overrides_a_file_value(tmp_path):
    path = write(tmp_path, {"train": {"lr": 0.001, "max_steps": 50}})
    cfg = load_config(path, ["train.max_steps=7"])
    assert cfg.train.max_steps == 7
    assert cfg.train.lr == pytest.approx(0.001)


def test_set_creates_nested_sections(shared_data):
    pku = shared_data / "pku_saferlhf" / "pku_saferlhf_5k.json"
    cfg = load_config(raw={}, overrides=[f"data.forget.spec=pku_saferlhf:{pku}", "data.forget.limit=5"])
    assert cfg.data.forget.limit == 5
    assert cfg.data.forget.spec == f"pku_saferlhf:{pku}"
    assert cfg.data.forget.subset == "unsafe"  # default of the new section


def test_set_into_existing_data_section(at_root, shared_data):
    raw = yaml.safe_load(SMOL.read_text())
    cfg = load_config(SMOL, ["data.forget.limit=5", "data.forget.subset=both"])
    assert cfg.data.forget.limit == 5
    assert cfg.data.forget.subset == "both"
    assert cfg.data.forget.holdout == raw["data"]["forget"]["holdout"]  # the rest of the section is kept
    assert cfg.data.forget.spec == raw["data"]["forget"]["spec"]


def test_set_can_replace_a_retain_list_with_one_source(at_root, shared_data):
    tqa = shared_data / "truthfulqa" / "TruthfulQA.csv"
    cfg = load_config(SMOL, [f"data.retain={{spec: 'truthfulqa:{tqa}', answers: correct}}"])
    assert [ds.spec for ds in cfg.data.retain_sources] == [f"truthfulqa:{tqa}"]
    assert cfg.data.retain_sources[0].answers == "correct"


def test_set_into_method_params():
    cfg = load_config(raw={"method": {"name": "llm_unlearn"}}, overrides=["method.num_random=2", "method.forget_weight=0.25"])
    assert cfg.method["num_random"] == 2
    assert cfg.method["forget_weight"] == 0.25


def test_set_can_switch_method_and_drop_stale_defaults():
    cfg = load_config(raw={"method": {"name": "ga"}}, overrides=["train.scheduler=cosine"])
    assert cfg.method == {"name": "ga", "forget_eos": "ascend"}  # ga's own defaults only, none of llm_unlearn's
    assert cfg.train.scheduler == "cosine"


def test_set_unknown_key_is_named():
    msg = config_error(raw={}, overrides=["train.lrr=1e-4"])
    assert "train.lrr: unknown key" in msg


def test_malformed_override_names_the_item():
    msg = config_error(raw={}, overrides=["train.lr"])
    assert "'train.lr'" in msg
    assert "key.path=value" in msg


def test_override_with_empty_key_part_is_refused():
    with pytest.raises(ConfigError, match=r"'train\.\.lr=1'.*empty key part"):
        parse_override("train..lr=1")


def test_override_through_a_value_is_refused():
    msg = config_error(raw={"output_dir": "runs"}, overrides=["output_dir.sub=1"])
    assert "'output_dir.sub=1'" in msg
    assert "output_dir is a value, not a section" in msg


def test_override_with_bad_yaml_value_names_the_item():
    msg = config_error(raw={}, overrides=["model.lora.target_modules=[q_proj"])
    assert "model.lora.target_modules=[q_proj" in msg
    assert "not valid YAML" in msg


def test_override_does_not_modify_the_raw_dict():
    raw = {"train": {"max_steps": 10}}
    load_config(raw=raw, overrides=["train.max_steps=3"])
    assert raw == {"train": {"max_steps": 10}}


# --- dump_config round trip --------------------------------------------------------------------


def test_dump_config_round_trips(at_root, shared_data):
    cfg = load_config(SMOL, ["model.lora.target_modules=[q_proj, v_proj]", "train.scheduler=linear"])
    text = dump_config(cfg)
    again = load_config(raw=yaml.safe_load(text))
    assert again == cfg
    assert again.model.lora.target_modules == ["q_proj", "v_proj"]
    # The dump shows every default, including the method's filled-in params.
    dumped = yaml.safe_load(text)
    assert dumped["train"]["scheduler"] == "linear"
    assert dumped["method"]["num_random"] == cfg.method["num_random"]
    assert dumped["train"]["grad_accum"] == 1  # a default the file does not set
    assert dumped["data"]["forget"]["spec"].startswith("pku_saferlhf:")


def test_dump_config_round_trips_through_a_file(tmp_path):
    cfg = load_config(raw={"name": "tiny", "method": {"name": "gradient_difference", "retain_weight": 2}})
    path = write(tmp_path, dump_config(cfg), "dumped.yaml")
    again = load_config(path)
    assert again == cfg
    assert again.method == {"name": "gradient_difference", "forget_eos": "ascend", "forget_weight": 1.0, "retain_weight": 2.0}
