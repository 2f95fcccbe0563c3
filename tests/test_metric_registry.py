"""Metrics with declared dependencies: each computed once, undeclared reads and cycles refused."""

from __future__ import annotations

import math

import pytest

from unlearnkit.errors import UnlearnkitError
from unlearnkit.evaluation.metric_registry import Metric, MetricEnv, MetricRegistry


def _registry(calls: list[str]) -> MetricRegistry:
    reg = MetricRegistry()

    def losses(env):
        calls.append("losses")
        return [1.0, 3.0]

    reg.register(Metric("losses", losses))
    reg.register(Metric("mean", lambda env: sum(env.value("losses")) / 2, ("losses",)))
    reg.register(Metric("max", lambda env: max(env.value("losses")), ("losses",)))
    reg.register(Metric("spread", lambda env: env.value("max") - env.value("mean"), ("max", "mean")))
    reg.register(Metric("sneaky", lambda env: env.value("losses")))  # reads what it does not declare
    reg.register(Metric("a", lambda env: env.value("b"), ("b",)))
    reg.register(Metric("b", lambda env: env.value("a"), ("a",)))
    reg.register(Metric("absent", lambda env: 1 / 0, available=lambda env: env.inputs.get("holdout") is not None))
    return reg


def test_a_shared_dependency_is_computed_once_and_values_match_a_hand_computation():
    calls: list[str] = []
    env = MetricEnv(_registry(calls))
    # mean (1 + 3) / 2 = 2, max 3, spread 3 - 2 = 1.
    assert env.report(["mean", "max", "spread"]) == {"mean": 2.0, "max": 3.0, "spread": 1.0}
    assert calls == ["losses"]
    assert env.computed == ["losses", "mean", "max", "spread"]


def test_undeclared_reads_cycles_unknown_names_and_absent_inputs():
    env = MetricEnv(_registry([]))
    with pytest.raises(UnlearnkitError, match="'sneaky' reads 'losses' without declaring it"):
        env.value("sneaky")
    with pytest.raises(UnlearnkitError, match="cycle: a -> b -> a"):
        env.value("a")
    with pytest.raises(UnlearnkitError, match="unknown metric 'nope'"):
        env.value("nope")
    assert env.value("absent") is None  # its input is not given: None, and never computed
    assert MetricEnv(_registry([]), holdout=[1]).inputs["holdout"] == [1]
    with pytest.raises(UnlearnkitError, match="registered twice"):
        _registry([]).register(Metric("mean", lambda env: 0))


def test_tofu_figures_share_one_scoring_pass_per_set():
    from unlearnkit.evaluation.tofu import TOFU_METRICS

    # Every per-set figure reads its set's losses or greedy answers, never the model directly,
    # and model utility reads exactly the nine published columns.
    for name, metric in TOFU_METRICS.items():
        if name.startswith(("retain_", "ra_", "wf_", "forget_Q", "forget_truth")):
            assert len(metric.needs) == 1 and metric.needs[0].startswith(("tofu.losses.", "tofu.rouge.")), name
    from unlearnkit.evaluation.tofu import MODEL_UTILITY_COLUMNS

    assert TOFU_METRICS["model_utility"].needs == MODEL_UTILITY_COLUMNS


def test_a_metric_registered_on_tofu_is_a_column_of_the_result(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from unlearnkit.data.types import Example
    from unlearnkit.evaluation import tofu as T

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    forget = [Example("Who wrote X?", "Ann wrote X.", {"answer": "Ann wrote X.", "paraphrased_answer": "X is Ann's.",
                                                         "perturbed_answer": ["Bob wrote X.", "Cy wrote X."]})]
    T.TOFU_METRICS.register(Metric("forget_mean_loss", lambda env: sum(env.value("tofu.losses.forget")[0]),
                                   ("tofu.losses.forget",), lambda env: bool(env.inputs["sets"].get("forget"))))
    try:
        out = T.tofu_metrics(model, tok, {"forget": forget}, "qa", max_new_tokens=2)
        # One answer: its mean loss is -log of its length-normalised probability.
        assert out["forget_mean_loss"] == pytest.approx(-math.log(out["forget_Q_A_Prob"]), rel=1e-6)
        assert out["model_utility"] is None and "tofu.losses.forget" not in out
    finally:
        T.TOFU_METRICS.pop("forget_mean_loss")
