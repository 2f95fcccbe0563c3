"""``unlearnkit judge train`` and ``unlearnkit judge eval``."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from unlearnkit.errors import UnlearnkitError

# Per-kind defaults of the shared training flags.
KIND_DEFAULTS = {
    "lora": {"epochs": 1, "lr": 3e-4, "batch_size": 8, "max_length": 256},
    "encoder": {"epochs": 1, "lr": 5e-4, "batch_size": 16, "max_length": 96},
}
SOURCE_NAMES = ("pku", "beavertails", "gptfuzz_train", "gptfuzz_evaluate", "truthfulqa", "everyday", "tofu")


def _float_list(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one number")
    return values


def _source(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or name not in SOURCE_NAMES or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH with NAME one of {', '.join(SOURCE_NAMES)}, got {text!r}")
    return name, path


def _cap(text: str) -> tuple[str, int]:
    name, sep, value = text.partition("=")
    if not sep or name not in SOURCE_NAMES or not value.isdigit():
        raise argparse.ArgumentTypeError(f"expected NAME=N with NAME one of {', '.join(SOURCE_NAMES)}, got {text!r}")
    return name, int(value)


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _fill_defaults(args) -> None:
    for key, value in KIND_DEFAULTS.get(args.kind, {}).items():
        if getattr(args, key) is None:
            setattr(args, key, value)


def _train_command(args, data: Path | None, out: Path) -> str:
    """The command that reproduces this training, every setting that matters spelled out."""
    parts = ["unlearnkit", "judge", "train", "--kind", args.kind]
    if args.out:  # else the package's assets/judge, wherever the package is installed
        parts += ["--out", str(out)]
    if args.kind == "encoder":
        for name, path in args.sources:
            parts += ["--source", f"{name}={path}"]
        parts += ["--seed", str(args.seed), "--epochs", str(args.epochs), "--lr", str(args.lr), "--batch-size",
                  str(args.batch_size), "--max-length", str(args.max_length), "--lora-r", str(args.lora_r),
                  "--lora-alpha", str(args.lora_alpha), "--refusal-weight", str(args.refusal_weight),
                  "--gptfuzz-train-max", str(args.gptfuzz_train_max)]
        for name, n in args.train_max:
            parts += ["--train-max", f"{name}={n}"]
        for name, n in args.repeat:
            parts += ["--repeat", f"{name}={n}"]
        if args.layers is not None:
            parts += ["--layers", ",".join(str(i) for i in args.layers)]
    else:
        parts += ["--data", str(data), "--train-pairs", str(args.train_pairs)]
        if args.heldout_pairs is not None:
            parts += ["--heldout-pairs", str(args.heldout_pairs)]
        parts += ["--seed", str(args.seed)]
        if args.kind == "lexical":
            parts += ["--dim", str(args.dim), "--ngram", str(args.ngram), "--l2", ",".join(f"{v:g}" for v in args.l2),
                      "--max-iter", str(args.max_iter)]
        else:
            parts += ["--base-model", args.base_model, "--epochs", str(args.epochs), "--lr", str(args.lr),
                      "--batch-size", str(args.batch_size), "--max-length", str(args.max_length), "--lora-r",
                      str(args.lora_r), "--lora-alpha", str(args.lora_alpha), "--pooling", args.pooling]
    if args.max_steps is not None:
        parts += ["--max-steps", str(args.max_steps)]
    return shlex.join(parts)


def _line(name: str, value, ci, n) -> str:
    if value is None:
        return f"{name}: - (n=0)"
    return f"{name}: {value:.3f} [95% {ci[0]:.3f}, {ci[1]:.3f}] (n={n})"


def print_heldout(result: dict) -> None:
    """One block per held-out set: accuracy, per-class recall, judged rates, ECE; then the throughput."""
    for name, s in result["sets"].items():
        print(f"[{name}]")
        print("  " + _line("accuracy", s["accuracy"], s["accuracy_ci95"], s["n"]))
        print("  " + _line("harmful recall", s["harmful_recall"], s["harmful_recall_ci95"], s["n_harmful"]))
        print("  " + _line("safe recall", s["safe_recall"], s["safe_recall_ci95"], s["n_safe"]))
        print("  " + _line("judged harmful", s["judged_harmful"], s["judged_harmful_ci95"], s["n"]))
        if "judged_refusal" in s:
            print("  " + _line("judged refusal", s["judged_refusal"], s["judged_refusal_ci95"], s["n"]))
        print(f"  expected calibration error: {s['ece']:.3f} ({10} bins)")
    print(f"throughput: {result['answers']} answers in {result['seconds']:.1f} s = "
          f"{result['answers_per_second']} answers/s")


def cmd_judge_train(args) -> int:
    from unlearnkit.judges.classifier import default_judge_dir, default_pku_path

    _fill_defaults(args)
    out = Path(args.out) if args.out else default_judge_dir()
    if args.kind == "encoder":
        from unlearnkit.judges.crosstrain import train_encoder_judge

        meta = train_encoder_judge(
            out, dict(args.sources), seed=args.seed, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
            max_length=args.max_length, lora_r=args.lora_r, lora_alpha=args.lora_alpha,
            refusal_weight=args.refusal_weight, max_steps=args.max_steps, gptfuzz_train_max=args.gptfuzz_train_max,
            train_max=dict(args.train_max) or None, repeat=dict(args.repeat) or None, layers=args.layers,
            progress=not args.no_progress, command=_train_command(args, None, out))
        if meta["heldout"]:
            print_heldout(meta["heldout"])
        print(f"Judge saved to {out} ({meta['weights_bytes'] / 1024:.0f} kB)")
        return 0
    from unlearnkit.judges.training import train_judge

    data = Path(args.data) if args.data else default_pku_path()
    if not data.is_file():
        raise UnlearnkitError(f"no PKU-SafeRLHF file found at {data}; pass --data PATH.")
    meta = train_judge(
        data, out, kind=args.kind, train_pairs=args.train_pairs, heldout_pairs=args.heldout_pairs, seed=args.seed,
        progress=not args.no_progress, command=_train_command(args, data, out), dim=args.dim, ngram=args.ngram,
        l2_grid=args.l2, max_iter=args.max_iter, base_model=args.base_model,
        **({k: getattr(args, k) for k in KIND_DEFAULTS["lora"]} if args.kind == "lora" else {}),
        lora_r=args.lora_r, lora_alpha=args.lora_alpha, pooling=args.pooling, max_steps=args.max_steps,
    )
    ci = meta["heldout_scores"]["accuracy_ci95"]
    print(f"held-out accuracy: {meta['heldout_accuracy']:.3f} [95% {ci[0]:.3f}, {ci[1]:.3f}] on "
          f"{meta['split']['heldout_responses']} responses to {meta['split']['heldout_prompts']} unseen prompts")
    print(f"Judge saved to {out} ({meta['weights_bytes'] / 1024:.0f} kB)")
    return 0


def cmd_judge_eval(args) -> int:
    from unlearnkit.judges.classifier import ClassifierJudge

    judge = ClassifierJudge(args.judge, batch_size=args.batch_size)
    if judge.kind == "encoder":
        from unlearnkit.judges.crosstrain import evaluate_encoder_judge

        sets = args.sets.split(",") if args.sets else None
        print(f"judge: {judge.path} (kind encoder, {judge.meta['base_model']} + LoRA r={judge.meta['lora']['r']})")
        print_heldout(evaluate_encoder_judge(judge, dict(args.sources), sets=sets, limit=args.limit,
                                             progress=not args.no_progress))
        return 0
    from unlearnkit.judges.training import evaluate_judge

    result = evaluate_judge(args.judge, args.data, batch_size=args.batch_size, progress=not args.no_progress)
    print(_line("accuracy", result["accuracy"], result["accuracy_ci95"], result["n"]))
    print(f"held out: {result['n']} distinct responses never seen in training, to {result['prompts']} prompts "
          f"never trained on ({result['pairs']} held-out rows)")
    print(_line("harmful recall", result["harmful_recall"], result["harmful_recall_ci95"], result["n_harmful"]))
    print(_line("safe recall", result["safe_recall"], result["safe_recall_ci95"], result["n_safe"]))
    seen = result.get("seen_in_training")
    if seen:
        print(_line("accuracy on held-out-prompt responses also in training (not counted above)", seen["accuracy"],
                    seen["accuracy_ci95"], seen["n"]))
    return 0


def add_judge_commands(subparsers) -> None:
    """``judge train`` and ``judge eval``."""
    p = subparsers.add_parser("judge", help="train or evaluate the harm classifier judge")
    jsub = p.add_subparsers(dest="judge_command", metavar="SUBCOMMAND")
    t = jsub.add_parser(
        "train", help="train the classifier judge (default: the cross-encoder on every labelled set)",
        description="--kind encoder (default, the shipped judge): all-MiniLM-L6-v2 read as a cross-encoder with a "
        "LoRA adapter and a two-verdict (harmful, refusal) head, on prompt-disjoint train parts of PKU-SafeRLHF, "
        "BeaverTails, GPTFuzz-train and safe calibration answers; tens of minutes on a CPU. --kind lexical: hashed "
        "word 1-3-grams of the response + logistic regression on PKU, minutes. --kind lora: a LoRA adapter and a "
        "linear head on --base-model on PKU, hours on a CPU. Saves the judge (<= 5 MB) with judge.json "
        "(command, data hashes, split, held-out figures).",
    )
    t.add_argument("--kind", choices=["encoder", "lexical", "lora"], default="encoder", help="judge kind (default encoder)")
    t.add_argument("--source", dest="sources", action="append", type=_source, default=[], metavar="NAME=PATH",
                   help=f"encoder: a data file other than the default ({', '.join(SOURCE_NAMES)}; repeatable)")
    t.add_argument("--data", help="lexical/lora: PKU-SafeRLHF file (default: pku_saferlhf/pku_saferlhf_5k.json under UNLEARNKIT_DATA)")
    t.add_argument("--out", help="output folder (default: the package's assets/judge, the shipped judge)")
    t.add_argument("--train-pairs", type=int, default=4000, help="lexical/lora")
    t.add_argument("--heldout-pairs", type=int, default=None, help="lexical/lora; default: every pair not trained on")
    t.add_argument("--seed", type=int, default=0, help="split and training seed")
    t.add_argument("--dim", type=int, default=2**18, help="lexical: hash buckets (default 262144 = 1 MB of weights)")
    t.add_argument("--ngram", type=int, default=3, help="lexical: longest n-gram (default 3)")
    t.add_argument("--l2", type=_float_list, default=[1e-6, 1e-5, 1e-4],
                   help="lexical: L2 penalties to choose from on a validation part of the training pairs "
                   "(comma-separated, default 1e-6,1e-5,1e-4)")
    t.add_argument("--max-iter", type=int, default=300, help="lexical: L-BFGS iterations (default 300)")
    t.add_argument("--base-model", default="smollm2-135m-instruct", help="lora: base model spec (default smollm2-135m-instruct)")
    t.add_argument("--epochs", type=int, default=None, help="lora/encoder (default 1)")
    t.add_argument("--lr", type=float, default=None, help="lora (default 3e-4) / encoder (default 5e-4)")
    t.add_argument("--batch-size", type=int, default=None, help="lora (default 8) / encoder (default 16)")
    t.add_argument("--max-length", type=int, default=None, help="tokens per pair: lora (default 256) / encoder (default 96)")
    t.add_argument("--lora-r", type=int, default=8, help="lora/encoder")
    t.add_argument("--lora-alpha", type=float, default=16.0, help="lora/encoder")
    t.add_argument("--pooling", choices=["mean", "last"], default="mean", help="lora")
    t.add_argument("--refusal-weight", type=float, default=0.5, help="encoder: weight of the refusal verdict's loss")
    t.add_argument("--gptfuzz-train-max", type=int, default=2000, help="encoder: GPTFuzz-train answers sampled")
    t.add_argument("--train-max", action="append", type=_cap, default=[], metavar="NAME=N",
                   help="encoder: at most N training answers from source NAME (seeded sample; repeatable)")
    t.add_argument("--repeat", action="append", type=_cap, default=[], metavar="NAME=K",
                   help="encoder: list source NAME's training answers K times (small calibration sets; repeatable)")
    t.add_argument("--layers", type=_int_list, default=None,
                   help="encoder: comma-separated encoder layers that get adapters (default: all six)")
    t.add_argument("--max-steps", type=int, default=None, help="lora/encoder: cap on optimiser steps (smoke tests)")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=cmd_judge_train)

    e = jsub.add_parser("eval", help="a trained judge on its held-out data: accuracy, recall, calibration, speed")
    e.add_argument("--judge", help="judge folder (default: the shipped judge)")
    e.add_argument("--data", help="lexical/lora: the PKU-SafeRLHF file it was trained on (default: the path in judge.json)")
    e.add_argument("--source", dest="sources", action="append", type=_source, default=[], metavar="NAME=PATH",
                   help="encoder: a data file at another path than the one recorded (repeatable)")
    e.add_argument("--sets", help="encoder: comma-separated held-out sets (default: all)")
    e.add_argument("--limit", type=int, default=None, metavar="N", help="encoder: at most N items per set (seeded sample)")
    e.add_argument("--batch-size", type=int, default=16)
    e.add_argument("--no-progress", action="store_true")
    e.set_defaults(func=cmd_judge_eval)
