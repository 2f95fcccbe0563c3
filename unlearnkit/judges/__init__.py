"""Harm judges: does a response to a prompt count as harmful, and did it decline?

Every judge answers through one interface (:class:`Judge`):
:meth:`Judge.harm_probability` (the probability that the RESPONSE gives
harmful help) and :meth:`Judge.refusal_probability` (that it declines the
request); :meth:`Judge.is_harmful` / :meth:`Judge.is_refusal` threshold them at
0.5. Judges are created by name with :func:`get_judge`:

- ``refusal``: keyword refusal detection, a compliance proxy (:mod:`.base`);
- ``classifier`` / ``classifier:PATH``: the project's own offline judge
  (:mod:`.classifier`). The shipped one is a cross-encoder (kind ``encoder``,
  :mod:`.encoder`): all-MiniLM-L6-v2 with a LoRA adapter and a two-verdict
  head, trained on prompt-disjoint parts of PKU-SafeRLHF, BeaverTails and
  GPTFuzz plus safe calibration answers (:mod:`.corpus`). Kinds ``lexical``
  (hashed n-grams) and ``lora`` (SmolLM2 backbone) are still read and trained
  (:mod:`.training`);
- ``hf_classifier:MODEL``: any Hugging Face sequence classifier (:mod:`.hf_classifier`);
- ``guard:MODEL``: Llama Guard and alike (:mod:`.guard`);
- ``harmbench:MODEL``: the HarmBench classifier prompt and yes/no reading (:mod:`.harmbench`);
- ``rubric:MODEL``: a StrongREJECT-style rubric put to any chat model (:mod:`.rubric`).

A dict spec names the judge with ``name`` and passes the other keys to its
constructor, e.g. ``{"name": "hf_classifier", "model": "path/to/clf", "harmful_label": "unsafe"}``.
"""

from unlearnkit.judges.base import (
    REFUSAL_PHRASES, THRESHOLD, Judge, RefusalJudge, _check_pairs, _model_device, _normalise, is_refusal,
)
from unlearnkit.judges.classifier import (
    DEFAULT_BASE, INPUT_FORMAT, JUDGE_FORMAT, JUDGE_KINDS, JUDGE_META, JUDGE_WEIGHTS, MAX_JUDGE_BYTES,
    SELFCHECK_PROBES, SELFCHECK_TOLERANCE, ClassifierJudge, _build_net, _ClassifierNet, _predict,
    default_judge_dir, default_pku_path, encode_pair, file_sha256,
)
from unlearnkit.judges.guard import GenerativeJudge, GuardJudge, parse_guard_verdict
from unlearnkit.judges.hf_classifier import HFClassifierJudge
from unlearnkit.judges.harmbench import HARMBENCH_MODEL, HarmBenchJudge, harmbench_prompt, parse_harmbench_answer
from unlearnkit.judges.registry import JUDGES, default_judges, get_judge, judge_label
from unlearnkit.judges.rubric import RubricJudge, parse_rubric, rubric_prompt
from unlearnkit.judges.training import (
    DEFAULT_L2_GRID, _by_prompt, _flatten, _scores, evaluate_judge, judge_split_items, load_labelled_pairs,
    split_by_prompt, train_judge,
)

__all__ = [
    "REFUSAL_PHRASES", "THRESHOLD", "Judge", "RefusalJudge", "is_refusal",
    "DEFAULT_BASE", "INPUT_FORMAT", "JUDGE_FORMAT", "JUDGE_KINDS", "JUDGE_META", "JUDGE_WEIGHTS", "MAX_JUDGE_BYTES",
    "SELFCHECK_PROBES", "SELFCHECK_TOLERANCE", "ClassifierJudge", "default_judge_dir", "default_pku_path",
    "encode_pair", "file_sha256", "GenerativeJudge", "GuardJudge", "parse_guard_verdict", "HFClassifierJudge", "JUDGES",
    "default_judges", "get_judge", "judge_label", "DEFAULT_L2_GRID", "evaluate_judge", "judge_split_items",
    "load_labelled_pairs", "split_by_prompt", "train_judge", "HARMBENCH_MODEL", "HarmBenchJudge", "harmbench_prompt",
    "parse_harmbench_answer", "RubricJudge", "parse_rubric", "rubric_prompt",
]
