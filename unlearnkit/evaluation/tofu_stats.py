"""TOFU's statistics: forget quality (the two-sample Kolmogorov-Smirnov test) and the
membership-inference AUC behind the privacy leak (Maini et al. 2024, arXiv 2401.06121;
open-unlearning's ``forget_quality`` and ``privleak``). Re-exported by
:mod:`unlearnkit.evaluation.tofu`, whose docstring says which definitions are followed.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Literal, Sequence

import numpy as np

from unlearnkit.errors import DataError

EPS = 1e-10  # open-unlearning's guard in the ratio denominators

# --------------------------------------------------------------------------- forget quality: KS test


def _ks_integer_statistic(x: np.ndarray, y: np.ndarray) -> int:
    """The KS statistic times ``m * n``, as an exact integer.

    After ``i`` values of x and ``j`` of y, ``i n - j m = m n (F_x - F_y)``.

    Walks the sorted samples together; tied values of both samples are passed
    at once, so the statistic is that of the two empirical distribution functions.
    """
    xs, ys = np.sort(x), np.sort(y)
    m, n = len(xs), len(ys)
    i = j = best = 0
    while i < m or j < n:
        v = min(xs[i] if i < m else math.inf, ys[j] if j < n else math.inf)
        while i < m and xs[i] == v:
            i += 1
        while j < n and ys[j] == v:
            j += 1
        best = max(best, abs(i * n - j * m))
    return best


def _ks_exact_sf(m: int, n: int, d_int: int) -> float:
    """P(D >= d_int / (m n)) for two samples of sizes m, n under the null, exactly.

    Counts the monotone lattice paths from (0, 0) to (m, n) that stay strictly
    inside ``|i n - j m| < d_int`` (every ordering of the pooled sample equally
    likely) with Python integers, and returns the outside share as a correctly
    rounded float, so even a p-value of 1e-30 keeps its digits.
    """
    if d_int <= 0:
        return 1.0
    prev = [0] * (n + 1)
    for i in range(m + 1):
        cur = [0] * (n + 1)
        # j with |i n - j m| < d_int: (i n - d_int) / m < j < (i n + d_int) / m
        lo = max(0, (i * n - d_int) // m + 1)
        hi = min(n, -((-(i * n + d_int)) // m) - 1)
        for j in range(lo, hi + 1):
            if i == 0 and j == 0:
                cur[j] = 1
            else:
                cur[j] = (prev[j] if i else 0) + (cur[j - 1] if j else 0)
        prev = cur
    total = math.comb(m + n, m)
    return float(Fraction(total - prev[n], total))


def kolmogorov_sf(lam: float) -> float:
    """Survival function of the Kolmogorov distribution, Q(lam) = P(K > lam)."""
    if lam <= 0:
        return 1.0
    if lam < 1.18:  # the theta-function form converges fast for small lam
        s = sum(math.exp(-((2 * k - 1) ** 2) * math.pi**2 / (8 * lam * lam)) for k in range(1, 20))
        return max(0.0, min(1.0, 1 - math.sqrt(2 * math.pi) / lam * s))
    s = sum((-1) ** (k - 1) * math.exp(-2 * k * k * lam * lam) for k in range(1, 101))
    return max(0.0, min(1.0, 2 * s))


EXACT_KS_MAX_CELLS = 1_000_000


def ks_2samp(x: Sequence[float], y: Sequence[float], method: Literal["auto", "exact", "asymp"] = "auto") -> dict:
    """Two-sided two-sample Kolmogorov-Smirnov test: ``{"statistic", "pvalue", "method"}``.

    The statistic is ``D = sup |F_x - F_y|`` of the empirical distribution
    functions. ``"exact"`` counts lattice paths (the null distribution of
    ``scipy.stats.ks_2samp(..., method="exact")``; exact for any sizes, with ties
    treated as scipy does); ``"asymp"`` uses the Kolmogorov limit
    ``Q(sqrt(m n / (m + n)) D)`` (scipy's asymptotic mode uses a finite-n
    distribution instead, so the two differ slightly). ``"auto"`` is exact
    while ``m * n <= 1e6`` (a 1000 x 1000 comparison; TOFU's forget10 is 400 x 400).
    """
    a = np.asarray(x, dtype=np.float64)
    b = np.asarray(y, dtype=np.float64)
    if a.size == 0 or b.size == 0:
        raise DataError("the KS test needs at least one value in each sample.")
    if np.isnan(a).any() or np.isnan(b).any():
        raise DataError("the KS test got a NaN value.")
    m, n = a.size, b.size
    d_int = _ks_integer_statistic(a, b)
    d = d_int / (m * n)
    if method == "auto":
        method = "exact" if m * n <= EXACT_KS_MAX_CELLS else "asymp"
    if method == "exact":
        p = _ks_exact_sf(m, n, d_int)
    elif method == "asymp":
        p = kolmogorov_sf(math.sqrt(m * n / (m + n)) * d)
    else:
        raise DataError(f"KS method must be 'auto', 'exact' or 'asymp', not {method!r}.")
    return {"statistic": d, "pvalue": p, "method": method}


def forget_quality(unlearned_truth_ratios: Sequence[float], retain_truth_ratios: Sequence[float]) -> dict:
    """TOFU's forget quality: the KS p-value between the per-item forget-set truth
    ratios of the unlearned model and of the retain model (never trained on the
    forget set). High (near 1) = indistinguishable from the retain model.

    The KS statistic depends on ranks only, so it is the same whether the ratios
    are wrong/correct (open-unlearning's ``ks_test``) or correct/wrong (TOFU's
    ``aggregate_eval_stat.py``). Returns :func:`ks_2samp`'s dict.
    """
    return ks_2samp(unlearned_truth_ratios, retain_truth_ratios)


# --------------------------------------------------------------------------- privacy: MIA AUC


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing the mean of their positions."""
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=np.float64)
    sorted_v = values[order]
    start = 0
    while start < len(values):
        end = start
        while end + 1 < len(values) and sorted_v[end + 1] == sorted_v[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def auc(negative_scores: Sequence[float], positive_scores: Sequence[float]) -> float:
    """Area under the ROC curve: P(positive score > negative score) + P(equal) / 2.

    (The Mann-Whitney U statistic over both sizes, with average ranks for ties;
    equal to ``sklearn.metrics.roc_auc_score``.)
    """
    neg = np.asarray(negative_scores, dtype=np.float64)
    pos = np.asarray(positive_scores, dtype=np.float64)
    if neg.size == 0 or pos.size == 0:
        raise DataError("an AUC needs at least one score of each class.")
    ranks = _average_ranks(np.concatenate([neg, pos]))
    u = ranks[neg.size :].sum() - pos.size * (pos.size + 1) / 2
    return float(u / (neg.size * pos.size))


def mia_auc(forget_scores: Sequence[float], holdout_scores: Sequence[float]) -> float:
    """Membership-inference AUC as open-unlearning defines it (``mia_auc``).

    Scores are losses (higher = less likely a training member); the forget set is
    labelled 0 and the holdout set 1, so the AUC is 1 when every forget item is
    more likely than every holdout item (the forget set still looks trained on),
    0.5 when they are indistinguishable.
    """
    return auc(forget_scores, holdout_scores)


def min_k_score(token_logprobs: Sequence[float], k: float = 0.4) -> float:
    """Min-k% probability (Shi et al. 2024): minus the mean of the lowest ``k`` share
    of the answer's token log-probabilities (at least one token; EOS excluded by
    the caller, as open-unlearning's ``MinKProbAttack`` does). 0.0 when empty."""
    lp = np.sort(np.asarray(token_logprobs, dtype=np.float64))
    if lp.size == 0:
        return 0.0
    return float(-lp[: max(1, int(lp.size * k))].mean())


def privleak(forget_auc: float, reference_auc: float = 0.5) -> float:
    """open-unlearning's privleak: the relative gap (in %) of the unlearned model's
    MIA AUC to the retain model's, written with AUCs turned round (1 - AUC):
    ``((1 - auc) - (1 - ref)) / (1 - ref + eps) * 100``. 0 = as private as the
    retain model; negative = the forget set still leaks. ``reference_auc`` defaults
    to 0.5, open-unlearning's ``ref_value`` when no retain-model result is given."""
    score, ref = 1 - forget_auc, 1 - reference_auc
    return (score - ref) / (ref + EPS) * 100
