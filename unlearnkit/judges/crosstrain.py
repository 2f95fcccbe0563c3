"""Training and held-out evaluation of the cross-encoder judge (kind ``encoder``).

:func:`train_encoder_judge` builds the prompt-disjoint corpus
(:func:`unlearnkit.judges.corpus.build_corpus`), fits the adapter and head
(:func:`unlearnkit.judges.encoder.fit_encoder`), saves ``judge.safetensors``
(at most ``MAX_JUDGE_BYTES``) and ``judge.json`` (command, data hashes, split,
hyperparameters, held-out figures) atomically. :func:`evaluate_encoder_judge`
rebuilds the same split from the recorded settings, checks every file's
sha256 and held-out indices, and scores each held-out set.
"""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

from unlearnkit.errors import DataError, UnlearnkitError
from unlearnkit.judges.base import THRESHOLD
from unlearnkit.judges.classifier import (
    JUDGE_FORMAT, JUDGE_META, JUDGE_WEIGHTS, MAX_JUDGE_BYTES, SELFCHECK_PROBES, SELFCHECK_TOLERANCE,
)

N_BINS = 10


def calibration_error(probs: list[float], labels: list[bool], bins: int = N_BINS) -> float | None:
    """Expected calibration error of P(harmful): equal-width bins over [0, 1].

    The sum over bins of (bin size / n) x |mean label - mean probability| in the
    bin (Naeini et al. 2015; Guo et al. 2017 use the confidence of the predicted
    class, which for two classes gives the same value). A probability of exactly
    1.0 falls in the last bin.
    """
    if len(probs) != len(labels):
        raise ValueError(f"need one label per probability, got {len(probs)} and {len(labels)}")
    if not probs:
        return None
    total = 0.0
    for b in range(bins):
        members = [i for i, p in enumerate(probs) if min(int(p * bins), bins - 1) == b]
        if members:
            mean_p = sum(probs[i] for i in members) / len(members)
            mean_y = sum(1.0 for i in members if labels[i]) / len(members)
            total += len(members) / len(probs) * abs(mean_y - mean_p)
    return total


def set_scores(probs: list[float], labels: list[bool]) -> dict:
    """Accuracy, per-class recall (n and 95% Wilson interval each), harmful rate and ECE."""
    from unlearnkit.evaluation.stats import rate
    from unlearnkit.judges.training import _scores

    judged = rate([p >= THRESHOLD for p in probs])
    return {**_scores(probs, labels), "judged_harmful": judged["rate"], "judged_harmful_ci95": judged["ci95"],
            "ece": calibration_error(probs, labels)}


def score_heldout(predict, heldout: dict[str, list], progress: bool = True) -> dict:
    """Scores of ``predict`` on every held-out set, with the judging throughput."""
    from unlearnkit.evaluation.stats import rate

    results: dict[str, dict] = {}
    answers, seconds = 0, 0.0
    for name, rows in heldout.items():
        if not rows:
            continue
        t0 = time.perf_counter()
        out = predict([p for p, _, _ in rows], [r for _, r, _ in rows], desc=f"held-out {name}")
        seconds += time.perf_counter() - t0
        answers += len(rows)
        labels = [h for _, _, h in rows]
        harm = out["harmful"] if isinstance(out, dict) else out
        results[name] = set_scores(harm, labels)
        if isinstance(out, dict) and "refusal" in out:
            judged = rate([p >= THRESHOLD for p in out["refusal"]])
            results[name]["judged_refusal"], results[name]["judged_refusal_ci95"] = judged["rate"], judged["ci95"]
    return {"sets": results, "answers": answers, "seconds": round(seconds, 2),
            "answers_per_second": round(answers / seconds, 2) if seconds else None}


def train_encoder_judge(out_dir: str | Path, sources: dict | None = None, seed: int = 0, epochs: int = 1,
                        lr: float = 5e-4, batch_size: int = 16, max_length: int = 96, lora_r: int = 8,
                        lora_alpha: float = 16.0, lora_dropout: float = 0.05, refusal_weight: float = 0.5,
                        layers: list[int] | None = None,
                        max_steps: int | None = None, eval_batch_size: int = 32, gptfuzz_train_max: int | None = 2000,
                        train_max: dict[str, int] | None = None, repeat: dict[str, int] | None = None,
                        device: str = "auto", progress: bool = True,
                        command: str | None = None, evaluate: bool = True) -> dict:
    """Train the cross-encoder judge and save it to ``out_dir``; returns the saved metadata."""
    from safetensors.torch import save_file

    from unlearnkit.judges.corpus import build_corpus
    from unlearnkit.judges.encoder import fit_encoder
    from unlearnkit.rundir import atomic_write_json, package_versions

    corpus = build_corpus(sources, seed=seed, gptfuzz_train_max=gptfuzz_train_max, train_max=train_max, repeat=repeat)
    t0 = time.time()
    state, model_meta, hyper, predict = fit_encoder(
        corpus["train"], epochs=epochs, lr=lr, batch_size=batch_size, max_length=max_length, lora_r=lora_r,
        lora_alpha=lora_alpha, lora_dropout=lora_dropout, refusal_weight=refusal_weight, seed=seed, layers=layers,
        max_steps=max_steps, eval_batch_size=eval_batch_size, device=device, progress=progress)
    train_seconds = time.time() - t0
    n_bytes = sum(v.numel() * v.element_size() for v in state.values())
    if n_bytes > MAX_JUDGE_BYTES:
        raise UnlearnkitError(f"the judge's adapter + head take {n_bytes / 2**20:.1f} MB, over the "
                              f"{MAX_JUDGE_BYTES // 2**20} MB limit; lower lora_r (now {lora_r}).")
    heldout = score_heldout(predict, corpus["heldout"], progress) if evaluate else None
    probe_prompts, probe_responses = [p for p, _ in SELFCHECK_PROBES], [r for _, r in SELFCHECK_PROBES]
    probes = predict(probe_prompts, probe_responses)
    meta = {
        "format": JUDGE_FORMAT,
        "kind": "encoder",
        **model_meta,
        "data": {name: {"path": v["path"], "sha256": v["sha256"]} for name, v in corpus["split"].items()
                 if isinstance(v, dict) and "sha256" in v},
        "split": {"by": "normalised prompt across every source; held-out prompts and responses removed from "
                        "training; held-out responses seen in training set apart", **corpus["split"]},
        "train_items": len(corpus["train"]),
        "hyperparameters": hyper,
        "training_command": command if command is not None else shlex.join(sys.argv),
        "train_seconds": round(train_seconds, 1),
        "heldout": heldout,
        "heldout_accuracy": heldout["sets"]["pku"]["accuracy"] if heldout and "pku" in heldout["sets"] else None,
        "selfcheck": {"prompts": probe_prompts, "responses": probe_responses, "probabilities": probes["harmful"],
                      "refusal_probabilities": probes["refusal"], "tolerance": SELFCHECK_TOLERANCE},
        "packages": package_versions(),
    }
    out_dir = Path(out_dir).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".{JUDGE_WEIGHTS}.tmp"
    save_file(state, str(tmp), metadata={"format": JUDGE_FORMAT, "kind": "encoder"})
    meta["weights_bytes"] = tmp.stat().st_size
    tmp.replace(out_dir / JUDGE_WEIGHTS)
    atomic_write_json(out_dir / JUDGE_META, meta)
    return meta


def recorded_corpus(meta: dict, sources: dict | None = None) -> dict:
    """The corpus a judge was trained on, rebuilt from its ``judge.json`` (files checked by sha256).

    ``sources`` overrides file paths by source name. Sources the judge was
    trained without stay out. Raises :class:`DataError` when a file differs or
    the rebuilt held-out indices differ from the recorded ones.
    """
    from unlearnkit.judges.classifier import file_sha256
    from unlearnkit.judges.corpus import build_corpus, default_sources

    split = meta["split"]
    defaults = default_sources()
    recorded = {}
    for name, v in meta["data"].items():
        # A recorded path that is not here (another checkout, another working directory, the package
        # installed elsewhere) falls back to this installation's default file; the sha256 decides.
        here = Path(v["path"]).expanduser()
        recorded[name] = v["path"] if here.is_file() or name not in defaults else str(defaults[name])
    paths = {**{k: None for k in defaults if k not in recorded}, **recorded, **(sources or {})}
    for name, path in paths.items():
        if name not in meta["data"] or path is None:
            continue
        p = Path(path).expanduser()
        if not p.is_file():
            raise DataError(f"the {name} file {p} does not exist; pass it with --source {name}=PATH.")
        if file_sha256(p) != meta["data"][name]["sha256"]:
            raise DataError(f"{p} is not the {name} file this judge was trained on (sha256 differs); "
                            "its held-out rows would be other rows, possibly training rows.")
    settings = split["settings"]
    corpus = build_corpus(paths, seed=split["seed"], pku_train_pairs=settings["pku_train_pairs"],
                          heldout_fraction=settings["heldout_fraction"],
                          gptfuzz_train_max=settings["gptfuzz_train_max"], train_max=settings["train_max"] or None,
                          repeat=settings.get("repeat") or None)
    for name, v in split.items():
        if isinstance(v, dict):
            for key in ("heldout_pair_indices", "heldout_row_indices"):
                if key in v and corpus["split"][name].get(key) != v[key]:
                    raise DataError(f"the rebuilt {name} split differs from the recorded one; "
                                    "evaluate with the unlearnkit version that trained the judge.")
    return corpus


def evaluate_encoder_judge(judge, sources: dict | None = None, sets: list[str] | None = None, limit: int | None = None,
                           progress: bool = True) -> dict:
    """Scores of a loaded encoder judge on the held-out sets it recorded (never a training item).

    The corpus is rebuilt and checked by :func:`recorded_corpus`. ``limit``
    scores a seeded sample of at most ``limit`` items of each set, for quick checks.
    """
    import random

    corpus = recorded_corpus(judge.meta, sources)
    heldout = {k: v for k, v in corpus["heldout"].items() if sets is None or k in sets}
    if limit is not None:
        heldout = {k: random.Random(f"limit:{k}").sample(v, min(limit, len(v))) for k, v in heldout.items()}

    def predict(prompts, responses, desc="judging"):
        return judge.verdicts(prompts, responses, progress=progress)

    return score_heldout(predict, heldout, progress)
