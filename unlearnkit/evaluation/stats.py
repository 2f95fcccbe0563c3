"""Uncertainty for every reported figure.

- Rates (harmful rate, refusal rate, MC1, a judge's accuracy): the Wilson score
  interval (Wilson 1927), which stays inside [0, 1] and behaves at 0 and n.
- Relative changes of a mean (answer NLL, perplexity) and means of bounded
  scores (MC2): a seeded percentile bootstrap over examples, paired when the
  same examples are measured before and after.

A change whose 95% interval includes zero is reported as "no measurable change".
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

Z95 = 1.959963984540054  # the 97.5% point of the standard normal
N_BOOT = 2000


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """Wilson score interval for k successes in n trials (None when n is 0)."""
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return None
    p = k / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    # At k = 0 (k = n) the interval ends at 0 (1) exactly; rounding must not move it.
    lo = 0.0 if k == 0 else max(0.0, centre - half)
    hi = 1.0 if k == n else min(1.0, centre + half)
    return lo, hi


def rate(flags: Sequence[bool]) -> dict:
    """``{"rate", "k", "n", "ci95"}`` of a list of yes/no outcomes."""
    n = len(flags)
    k = int(sum(1 for f in flags if f))
    ci = wilson(k, n)
    return {"rate": k / n if n else None, "k": k, "n": n, "ci95": list(ci) if ci else None}


def rate_ci(value: float | None, n: int) -> list[float] | None:
    """The Wilson interval of a rate given as a fraction of n (MC1, an accuracy)."""
    if value is None or not n:
        return None
    ci = wilson(int(round(value * n)), n)
    return list(ci) if ci else None


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def percentile_ci(samples) -> list[float]:
    """The 95% percentile interval of bootstrap samples."""
    lo, hi = np.percentile(np.asarray(samples, dtype=np.float64), [2.5, 97.5])
    return [float(lo), float(hi)]


def weighted_mean(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``sum(w * x) / sum(w)`` along the last axis (one mean per bootstrap row)."""
    return (values * weights).sum(axis=-1) / weights.sum(axis=-1)


def bootstrap_mean(values: Sequence[float], seed: int = 0, n_boot: int = N_BOOT) -> dict:
    """Mean of ``values`` with a percentile-bootstrap 95% interval."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("bootstrap_mean needs at least one value")
    idx = _rng(seed).integers(0, v.size, size=(n_boot, v.size))
    return {"mean": float(v.mean()), "n": int(v.size), "ci95": percentile_ci(v[idx].mean(axis=1))}


def relative_change(
    before: Sequence[float],
    after: Sequence[float],
    weights: Sequence[float] | None = None,
    *,
    exp: bool = False,
    seed: int = 0,
    n_boot: int = N_BOOT,
) -> dict:
    """Relative change of a (weighted) mean, after vs before, with a paired bootstrap interval.

    ``before[i]`` and ``after[i]`` are one example measured twice (the mean
    answer NLL of example i, say) and ``weights[i]`` its weight (its answer
    tokens, for a token-weighted mean). The change is
    ``(M_after - M_before) / M_before`` with ``M = sum(w * x) / sum(w)``, or with
    ``exp=True`` the change of ``exp(M)`` (perplexity): ``exp(M_after - M_before) - 1``.
    Examples are resampled jointly (the same indices for both), ``n_boot`` times
    with a generator seeded by ``seed``.
    """
    point, boots = relative_change_samples(before, after, weights, exp=exp, rng=_rng(seed), n_boot=n_boot)
    lo, hi = percentile_ci(boots)
    return {"change": point, "n": len(before), "ci95": [lo, hi], "verdict": verdict([lo, hi])}


def relative_change_samples(before: Sequence[float], after: Sequence[float], weights: Sequence[float] | None = None,
                            *, exp: bool = False, rng: np.random.Generator, n_boot: int = N_BOOT
                            ) -> tuple[float, np.ndarray]:
    """The relative change of :func:`relative_change` and its ``n_boot`` paired bootstrap samples (drawn from ``rng``)."""
    b = np.asarray(before, dtype=np.float64)
    a = np.asarray(after, dtype=np.float64)
    if b.shape != a.shape or b.size == 0:
        raise ValueError(f"before and after need the same, non-zero number of values ({b.size} vs {a.size})")
    w = np.ones_like(b) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != b.shape:
        raise ValueError("weights need one value per example")

    def change(xb: np.ndarray, xa: np.ndarray, ww: np.ndarray) -> np.ndarray:
        mb, ma = weighted_mean(xb, ww), weighted_mean(xa, ww)
        return np.expm1(ma - mb) if exp else (ma - mb) / mb

    idx = rng.integers(0, b.size, size=(n_boot, b.size))
    return float(change(b, a, w)), change(b[idx], a[idx], w[idx])


def verdict(ci: Sequence[float] | None) -> str:
    """"no measurable change" when the interval includes 0, else "increase" / "decrease"."""
    if ci is None:
        return "unknown"
    lo, hi = ci
    if lo <= 0 <= hi:
        return "no measurable change"
    return "increase" if lo > 0 else "decrease"


def two_rate_difference(k1: int, n1: int, k2: int, n2: int, z: float = Z95) -> dict:
    """Difference of two independent rates p2 - p1 with Newcombe's hybrid Wilson interval."""
    w1, w2 = wilson(k1, n1, z), wilson(k2, n2, z)
    if w1 is None or w2 is None:
        return {"difference": None, "ci95": None, "verdict": "unknown"}
    p1, p2 = k1 / n1, k2 / n2
    d = p2 - p1
    lo = d - math.sqrt((p2 - w2[0]) ** 2 + (w1[1] - p1) ** 2)
    hi = d + math.sqrt((w2[1] - p2) ** 2 + (p1 - w1[0]) ** 2)
    return {"difference": d, "ci95": [lo, hi], "verdict": verdict([lo, hi])}


def fmt_rate(r: dict | None, digits: int = 3) -> str:
    """"0.770 [0.68, 0.84] (n=100)" for a :func:`rate` result."""
    if not r or r.get("rate") is None:
        return "-"
    ci = r.get("ci95")
    band = f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""
    return f"{r['rate']:.{digits}f}{band} (n={r['n']})"


def fmt_change(c: dict | None, key: str = "change", spec: str = "+.1%", ci_spec: str = "+.1%") -> str:
    """"+59.8% [+51.0%, +68.9%]" or "+0.4% [-1.2%, +2.0%] no measurable change" (``c[key]`` and its ``ci95``)."""
    if not c or c.get(key) is None:
        return "-"
    lo, hi = c["ci95"]
    text = f"{c[key]:{spec}} [{lo:{ci_spec}}, {hi:{ci_spec}}]"
    return text + (" no measurable change" if c.get("verdict") == "no measurable change" else "")
