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
from typing import Callable, Literal, Sequence

import numpy as np

from unlearnkit.data.types import Example
from unlearnkit.errors import DataError
from unlearnkit.evaluation.metric_registry import Metric, MetricEnv, MetricRegistry
from unlearnkit.evaluation.tofu_stats import (  # noqa: F401  (re-exported: part of the TOFU metrics)
    EPS,
    auc,
    forget_quality,
    kolmogorov_sf,
    ks_2samp,
    mia_auc,
    min_k_score,
    privleak,
)

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


# --------------------------------------------------------------------------- privacy: membership scores


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

# --------------------------------------------------------------------------- the metrics and what they need
#
# Each figure is a registered metric (unlearnkit.evaluation.metric_registry) that declares what it
# reads, so the answer losses of a set (one scoring pass for the answers, paraphrases and
# perturbations) and its greedy answers are computed once for every figure that uses them.

TOFU_METRICS = MetricRegistry()
_SET_FIGURES: dict[str, list[str]] = {}  # set -> its figures, in report order


def _given(name: str) -> Callable[[MetricEnv], bool]:
    return lambda env: bool(env.inputs["sets"].get(name))


def _losses(name: str) -> Callable[[MetricEnv], tuple]:
    def compute(env: MetricEnv) -> tuple:
        i = env.inputs
        return _set_losses(i["model"], i["tokenizer"], list(i["sets"][name]), name, i["template"],
                           name in ("forget", "retain"), i["max_length"], i["batch_size"])
    return compute


def _figure(name: str, column: str, needs: tuple[str, ...], compute: Callable[[MetricEnv], float]) -> None:
    TOFU_METRICS.register(Metric(column, compute, needs, _given(name)))
    _SET_FIGURES.setdefault(name, []).append(column)


def _register_set(name: str) -> None:
    p = _PREFIX[name]
    paraphrased = name in ("forget", "retain")
    losses, rouge = f"tofu.losses.{name}", f"tofu.rouge.{name}"
    TOFU_METRICS.register(Metric(losses, _losses(name), available=_given(name)))

    def generations(env: MetricEnv) -> list[float]:
        i = env.inputs
        scores, env.per_item[f"{p}_generations"] = _rouge(i["model"], i["tokenizer"], list(i["sets"][name]),
                                                          i["template"], i["max_new_tokens"], i["batch_size"],
                                                          i["stemmer"], i["progress"])
        return scores

    TOFU_METRICS.register(Metric(rouge, generations, available=_given(name)))

    def prob(env: MetricEnv) -> float:
        la = env.value(losses)[0]
        # Per-item values of every figure, so that a report can put intervals on them.
        env.per_item[f"{p}_Q_A_Prob"] = np.exp(-np.asarray(la, dtype=np.float64)).tolist()
        return answer_probability(la)

    _figure(name, f"{p}_Q_A_Prob", (losses,), prob)
    if paraphrased:
        _figure(name, f"{p}_Q_A_PARA_Prob", (losses,), lambda env: answer_probability(env.value(losses)[1]))
        _figure(name, f"{p}_Q_A_PERT_Prob", (losses,), lambda env: float(
            np.mean([np.mean(np.exp(-np.asarray(r))) for r in env.value(losses)[2]])))
    else:
        def normalised(env: MetricEnv) -> float:
            la, _, lpert = env.value(losses)
            value, env.per_item[f"{p}_Q_A_Prob_normalised"] = probability_with_options(la, lpert, env.inputs["eps"])
            return value

        _figure(name, f"{p}_Q_A_Prob_normalised", (losses,), normalised)
    column = "forget_truth_ratio" if name == "forget" else f"{p}_Truth_Ratio"

    def truth(env: MetricEnv) -> float:
        la, lpara, lpert = env.value(losses)
        ratios = truth_ratios(lpara if paraphrased else la, lpert, env.inputs["perturbed_mean"], env.inputs["eps"])
        env.per_item[column] = ratios.tolist()
        return closer_to_1_better(ratios, env.inputs["eps"]) if name == "forget" else true_better(ratios)

    _figure(name, column, (losses,), truth)

    def rouge_mean(env: MetricEnv) -> float:
        scores = env.value(rouge)
        env.per_item[f"{p}_Q_A_ROUGE"] = scores
        return float(np.mean(scores))

    _figure(name, f"{p}_Q_A_ROUGE", (rouge,), rouge_mean)


for _name in TOFU_SETS:
    _register_set(_name)


def _ks(env: MetricEnv) -> dict:
    if not env.inputs["sets"].get("forget"):
        raise DataError("forget quality needs the forget set in sets.")
    env.value("forget_truth_ratio")  # fills per_item["forget_truth_ratio"]
    return forget_quality(env.per_item["forget_truth_ratio"], env.inputs["retain_truth_ratios"])


def _mia(env: MetricEnv) -> tuple[list[float], list[float]]:
    i = env.inputs
    if not i["sets"].get("forget"):
        raise DataError("the membership-inference AUC needs the forget set in sets.")
    forget_items = [Example(e.prompt, e.meta.get("answer", e.response)) for e in i["sets"]["forget"]]
    args = (i["template"], i["mia_attack"], i["mia_k"], i["max_length"], i["batch_size"])
    fs = mia_scores(i["model"], i["tokenizer"], forget_items, *args)
    hs = mia_scores(i["model"], i["tokenizer"], list(i["holdout"]), *args)
    env.per_item["mia_forget_scores"], env.per_item["mia_holdout_scores"] = fs, hs
    return fs, hs


TOFU_METRICS.register(Metric("model_utility", lambda env: model_utility(env.report(MODEL_UTILITY_COLUMNS)),
                             MODEL_UTILITY_COLUMNS,
                             lambda env: all(env.inputs["sets"].get(n) for n in ("retain", "real_authors", "world_facts"))))
_has_reference = lambda env: env.inputs["retain_truth_ratios"] is not None  # noqa: E731
TOFU_METRICS.register(Metric("tofu.ks", _ks, ("forget_truth_ratio",), _has_reference))
TOFU_METRICS.register(Metric("forget_quality", lambda env: env.value("tofu.ks")["pvalue"], ("tofu.ks",), _has_reference))
TOFU_METRICS.register(Metric("forget_ks_statistic", lambda env: env.value("tofu.ks")["statistic"], ("tofu.ks",),
                             _has_reference))
_has_holdout = lambda env: bool(env.inputs["holdout"])  # noqa: E731
TOFU_METRICS.register(Metric("tofu.mia", _mia, available=_has_holdout))
TOFU_METRICS.register(Metric("mia_auc", lambda env: mia_auc(*env.value("tofu.mia")), ("tofu.mia",), _has_holdout))
TOFU_METRICS.register(Metric("privleak", lambda env: privleak(
    env.value("mia_auc"), 0.5 if env.inputs["retain_mia_auc"] is None else env.inputs["retain_mia_auc"]),
    ("mia_auc",), _has_holdout))


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
    env = MetricEnv(TOFU_METRICS, model=model, tokenizer=tokenizer, sets=sets, template=template,
                    retain_truth_ratios=retain_truth_ratios, holdout=holdout, retain_mia_auc=retain_mia_auc,
                    mia_attack=mia_attack, mia_k=mia_k, max_new_tokens=max_new_tokens, batch_size=batch_size,
                    max_length=max_length, perturbed_mean=perturbed_mean, eps=eps, stemmer=stemmer, progress=progress)
    out: dict = {}
    for name in TOFU_SETS:
        if sets.get(name):
            out.update(env.report(_SET_FIGURES[name]))
    # Every other registered figure (model utility, forget quality, ..., and any registered later);
    # "tofu." names are intermediate values, not columns.
    per_set = {c for cols in _SET_FIGURES.values() for c in cols}
    out.update(env.report([n for n in TOFU_METRICS if not n.startswith("tofu.") and n not in per_set]))
    out["per_item"] = env.per_item
    return out
