"""The TOFU benchmark's metrics, as the benchmark defines them.

Definitions follow Maini et al. 2024, *TOFU: A Task of Fictitious Unlearning for
LLMs* (arXiv 2401.06121), and the code that produces the published figures: the
TOFU repository (``aggregate_eval_stat.py``, ``evaluate_util.py``) and
open-unlearning (locuslab/open-unlearning, ``src/evals/metrics/``), whose metric
names the result columns of :func:`tofu_metrics` carry. Where the paper and the
code differ, the code is followed (it made the published numbers) and the paper's
form is available as an option; ``docs/tofu.md`` lists every such choice.

Scored tokens. An answer's probability is taken over the tokens the model is
trained on: the rendered response tokens plus the end-of-sequence token
(:func:`unlearnkit.evaluation.likelihood.token_logprobs` with ``add_eos=True``),
never the prompt. TOFU's loader appends EOS to the labels, and open-unlearning
appends it when the chat template has not already ended on it, so both count it.
The length-normalised probability of an answer ``a`` to a question ``q`` is

    P(a|q)^(1/|a|) = exp(-mean over the scored tokens of -log p(token)),

i.e. ``exp(-avg_loss)`` with ``avg_loss`` the mean token NLL (open-unlearning's
``evaluate_probability``). The membership-inference min-k attack alone leaves
EOS out (open-unlearning's ``tokenwise_logprobs`` drops the last label).

The numerical guards of open-unlearning (``+ 1e-10`` in a few denominators) are
kept by default (``eps=1e-10``), so that a model whose losses have exploded
(probabilities far below 1e-10, common after gradient ascent) gets the same
figure as there; ``eps=0`` gives the exact ratios of TOFU's own code.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction
from typing import Callable, Literal, Sequence

import numpy as np

from unlearnkit.data.types import Example
from unlearnkit.errors import DataError

EPS = 1e-10  # open-unlearning's guard in the ratio denominators
PerturbedMean = Literal["geometric", "arithmetic"]

# --------------------------------------------------------------------------- answer losses


def avg_answer_losses(
    model, tokenizer, examples: Sequence[Example], template: str, max_length: int = 512, batch_size: int = 8
) -> list[float]:
    """Mean token NLL of each example's answer (answer tokens + EOS, prompt masked).

    ``exp(-value)`` is the length-normalised answer probability P(a|q)^(1/|a|).
    """
    from unlearnkit.evaluation.likelihood import token_logprobs

    if not examples:
        return []
    per_token = token_logprobs(model, tokenizer, list(examples), template, max_length, batch_size, add_eos=True)
    out = []
    for ex, lp in zip(examples, per_token):
        if lp.numel() == 0:
            raise DataError(f"TOFU item {ex.prompt[:60]!r} has no answer token to score (empty answer?).")
        out.append(-float(lp.double().mean()))
    return out


def answer_probability(avg_losses: Sequence[float]) -> float:
    """TOFU's "Probability" on the forget and retain sets: mean of P(a|q)^(1/|a|)."""
    if len(avg_losses) == 0:
        raise DataError("answer_probability needs at least one item.")
    return float(np.mean(np.exp(-np.asarray(avg_losses, dtype=np.float64))))


def _ragged_mean(rows: Sequence[Sequence[float]]) -> np.ndarray:
    if any(len(r) == 0 for r in rows):
        raise DataError("every TOFU item needs at least one perturbed answer.")
    return np.array([float(np.mean(np.asarray(r, dtype=np.float64))) for r in rows])


def probability_with_options(
    correct_losses: Sequence[float], wrong_losses: Sequence[Sequence[float]], eps: float = EPS
) -> tuple[float, list[float]]:
    """Real authors / world facts "Probability": the correct answer against the wrong options.

    Per item ``p_c / (p_c + sum_j p_j + eps)`` with ``p = P(a|q)^(1/|a|)`` of the
    correct answer and of each perturbed (wrong) answer (TOFU's
    ``avg_true_prob / avg_all_prob``; open-unlearning's ``probability_w_options``
    adds ``eps``). With ``eps=0`` it is computed in log space, so it stays exact
    when every probability underflows. Returns (mean over items, per-item values).
    """
    if len(correct_losses) != len(wrong_losses) or not len(correct_losses):
        raise DataError("probability_with_options needs one list of wrong-answer losses per item, and one item or more.")
    values = []
    for lc, lw in zip(correct_losses, wrong_losses):
        if not len(lw):
            raise DataError("every item needs at least one wrong answer.")
        if eps:
            pc = math.exp(-lc)
            values.append(pc / (pc + sum(math.exp(-x) for x in lw) + eps))
        else:
            logs = np.array([-lc, *(-np.asarray(lw, dtype=np.float64))])
            values.append(float(np.exp(logs[0] - np.logaddexp.reduce(logs))))
    return float(np.mean(values)), values


# --------------------------------------------------------------------------- truth ratio


def truth_ratios(
    correct_losses: Sequence[float],
    wrong_losses: Sequence[Sequence[float]],
    perturbed_mean: PerturbedMean = "geometric",
    eps: float = EPS,
) -> np.ndarray:
    """Per-item truth ratio R = P_wrong / P_correct (wrong over correct, as TOFU).

    The correct side is the PARAPHRASED answer on the forget and retain sets and
    the answer itself on real authors and world facts (TOFU's ``base_answer_key``;
    open-unlearning's ``*_Q_A_PARA_Prob`` / ``*_Q_A_Prob`` as "correct"); the wrong
    side is the perturbed answers. With ``P = P(a|q)^(1/|a|)``:

    - ``"geometric"`` (the default, the code of both TOFU and open-unlearning):
      the perturbed answers' mean token losses are averaged first, so
      ``P_wrong = exp(-mean_j avg_loss_j)``, the geometric mean of their
      normalised probabilities;
    - ``"arithmetic"``: the paper's formula, ``P_wrong = mean_j P_j``.

    ``R = P_wrong / (P_correct + eps)`` (open-unlearning's guard; ``eps=0``
    computes ``exp(log P_wrong - log P_correct)`` exactly, as TOFU's code does).
    """
    if len(correct_losses) != len(wrong_losses):
        raise DataError("truth_ratios needs one list of perturbed-answer losses per item.")
    lc = np.asarray(correct_losses, dtype=np.float64)
    if perturbed_mean == "geometric":
        log_wrong = -_ragged_mean(wrong_losses)
    elif perturbed_mean == "arithmetic":
        if any(len(r) == 0 for r in wrong_losses):
            raise DataError("every TOFU item needs at least one perturbed answer.")
        log_wrong = np.array([np.logaddexp.reduce(-np.asarray(r, dtype=np.float64)) - math.log(len(r)) for r in wrong_losses])
    else:
        raise DataError(f"perturbed_mean must be 'geometric' or 'arithmetic', not {perturbed_mean!r}.")
    if eps:
        return np.exp(log_wrong) / (np.exp(-lc) + eps)
    return np.exp(log_wrong + lc)


def closer_to_1_better(ratios: Sequence[float], eps: float = EPS) -> float:
    """The forget set's truth-ratio figure: mean of min(R, 1/R) (1 when the model cannot
    tell the paraphrased answer from the perturbed ones)."""
    r = np.asarray(ratios, dtype=np.float64)
    return float(np.mean(np.minimum(r, 1 / (r + eps))))


def true_better(ratios: Sequence[float]) -> float:
    """The retain / real-author / world-fact truth-ratio figure: mean of max(0, 1 - R)."""
    r = np.asarray(ratios, dtype=np.float64)
    return float(np.mean(np.maximum(0.0, 1 - r)))


# --------------------------------------------------------------------------- ROUGE-L recall

_NON_ALNUM = re.compile(r"[^a-z0-9]+")


def rouge_tokens(text: str, stemmer: Callable[[str], str] | None = None) -> list[str]:
    """Words as the ``rouge-score`` package (used by TOFU and open-unlearning) splits them.

    Lowercase, every run of characters outside ``[a-z0-9]`` is a separator (so
    accented letters separate words too), and, with a ``stemmer``, words longer
    than three letters are stemmed. Both benchmarks pass ``use_stemmer=True``
    (the Porter stemmer); ``rouge-score`` is not a dependency here, so the default
    is no stemming, which can only lower the LCS (see :func:`rouge_l_recall`).
    """
    words = [w for w in _NON_ALNUM.sub(" ", (text or "").lower()).split() if w]
    if stemmer is not None:
        words = [stemmer(w) if len(w) > 3 else w for w in words]
    return words


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    from unlearnkit.evaluation.text_metrics import lcs_length

    return lcs_length(a, b)


def rouge_l_recall(prediction: str, reference: str, stemmer: Callable[[str], str] | None = None) -> float:
    """ROUGE-L recall: LCS(prediction, reference) / len(reference), in words.

    The benchmark's "ROUGE" (``rougeL`` recall of ``rouge_scorer.score(reference,
    generation)``). Without a stemmer two words match only when identical, so the
    value is at most the stemmed one (stemming only merges words). 0.0 when the
    reference has no word.
    """
    ref = rouge_tokens(reference, stemmer)
    if not ref:
        return 0.0
    return _lcs(rouge_tokens(prediction, stemmer), ref) / len(ref)


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


def mia_scores(
    model,
    tokenizer,
    examples: Sequence[Example],
    template: str,
    attack: Literal["loss", "min_k"] = "loss",
    k: float = 0.4,
    max_length: int = 512,
    batch_size: int = 8,
) -> list[float]:
    """Per-example membership scores: ``"loss"`` = mean answer-token NLL (with EOS),
    ``"min_k"`` = :func:`min_k_score` over the answer tokens without EOS."""
    from unlearnkit.evaluation.likelihood import token_logprobs

    if attack == "loss":
        return avg_answer_losses(model, tokenizer, examples, template, max_length, batch_size)
    if attack == "min_k":
        per_token = token_logprobs(model, tokenizer, list(examples), template, max_length, batch_size, add_eos=False)
        return [min_k_score(lp.tolist(), k) for lp in per_token]
    raise DataError(f"MIA attack must be 'loss' or 'min_k', not {attack!r}.")


def privleak(forget_auc: float, reference_auc: float = 0.5) -> float:
    """open-unlearning's privleak: the relative gap (in %) of the unlearned model's
    MIA AUC to the retain model's, written with AUCs turned round (1 - AUC):
    ``((1 - auc) - (1 - ref)) / (1 - ref + eps) * 100``. 0 = as private as the
    retain model; negative = the forget set still leaks. ``reference_auc`` defaults
    to 0.5, open-unlearning's ``ref_value`` when no retain-model result is given."""
    score, ref = 1 - forget_auc, 1 - reference_auc
    return (score - ref) / (ref + EPS) * 100


# --------------------------------------------------------------------------- model utility


def harmonic_mean(values: Sequence[float]) -> float:
    """Harmonic mean of non-negative values; 0.0 when any of them is 0."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise DataError("a harmonic mean needs at least one value.")
    if (v < 0).any() or np.isnan(v).any():
        raise DataError(f"a harmonic mean needs non-negative values, got {v.tolist()}.")
    if (v == 0).any():
        return 0.0
    return float(v.size / np.sum(1.0 / v))


MODEL_UTILITY_COLUMNS: tuple[str, ...] = (
    "retain_Q_A_Prob", "retain_Q_A_ROUGE", "retain_Truth_Ratio",
    "ra_Q_A_Prob_normalised", "ra_Q_A_ROUGE", "ra_Truth_Ratio",
    "wf_Q_A_Prob_normalised", "wf_Q_A_ROUGE", "wf_Truth_Ratio",
)


def model_utility(figures: dict) -> float:
    """Harmonic mean of the nine retain / real-author / world-fact figures
    (:data:`MODEL_UTILITY_COLUMNS`); zero if any is zero."""
    missing = [c for c in MODEL_UTILITY_COLUMNS if figures.get(c) is None]
    if missing:
        raise DataError(f"model utility needs {', '.join(missing)}.")
    return harmonic_mean([figures[c] for c in MODEL_UTILITY_COLUMNS])


# --------------------------------------------------------------------------- the suite


def _perturbed(ex: Example, name: str) -> list[str]:
    wrong = ex.meta.get("perturbed_answer")
    if not wrong:
        raise DataError(
            f"TOFU set {name!r}: item {ex.prompt[:60]!r} has no perturbed answers in its meta; "
            "load a *_perturbed file (or real_authors / world_facts) with the tofu recipe."
        )
    return list(wrong)


def _set_losses(model, tokenizer, items: Sequence[Example], name: str, template: str, paraphrased: bool,
                max_length: int, batch_size: int) -> tuple[list[float], list[float] | None, list[list[float]]]:
    """(answer losses, paraphrased-answer losses or None, perturbed-answer losses per item),
    all scored in one pass so batches stay full."""
    batch: list[Example] = []
    answer = [Example(e.prompt, e.meta.get("answer", e.response)) for e in items]
    batch.extend(answer)
    if paraphrased:
        for e in items:
            if not e.meta.get("paraphrased_answer"):
                raise DataError(f"TOFU set {name!r}: item {e.prompt[:60]!r} has no paraphrased answer in its meta.")
        batch.extend(Example(e.prompt, e.meta["paraphrased_answer"]) for e in items)
    wrong = [_perturbed(e, name) for e in items]
    for e, ws in zip(items, wrong):
        batch.extend(Example(e.prompt, w) for w in ws)
    losses = avg_answer_losses(model, tokenizer, batch, template, max_length, batch_size)
    n = len(items)
    pos = 2 * n if paraphrased else n
    per_item = []
    for ws in wrong:
        per_item.append(losses[pos : pos + len(ws)])
        pos += len(ws)
    return losses[:n], (losses[n : 2 * n] if paraphrased else None), per_item


def _rouge(model, tokenizer, items: Sequence[Example], template: str, max_new_tokens: int, batch_size: int,
           stemmer, progress: bool) -> tuple[float, list[str]]:
    from unlearnkit.evaluation.generation import generate

    outputs = generate(model, tokenizer, [e.prompt for e in items], template=template, max_new_tokens=max_new_tokens,
                       batch_size=batch_size, progress=progress, desc="TOFU greedy answers")
    scores = [rouge_l_recall(o, e.meta.get("answer", e.response), stemmer) for o, e in zip(outputs, items)]
    return scores, outputs


TOFU_SETS = ("forget", "retain", "real_authors", "world_facts")
_PREFIX = {"forget": "forget", "retain": "retain", "real_authors": "ra", "world_facts": "wf"}


def tofu_metrics(
    model,
    tokenizer,
    sets: dict[str, Sequence[Example]],
    template: str,
    *,
    retain_truth_ratios: Sequence[float] | None = None,
    holdout: Sequence[Example] | None = None,
    retain_mia_auc: float | None = None,
    mia_attack: Literal["loss", "min_k"] = "min_k",
    mia_k: float = 0.4,
    max_new_tokens: int = 200,
    batch_size: int = 8,
    max_length: int = 512,
    perturbed_mean: PerturbedMean = "geometric",
    eps: float = EPS,
    stemmer: Callable[[str], str] | None = None,
    progress: bool = False,
) -> dict:
    """The TOFU evaluation of one model, with open-unlearning's column names.

    ``sets`` maps any of ``forget`` (``forgetNN_perturbed``), ``retain``
    (``retain_perturbed``), ``real_authors`` and ``world_facts`` (their
    ``*_perturbed`` files, or the option files) to examples of the ``tofu`` recipe
    (field ``answer``, so the meta holds the paraphrased and perturbed answers).
    Columns are computed for the sets given:

    - per set: ``{p}_Q_A_Prob`` (mean P(a|q)^(1/|a|)), ``{p}_Q_A_ROUGE`` (mean
      ROUGE-L recall of greedy answers, ``max_new_tokens`` at most),
      ``{p}_Truth_Ratio`` (``true_better``; for the forget set
      ``forget_truth_ratio`` with ``closer_to_1_better``); real authors and world
      facts also ``{p}_Q_A_Prob_normalised`` (:func:`probability_with_options`);
      forget and retain also ``{p}_Q_A_PARA_Prob`` and ``{p}_Q_A_PERT_Prob``;
    - ``model_utility`` when retain, real authors and world facts are all given;
    - ``forget_quality`` (and ``forget_ks_statistic``) when ``retain_truth_ratios``
      (the retain model's ``per_item["forget_truth_ratio"]`` from this same
      function) is given; else None;
    - ``mia_auc`` and ``privleak`` when ``holdout`` (``holdoutNN``) is given;
      ``mia_attack`` is open-unlearning's default ``min_k`` with k=0.4, or
      ``loss``; ``privleak`` is relative to ``retain_mia_auc`` (0.5 if not given).

    ``per_item`` holds the per-item values a later call needs (the forget truth
    ratios), the per-item values behind each figure (raw truth ratios R, answer
    probabilities, ROUGE recalls, membership scores) and the greedy answers.
    """
    unknown = set(sets) - set(TOFU_SETS)
    if unknown:
        raise DataError(f"unknown TOFU set(s) {', '.join(sorted(unknown))}; known: {', '.join(TOFU_SETS)}.")
    out: dict = {}
    per_item: dict = {}
    for name in TOFU_SETS:
        items = list(sets.get(name) or [])
        if not items:
            continue
        p = _PREFIX[name]
        paraphrased = name in ("forget", "retain")
        la, lpara, lpert = _set_losses(model, tokenizer, items, name, template, paraphrased, max_length, batch_size)
        out[f"{p}_Q_A_Prob"] = answer_probability(la)
        # Per-item values of every figure, so that a report can put intervals on them.
        per_item[f"{p}_Q_A_Prob"] = np.exp(-np.asarray(la, dtype=np.float64)).tolist()
        if paraphrased:
            out[f"{p}_Q_A_PARA_Prob"] = answer_probability(lpara)
            out[f"{p}_Q_A_PERT_Prob"] = float(np.mean([np.mean(np.exp(-np.asarray(r))) for r in lpert]))
        else:
            out[f"{p}_Q_A_Prob_normalised"], per_item[f"{p}_Q_A_Prob_normalised"] = probability_with_options(la, lpert, eps)
        ratios = truth_ratios(lpara if paraphrased else la, lpert, perturbed_mean, eps)
        if name == "forget":
            out["forget_truth_ratio"] = closer_to_1_better(ratios, eps)
            per_item["forget_truth_ratio"] = ratios.tolist()
        else:
            out[f"{p}_Truth_Ratio"] = true_better(ratios)
            per_item[f"{p}_Truth_Ratio"] = ratios.tolist()
        rouge, per_item[f"{p}_generations"] = _rouge(model, tokenizer, items, template, max_new_tokens, batch_size,
                                                     stemmer, progress)
        out[f"{p}_Q_A_ROUGE"], per_item[f"{p}_Q_A_ROUGE"] = float(np.mean(rouge)), rouge
    if all(sets.get(n) for n in ("retain", "real_authors", "world_facts")):
        out["model_utility"] = model_utility(out)
    else:
        out["model_utility"] = None
    out["forget_quality"] = out["forget_ks_statistic"] = None
    if retain_truth_ratios is not None:
        if "forget_truth_ratio" not in per_item:
            raise DataError("forget quality needs the forget set in sets.")
        ks = forget_quality(per_item["forget_truth_ratio"], retain_truth_ratios)
        out["forget_quality"], out["forget_ks_statistic"] = ks["pvalue"], ks["statistic"]
    out["mia_auc"] = out["privleak"] = None
    if holdout:
        if not sets.get("forget"):
            raise DataError("the membership-inference AUC needs the forget set in sets.")
        forget_items = [Example(e.prompt, e.meta.get("answer", e.response)) for e in sets["forget"]]
        fs = mia_scores(model, tokenizer, forget_items, template, mia_attack, mia_k, max_length, batch_size)
        hs = mia_scores(model, tokenizer, list(holdout), template, mia_attack, mia_k, max_length, batch_size)
        out["mia_auc"] = mia_auc(fs, hs)
        per_item["mia_forget_scores"], per_item["mia_holdout_scores"] = fs, hs
        out["privleak"] = privleak(out["mia_auc"], 0.5 if retain_mia_auc is None else retain_mia_auc)
    out["per_item"] = per_item
    return out
