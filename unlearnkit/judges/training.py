"""Training and held-out evaluation of the project's classifier judge on PKU-SafeRLHF."""

from __future__ import annotations

import math
import random
import shlex
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import torch

from unlearnkit.console import show_progress
from unlearnkit.errors import DataError, UnlearnkitError
from unlearnkit.judges.base import THRESHOLD
from unlearnkit.judges.optim import check_training_args, run_steps
from unlearnkit.judges.classifier import (
    DEFAULT_BASE, INPUT_FORMAT, JUDGE_FORMAT, JUDGE_KINDS, JUDGE_META, JUDGE_WEIGHTS, MAX_JUDGE_BYTES, SELFCHECK_PROBES,
    SELFCHECK_TOLERANCE, ClassifierJudge, _build_net, _predict, default_pku_path, encode_pair, file_sha256,
)


def load_labelled_pairs(data_path: str | Path) -> list[list[tuple[str, str, bool]]]:
    """PKU-SafeRLHF rows as pairs: one list of (prompt, response, is_harmful) per row.

    Reads the project's file schema (``{"prompt", "response": [safe, unsafe]}``)
    and the hub schema (``response_0/1`` with ``is_response_N_safe``) through
    the ``pku_saferlhf`` recipe, so labels come from the same code as training
    data does.
    """
    from unlearnkit.data.recipes import pku_saferlhf
    from unlearnkit.data.sources import load_rows

    path = Path(data_path).expanduser()
    if not path.is_file():
        raise DataError(f"judge data file {path} does not exist.")
    rows = load_rows(str(path))
    pairs: dict[int, list[tuple[str, str, bool]]] = {}
    for ex in pku_saferlhf(rows, "both", source=str(path)):
        pairs.setdefault(int(ex.meta["pair"]), []).append((ex.prompt, ex.response, not ex.meta["safe"]))
    return [pairs[i] for i in sorted(pairs)]


def split_by_prompt(pairs: list[list[tuple[str, str, bool]]], train_pairs: int, heldout_pairs: int | None,
                    seed: int) -> tuple[list[int], list[int]]:
    """Disjoint (train, held-out) row indices, whole PROMPT groups on each side.

    Rows are grouped by their normalised prompt (the PKU file repeats prompts
    over many rows); the groups are shuffled with ``seed`` and go to training
    until it holds at least ``train_pairs`` rows; the rest is held out (at most
    ``heldout_pairs`` rows of whole groups when given). No held-out prompt is
    ever trained on.
    """
    from unlearnkit.data.audit import normalise

    n_pairs = len(pairs)
    if train_pairs < 1:
        raise DataError(f"train_pairs must be >= 1, got {train_pairs}.")
    if train_pairs >= n_pairs:
        raise DataError(f"train_pairs={train_pairs} leaves no held-out pair out of {n_pairs}.")
    if heldout_pairs is not None and heldout_pairs < 1:
        raise DataError(f"heldout_pairs must be >= 1, got {heldout_pairs}.")
    groups: dict[str, list[int]] = {}
    for i, rows in enumerate(pairs):
        groups.setdefault(normalise(rows[0][0]) if rows else f"#{i}", []).append(i)
    order = list(groups.values())
    random.Random(seed).shuffle(order)
    train: list[int] = []
    held: list[int] = []
    for members in order:
        if len(train) < train_pairs:
            train.extend(members)
        elif heldout_pairs is None or len(held) + len(members) <= heldout_pairs:
            held.extend(members)
    if not held:
        raise DataError(f"train_pairs={train_pairs} takes every prompt of the {n_pairs} pairs; nothing is left to hold out.")
    return sorted(train), sorted(held)


def judge_split_items(pairs: list[list[tuple[str, str, bool]]], train_idx: list[int],
                      held_idx: list[int]) -> tuple[list, list, list]:
    """(train items, held-out items, held-out items whose response also occurs in training).

    Items are (prompt, response, is_harmful). Exact duplicate responses
    (normalised) are dropped within each side, first occurrence kept, and a
    held-out response that occurs word for word in training is set apart: the
    held-out figure is measured only on answers the judge never saw.
    """
    from unlearnkit.data.audit import normalise

    def unique(items):
        seen: set[str] = set()
        out = []
        for item in items:
            key = normalise(item[1])
            if key and key not in seen:
                seen.add(key)
                out.append(item)
        return out

    train = unique(_flatten(pairs, train_idx))
    trained = {normalise(r) for _, r, _ in train}
    held_all = unique(_flatten(pairs, held_idx))
    held = [it for it in held_all if normalise(it[1]) not in trained]
    seen_in_training = [it for it in held_all if normalise(it[1]) in trained]
    return train, held, seen_in_training


def _flatten(pairs: list[list[tuple[str, str, bool]]], indices: list[int]) -> list[tuple[str, str, bool]]:
    return [item for i in indices for item in pairs[i]]


def _by_prompt(items: list[tuple[str, str, bool]]) -> list[list[tuple[str, str, bool]]]:
    from unlearnkit.data.audit import normalise

    groups: dict[str, list] = {}
    for item in items:
        groups.setdefault(normalise(item[0]), []).append(item)
    return list(groups.values())


def _accuracy(probs: list[float], labels: list[bool]) -> float:
    return sum((p >= THRESHOLD) == y for p, y in zip(probs, labels)) / len(labels)


DEFAULT_L2_GRID = (1e-6, 1e-5, 1e-4)


def _fit_lexical(train_groups: list[list[tuple[str, str, bool]]], *, dim: int, ngram: int, l2_grid: Sequence[float], max_iter: int,
                 val_fraction: float, seed: int, progress: bool) -> tuple[dict, dict, dict, Callable]:
    """Pick ``l2`` on a validation part of the training pairs, then refit on all of them."""
    from tqdm.auto import tqdm

    from unlearnkit.evaluation import lexical

    if dim < 2 or ngram < 1 or max_iter < 1:
        raise UnlearnkitError(f"dim must be >= 2, ngram >= 1 and max_iter >= 1 (got {dim}, {ngram}, {max_iter}).")
    if not l2_grid or any(v < 0 for v in l2_grid):
        raise UnlearnkitError(f"l2 values must be >= 0 and at least one given, got {list(l2_grid)}.")
    if not 0 < val_fraction < 1:
        raise UnlearnkitError(f"val_fraction must be between 0 and 1, got {val_fraction}.")
    # The validation part takes whole prompt groups, as the held-out split does.
    n_val = max(1, round(len(train_groups) * val_fraction))
    order = list(range(len(train_groups)))
    random.Random(seed + 1).shuffle(order)
    fit_part, val_part = _flatten(train_groups, sorted(order[n_val:])), _flatten(train_groups, sorted(order[:n_val]))
    train_items = [item for group in train_groups for item in group]

    def matrix(items):
        return lexical.feature_matrix([r for _, r, _ in items], dim, ngram), torch.tensor([float(h) for _, _, h in items])

    grid = sorted(set(float(v) for v in l2_grid))
    validation: dict[str, float] = {}
    best = grid[-1]
    if len(grid) > 1:
        x_fit, y_fit = matrix(fit_part)
        x_val, y_val = matrix(val_part)
        for l2 in tqdm(grid, desc="choosing l2", disable=not show_progress(progress), unit="fit"):
            w, b = lexical.fit_logistic(x_fit, y_fit, l2, max_iter)
            pred = (lexical.logits(x_val, w, b) >= 0).float()
            validation[repr(l2)] = float((pred == y_val).float().mean())
        # The strongest penalty among the best validation accuracies.
        top = max(validation.values())
        best = max(v for v in grid if validation[repr(v)] == top)
    x_all, y_all = matrix(train_items)
    with tqdm(total=1, desc=f"fitting (l2={best:g})", disable=not show_progress(progress), unit="fit") as bar:
        weight, bias = lexical.fit_logistic(x_all, y_all, best, max_iter)
        bar.update(1)

    def predict(prompts, responses, desc="judging"):
        return lexical.probabilities(list(responses), weight, bias, ngram)

    state = {"weight": weight.float().contiguous(), "bias": bias.float().reshape(1).contiguous()}
    model_meta = {"features": {"kind": "hashed word n-grams of the response", "dim": dim, "ngram": ngram,
                               "hash": "crc32", "value": "1 + log(count), unit L2 norm"}}
    hyper = {"model": "logistic regression", "optimizer": "L-BFGS (strong Wolfe)", "max_iter": max_iter,
             "l2_grid": grid, "l2": best, "val_fraction": val_fraction, "val_pairs": n_val,
             "validation_accuracy": validation, "seed": seed}
    return state, model_meta, hyper, predict


def _fit_lora(train_items, *, base_model: str, epochs: int, lr: float, batch_size: int, max_length: int, lora_r: int,
              lora_alpha: float, lora_dropout: float, pooling: str, seed: int, max_steps: int | None,
              eval_batch_size: int, device: str, progress: bool) -> tuple[dict, dict, dict, Callable]:
    """AdamW on a LoRA adapter + linear head over ``base_model``, binary cross-entropy."""
    from unlearnkit.data.tokenize import TokenizedExample, collate, pad_id_of
    from unlearnkit.models import describe_source

    check_training_args(lr, epochs=epochs, batch_size=batch_size, eval_batch_size=eval_batch_size)
    torch.manual_seed(seed)
    net, tokenizer = _build_net(base_model, lora_r, lora_alpha, lora_dropout, pooling, device)
    trainable = [p for p in net.parameters() if p.requires_grad]
    n_bytes = sum(p.numel() for p in trainable) * 4  # saved as float32
    if n_bytes > MAX_JUDGE_BYTES:
        raise UnlearnkitError(
            f"the judge's adapter + head would take {n_bytes / 2**20:.1f} MB, over the {MAX_JUDGE_BYTES // 2**20} MB "
            f"limit for the shipped judge; lower lora_r (now {lora_r})."
        )

    encoded = [encode_pair(tokenizer, p, r, max_length) for p, r, _ in train_items]
    labels = [float(h) for _, _, h in train_items]
    steps_per_epoch = math.ceil(len(encoded) / batch_size)
    total_steps = steps_per_epoch * epochs if max_steps is None else min(max_steps, steps_per_epoch * epochs)
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.0, 1.0 - s / max(total_steps, 1)))
    pad_id = pad_id_of(tokenizer)
    device_t = next(net.parameters()).device
    rng = random.Random(seed)
    net.train()

    def epoch_batches():
        order = list(range(len(encoded)))
        rng.shuffle(order)
        return (order[start : start + batch_size] for start in range(0, len(order), batch_size))

    def loss_of(idx: list[int]) -> torch.Tensor:
        batch = collate([TokenizedExample(encoded[i], encoded[i]) for i in idx], pad_id, padding_side="right")
        target = torch.tensor([labels[i] for i in idx], device=device_t)
        logits = net(batch["input_ids"].to(device_t), batch["attention_mask"].to(device_t))
        return torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), target)

    step = run_steps(total_steps, epoch_batches, loss_of, optimizer, scheduler, trainable, progress)
    net.eval()

    def predict(prompts, responses, desc="judging"):
        return _predict(net, tokenizer, prompts, responses, max_length, INPUT_FORMAT, eval_batch_size,
                        progress and len(prompts) > eval_batch_size, desc=desc)

    model_meta = {
        "base_model": base_model,
        "base_model_source": describe_source(base_model),
        "input_format": INPUT_FORMAT,
        "pooling": pooling,
        "max_length": max_length,
        "lora": {"r": lora_r, "alpha": lora_alpha, "dropout": lora_dropout,
                 "target_modules": sorted(net.peft_model.peft_config["default"].target_modules)},
    }
    hyper = {"epochs": epochs, "lr": lr, "batch_size": batch_size, "max_steps": max_steps,
             "optimizer": "AdamW", "schedule": "linear decay", "weight_decay": 0.0,
             "grad_clip": 1.0, "seed": seed, "steps_run": step}
    return net.trainable_state(), model_meta, hyper, predict


def train_judge(
    data_path: str | Path,
    out_dir: str | Path,
    kind: str = "lexical",
    train_pairs: int = 4000,
    heldout_pairs: int | None = None,
    seed: int = 0,
    progress: bool = True,
    command: str | None = None,
    *,
    dim: int | None = None,
    ngram: int | None = None,
    l2_grid: Sequence[float] = DEFAULT_L2_GRID,
    max_iter: int = 300,
    val_fraction: float = 0.15,
    base_model: str = DEFAULT_BASE,
    epochs: int = 1,
    lr: float = 3e-4,
    batch_size: int = 8,
    max_length: int = 256,
    lora_r: int = 8,
    lora_alpha: float = 16.0,
    lora_dropout: float = 0.05,
    pooling: str = "mean",
    max_steps: int | None = None,
    eval_batch_size: int = 16,
    device: str = "auto",
) -> dict:
    """Train a harm classifier and save it to ``out_dir``; returns the saved metadata.

    The PKU rows are split BY NORMALISED PROMPT with ``seed`` (every row of a
    prompt, both its answers, on one side: see :func:`split_by_prompt`), so no
    held-out prompt is ever trained on; duplicate responses are dropped and a
    held-out response that also occurs in training is not counted as held out
    (:func:`judge_split_items`). The held-out row indices are written to
    ``judge.json`` and :func:`evaluate_judge` uses exactly those. ``kind``:

    - ``lexical`` (default): hashed n-grams of the response + logistic
      regression (:mod:`unlearnkit.evaluation.lexical`); ``l2`` is chosen from
      ``l2_grid`` on a ``val_fraction`` of the TRAINING pairs, then the model is
      refitted on all training pairs. About two minutes on one CPU core.
    - ``lora``: a LoRA adapter and a linear head on ``base_model``, AdamW with a
      linearly decaying learning rate, binary cross-entropy on "the response is
      unsafe"; ``max_steps`` caps the optimiser steps (for smoke tests). Hours on
      a CPU for the full data.

    Saved: ``judge.safetensors`` (at most 5 MB, checked after saving) and
    ``judge.json`` with the provenance and the measured held-out accuracy.
    """
    from safetensors.torch import save_file

    from unlearnkit.evaluation import lexical
    from unlearnkit.rundir import atomic_write_json, package_versions

    if kind not in JUDGE_KINDS:
        raise UnlearnkitError(f"unknown judge kind {kind!r}; choose one of {', '.join(JUDGE_KINDS)}.")
    data_path = Path(data_path).expanduser()
    out_dir = Path(out_dir).expanduser()
    pairs = load_labelled_pairs(data_path)
    train_idx, held_idx = split_by_prompt(pairs, train_pairs, heldout_pairs, seed)
    train_items, held_items, held_seen = judge_split_items(pairs, train_idx, held_idx)

    t0 = time.time()
    if kind == "lexical":
        state, model_meta, hyper, predict = _fit_lexical(
            _by_prompt(train_items), dim=dim or lexical.DEFAULT_DIM, ngram=ngram or lexical.DEFAULT_NGRAM, l2_grid=l2_grid,
            max_iter=max_iter, val_fraction=val_fraction, seed=seed, progress=progress)
    else:
        state, model_meta, hyper, predict = _fit_lora(
            train_items, base_model=base_model, epochs=epochs, lr=lr, batch_size=batch_size, max_length=max_length,
            lora_r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, pooling=pooling, seed=seed,
            max_steps=max_steps, eval_batch_size=eval_batch_size, device=device, progress=progress)
    train_seconds = time.time() - t0

    held_probs = predict([p for p, _, _ in held_items], [r for _, r, _ in held_items], desc="held-out accuracy")
    held_scores = _scores(held_probs, [h for _, _, h in held_items])
    accuracy = held_scores["accuracy"]
    # Fixed probe pairs with their probabilities: a loaded judge must
    # reproduce them, which catches a different base model (another
    # dequantisation, another checkpoint under the same name) or altered
    # weights at load time. The probes are the project's own text, so no
    # data-set text ships in judge.json.
    probe_prompts = [p for p, _ in SELFCHECK_PROBES]
    probe_responses = [r for _, r in SELFCHECK_PROBES]
    selfcheck = {
        "prompts": probe_prompts,
        "responses": probe_responses,
        "probabilities": predict(probe_prompts, probe_responses),
        "tolerance": SELFCHECK_TOLERANCE,
    }
    meta = {
        "format": JUDGE_FORMAT,
        "kind": kind,
        **model_meta,
        "data": {"path": str(data_path), "sha256": file_sha256(data_path), "pairs": len(pairs)},
        "split": {
            "seed": seed,
            "by": "normalised prompt; duplicate responses dropped; held-out responses seen in training set apart",
            "train_pairs": len(train_idx),
            "heldout_pairs": len(held_idx),
            "train_prompts": len(_by_prompt(train_items)),
            "heldout_prompts": len(_by_prompt(held_items)),
            "train_responses": len(train_items),
            "heldout_responses": len(held_items),
            "heldout_responses_seen_in_training": len(held_seen),
            "heldout_pair_indices": held_idx,
        },
        "hyperparameters": hyper,
        "training_command": command if command is not None else shlex.join(sys.argv),
        "train_seconds": round(train_seconds, 1),
        "heldout_accuracy": accuracy,
        "heldout_scores": held_scores,
        "selfcheck": selfcheck,
        "packages": package_versions(),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".{JUDGE_WEIGHTS}.tmp"
    save_file(state, str(tmp), metadata={"format": JUDGE_FORMAT, "kind": kind})
    size = tmp.stat().st_size
    if size > MAX_JUDGE_BYTES:
        tmp.unlink()
        raise UnlearnkitError(f"the saved judge is {size / 2**20:.1f} MB, over the {MAX_JUDGE_BYTES // 2**20} MB limit; "
                              "lower dim (lexical) or lora_r (lora).")
    meta["weights_bytes"] = size
    tmp.replace(out_dir / JUDGE_WEIGHTS)
    atomic_write_json(out_dir / JUDGE_META, meta)
    return meta


def evaluate_judge(
    judge_dir: str | Path | None = None,
    data_path: str | Path | None = None,
    batch_size: int = 16,
    base_model: str | None = None,
    progress: bool = True,
) -> dict:
    """Accuracy of a trained judge on its held-out pairs (never a training pair).

    The held-out rows are whole prompt groups never trained on; their distinct
    responses that never occur in training are scored (``n``), each on its own;
    those that do occur in training are scored apart (``seen_in_training``).
    Every figure carries n and a 95% Wilson interval. The data file must be
    the one the judge was trained on (checked by sha256): the held-out pair
    indices only mean something for that file. ``data_path`` defaults to the
    path recorded in ``judge.json``, else the PKU file under ``UNLEARNKIT_DATA``.
    Returns ``{"accuracy", "accuracy_ci95", "n", "pairs", "prompts", "harmful_recall", "safe_recall",
    ... "seen_in_training"}``.
    """
    judge = ClassifierJudge(judge_dir, base_model=base_model, batch_size=batch_size)
    meta = judge.meta
    if data_path is not None:
        path = Path(data_path).expanduser()
    else:
        # The file recorded at training (a relative path is relative to where
        # training ran), else the development checkout's copy.
        recorded = Path(meta["data"]["path"])
        path = recorded if recorded.is_file() else default_pku_path()
    if not path.is_file():
        raise DataError(f"judge data file {path} does not exist; pass the PKU-SafeRLHF file the judge was trained on.")
    digest = file_sha256(path)
    if digest != meta["data"]["sha256"]:
        raise DataError(
            f"{path} is not the file this judge was trained on (sha256 {digest[:12]}… vs {meta['data']['sha256'][:12]}…); "
            "its held-out pair indices would point at other rows, possibly training rows."
        )
    pairs = load_labelled_pairs(path)
    held_idx = sorted(int(i) for i in meta["split"]["heldout_pair_indices"])
    held_set = set(held_idx)
    train_idx = [i for i in range(len(pairs)) if i not in held_set]
    _, items, seen = judge_split_items(pairs, train_idx, held_idx)
    probs = judge.harm_probability([p for p, _, _ in items + seen], [r for _, r, _ in items + seen], progress=progress)
    probs, seen_probs = probs[: len(items)], probs[len(items):]
    labels = [h for _, _, h in items]
    return {**_scores(probs, labels), "pairs": len(held_idx), "prompts": len(_by_prompt(items)),
            "seen_in_training": _scores(seen_probs, [h for _, _, h in seen]) if seen else None}


def _scores(probs: list[float], labels: list[bool]) -> dict:
    """Accuracy and per-class recall, each with n and a 95% Wilson interval."""
    from unlearnkit.evaluation.stats import rate

    correct = rate([(p >= THRESHOLD) == y for p, y in zip(probs, labels)])
    harmful = rate([p >= THRESHOLD for p, y in zip(probs, labels) if y])
    safe = rate([p < THRESHOLD for p, y in zip(probs, labels) if not y])
    return {
        "accuracy": correct["rate"], "accuracy_ci95": correct["ci95"], "n": correct["n"],
        "harmful_recall": harmful["rate"], "harmful_recall_ci95": harmful["ci95"], "n_harmful": harmful["n"],
        "safe_recall": safe["rate"], "safe_recall_ci95": safe["ci95"], "n_safe": safe["n"],
    }
