"""Surface text metrics: ROUGE-L, BLEU, distinct-n and exact token match.

Pure Python (no torch), so it is cheap to import and trivial to test.

Word tokenisation, used by every word-level metric here (:func:`words`): the text
is lowercased, then split on every character that is not a letter or a digit
(Unicode-aware; the underscore counts as a separator). Punctuation therefore
disappears: ``"Don't stop!"`` becomes ``["don", "t", "stop"]``. One simple rule
for all metrics keeps scores comparable across methods and runs; it is not the
tokenisation of any official scorer, so absolute numbers differ slightly from
``rouge-score`` or ``sacrebleu``.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Iterable, Sequence

# A run of letters/digits: ``\w`` minus the underscore.
_WORD = re.compile(r"[^\W_]+")


def words(text: str) -> list[str]:
    """Lowercase ``text`` and split it on non-alphanumeric characters."""
    return _WORD.findall(text.lower())


def mean(xs: Iterable[float]) -> float:
    """Arithmetic mean; 0.0 for an empty input (so reports never hold NaN)."""
    values = list(xs)
    return sum(values) / len(values) if values else 0.0


def _ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(texts: list[str], n: int) -> float:
    """Distinct-n: unique n-grams / total n-grams, pooled over all ``texts``.

    N-grams never cross the boundary between two texts. Returns 0.0 when the
    texts hold no n-gram at all (every text shorter than ``n`` words).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    total = 0
    unique: set[tuple[str, ...]] = set()
    for text in texts:
        grams = _ngrams(words(text), n)
        total += len(grams)
        unique.update(grams)
    return len(unique) / total if total else 0.0


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (O(len(a)*len(b)) time, O(len(b)) memory)."""
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0] * (len(b) + 1)
        for j, y in enumerate(b, start=1):
            cur[j] = prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1])
        prev = cur
    return prev[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 between two texts, from the word-level LCS.

    precision = LCS / len(prediction), recall = LCS / len(reference),
    F1 = 2PR / (P + R). Returns 0.0 when either text has no words or they share none.
    """
    pred, ref = words(prediction), words(reference)
    lcs = lcs_length(pred, ref)
    if lcs == 0:
        return 0.0
    precision = lcs / len(pred)
    recall = lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def bleu(prediction: str, reference: str, max_n: int = 4) -> float:
    """Sentence BLEU against a single reference, with add-one smoothing for n > 1.

    - p_n: clipped n-gram precision (a predicted n-gram counts at most as often as
      it occurs in the reference). p_1 is left unsmoothed; for 1 < n <= max_n the
      precision is ``(matches + 1) / (predicted n-grams + 1)``: the add-one
      smoothing of Lin & Och (2004) ("smoothing 2" in Chen & Cherry, 2014). A
      prediction shorter than n words has no n-gram of that order and gets
      p_n = (0 + 1) / (0 + 1) = 1, so the order neither helps nor hurts.
    - brevity penalty BP = 1 if c > r else exp(1 - r / c), with c and r the
      predicted and reference word counts.
    - BLEU = BP * exp(sum_n log(p_n) / max_n) (uniform weights).

    Returns 0.0 for an empty prediction, and whenever no predicted word occurs in
    the reference (p_1 = 0).
    """
    if max_n < 1:
        raise ValueError(f"max_n must be >= 1, got {max_n}")
    pred, ref = words(prediction), words(reference)
    if not pred:
        return 0.0
    log_sum = 0.0
    for n in range(1, max_n + 1):
        pred_counts = Counter(_ngrams(pred, n))
        ref_counts = Counter(_ngrams(ref, n))
        matches = sum(min(count, ref_counts[g]) for g, count in pred_counts.items())
        total = sum(pred_counts.values())
        if n == 1:
            if matches == 0:
                return 0.0
            p = matches / total
        else:
            p = (matches + 1) / (total + 1)
        log_sum += math.log(p)
    c, r = len(pred), len(ref)
    brevity = 1.0 if c > r else math.exp(1 - r / c)
    return brevity * math.exp(log_sum / max_n)


def exact_token_match(pred_ids: list[int], ref_ids: list[int]) -> float:
    """Fraction of reference positions ``i`` with ``pred_ids[i] == ref_ids[i]``.

    Positions the prediction does not reach count as misses; predicted tokens past
    the reference's end are ignored. Returns 0.0 for an empty reference.
    """
    if not ref_ids:
        return 0.0
    hits = sum(1 for p, r in zip(pred_ids, ref_ids) if p == r)
    return hits / len(ref_ids)
