"""Intervals on every figure: Wilson for rates, a seeded paired bootstrap for changes of a mean."""

from __future__ import annotations

import math

import pytest

from unlearnkit.evaluation.stats import (
    bootstrap_mean,
    fmt_change,
    fmt_rate,
    rate,
    rate_ci,
    relative_change,
    two_rate_difference,
    verdict,
    wilson,
)


def test_wilson_against_hand_values():
    # p = 0.5, n = 10, z = 1.96: centre 0.5, half-width 1.96*sqrt(0.025 + z^2/400)/(1 + z^2/10).
    z = 1.959963984540054
    half = z * math.sqrt(0.025 + z * z / 400) / (1 + z * z / 10)
    lo, hi = wilson(5, 10)
    assert lo == pytest.approx(0.5 - half) and hi == pytest.approx(0.5 + half)
    assert (round(lo, 4), round(hi, 4)) == (0.2366, 0.7634)
    # k = 0: the lower end is 0, the upper end z^2/n / (1 + z^2/n).
    lo, hi = wilson(0, 10)
    assert lo == 0.0 and hi == pytest.approx((z * z / 10) / (1 + z * z / 10))
    assert wilson(10, 10)[1] == 1.0 and wilson(0, 0) is None
    with pytest.raises(ValueError):
        wilson(11, 10)


def test_rate_and_rate_ci():
    r = rate([True, False, True, True])
    assert r["rate"] == 0.75 and r["k"] == 3 and r["n"] == 4 and r["ci95"] == list(wilson(3, 4))
    assert rate_ci(0.75, 4) == list(wilson(3, 4)) and rate_ci(None, 4) is None
    assert fmt_rate(r) .startswith("0.750 [") and fmt_rate(r).endswith("(n=4)")


def test_newcombe_difference_matches_the_published_example():
    # Newcombe (1998), Statistics in Medicine 17:873, example (a): 56/70 vs 48/80,
    # method 10 (hybrid score): difference 0.2000, 95% interval 0.0524 to 0.3339.
    d = two_rate_difference(48, 80, 56, 70)
    assert d["difference"] == pytest.approx(0.2)
    assert [round(v, 4) for v in d["ci95"]] == [0.0524, 0.3339]
    assert d["verdict"] == "increase"


def test_relative_change_point_value_by_hand():
    # Token-weighted means: before (1*1 + 2*1 + 3*2)/4 = 2.25, after (2 + 2 + 6)/4 = 2.5.
    c = relative_change([1, 2, 3], [2, 2, 3], [1, 1, 2])
    assert c["change"] == pytest.approx(0.25 / 2.25) and c["n"] == 3
    assert relative_change([1, 2, 3], [2, 2, 3], [1, 1, 2], exp=True)["change"] == pytest.approx(math.expm1(0.25))
    lo, hi = c["ci95"]
    assert lo <= c["change"] <= hi


def test_bootstrap_is_deterministic_for_a_seed_and_resamples_pairs():
    before = [1.0 + 0.1 * i for i in range(40)]
    after = [b * 1.5 + (0.05 if i % 2 else -0.05) for i, b in enumerate(before)]
    a = relative_change(before, after, seed=3)
    assert a == relative_change(before, after, seed=3)
    assert a["ci95"] != relative_change(before, after, seed=4)["ci95"]
    # Paired: every example rose by about 50%, so the interval is tight and excludes 0.
    assert 0.45 < a["ci95"][0] < a["change"] < a["ci95"][1] < 0.55 and a["verdict"] == "increase"
    flat = relative_change(before, before, seed=0)
    assert flat["change"] == 0 and flat["ci95"] == [0.0, 0.0] and flat["verdict"] == "no measurable change"
    m = bootstrap_mean([2.0] * 5)
    assert m["mean"] == 2.0 and m["ci95"] == [2.0, 2.0]


def test_verdict_and_formatting():
    assert verdict([-0.1, 0.2]) == "no measurable change"
    assert verdict([0.1, 0.2]) == "increase" and verdict([-0.3, -0.1]) == "decrease"
    text = fmt_change({"change": 0.004, "ci95": [-0.012, 0.02], "verdict": "no measurable change"})
    assert text == "+0.4% [-1.2%, +2.0%] no measurable change"


def test_reports_show_intervals_and_a_paired_perplexity_change(tmp_path):
    import json

    from unlearnkit.reports.evaluation import compare, eval_markdown, flatten_intervals

    def result(rate_, ci, nll):
        return {"model": "m", "suites": ["harm", "perplexity"], "results": {
            "harm": {"unseen": {"n": 10, "harmful_rate": {"refusal": rate_}, "harmful_rate_ci95": {"refusal": ci}}},
            "perplexity": {"perplexity": math.exp(sum(nll) / len(nll)), "n": len(nll),
                           "per_text": {"nll": nll, "tokens": [1] * len(nll)}}}}

    before = result(0.5, list(wilson(5, 10)), [2.0, 2.0, 2.0, 2.0])
    after = result(0.1, list(wilson(1, 10)), [2.1, 2.1, 2.1, 2.1])
    assert flatten_intervals(before["results"]) == {"harm.unseen.harmful_rate.refusal": list(wilson(5, 10))}
    assert "| unseen.harmful_rate.refusal | 0.500 [0.237, 0.763] |" in eval_markdown(before)
    for name, res in (("a", before), ("b", after)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "eval.json").write_text(json.dumps(res))
    md, _ = compare([tmp_path / "a", tmp_path / "b"])
    # Every text's NLL rose by 0.1: perplexity x exp(0.1), with a zero-width interval.
    change = math.expm1(0.1)
    assert f"| perplexity.change_vs_first (95% bootstrap) | – | {change:+.1%} [{change:+.1%}, {change:+.1%}] |" in md
    assert "0.100 [0.018, 0.404]" in md
