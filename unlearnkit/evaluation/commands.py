"""The evaluation commands of the CLI: ``eval``, ``compare``, ``judge train``, ``judge eval``.

:func:`add_commands` adds them to the ``unlearnkit`` parser; every handler is
a thin call into the library, returns an exit code, and raises
:class:`~unlearnkit.errors.UnlearnkitError` subclasses for user errors (the
CLI's ``main`` prints those as one line).
"""

from __future__ import annotations

import shlex
from pathlib import Path

from unlearnkit.errors import ConfigError, UnlearnkitError


def _default_pku() -> Path | None:
    from unlearnkit.evaluation.judges import default_pku_path

    p = default_pku_path()
    return p if p.is_file() else None


# --------------------------------------------------------------------------- eval


def eval_options(config_options: dict | None, overrides: list[str], limit: int | None):
    """EvalOptions from a config's ``eval.suite`` section, ``--set`` overrides and ``--limit``."""
    from pydantic import ValidationError

    from unlearnkit.config import _format_errors, apply_overrides
    from unlearnkit.evaluation.suite import EvalOptions

    raw = apply_overrides(dict(config_options or {}), overrides)
    if limit is not None:
        raw["limit"] = limit
    try:
        return EvalOptions.model_validate(raw)
    except ValidationError as exc:
        detail = _format_errors(exc).removeprefix("invalid config: ")
        raise ConfigError(f"invalid eval option: {detail}") from None


# A run folder's saved results: their evaluation is named after the run, not "model".
_RUN_OUTPUTS = ("model", "adapter", "harmful", "harmful_adapter")


def default_eval_dir(model: str) -> Path:
    """``eval/NAME`` with NAME unique per evaluated model: ``runs/x/model`` -> ``eval/x``,
    ``runs/x/adapter`` -> ``eval/x-adapter``, a hub id ``org/name`` -> ``eval/org--name``."""
    p = Path(model).expanduser()
    if p.exists():
        p = p.resolve()
        if p.name in _RUN_OUTPUTS and p.parent.name:
            name = p.parent.name if p.name == "model" else f"{p.parent.name}-{p.name}"
        else:
            name = p.name
    else:
        name = str(model).strip("/").replace("/", "--")
    return Path("eval") / (name or "model")


def check_eval_out(out: Path, model: str, overwrite: bool, run_folder: bool = False) -> bool:
    """Whether ``out`` is a new folder; an error where writing there could lose something.

    An existing evaluation is replaced only with ``--overwrite`` (and only one
    unlearnkit wrote); a non-empty folder unlearnkit did not make is refused; the
    evaluated model's own folder is never written into.
    """
    from unlearnkit.evaluation.report import EVAL_JSON, EVAL_MD
    from unlearnkit.evaluation.suite import EVAL_FORMAT
    from unlearnkit.rundir import MARKER, read_marker

    if out.exists() and not out.is_dir():
        raise UnlearnkitError(f"--out {out} is a file; eval writes a folder (eval.json, eval.md): give a folder path.")
    model_path = Path(model).expanduser()
    if model_path.is_dir() and not run_folder:
        try:
            out.resolve().relative_to(model_path.resolve())
        except ValueError:
            pass
        else:
            raise UnlearnkitError(f"refusing to write the evaluation into {out}, inside the evaluated model {model_path}; "
                                  "choose another --out.")
    if not out.exists() or not any(out.iterdir()):
        return True
    existing = out / EVAL_JSON
    if existing.is_file() or (out / EVAL_MD).is_file():
        try:
            import json

            made = json.loads(existing.read_text()).get("format") == EVAL_FORMAT
        except (OSError, ValueError, AttributeError):
            made = False
        if not made:
            raise UnlearnkitError(f"{out} holds an {EVAL_JSON} or {EVAL_MD} that unlearnkit did not write; it is never "
                                  "replaced: choose another --out.")
        if not overwrite:
            raise UnlearnkitError(f"{out} already holds an evaluation; pass --overwrite to replace it, or choose "
                                  "another --out.")
        return False
    if read_marker(out) is None and not run_folder:  # a run config's own folder may predate the marker
        raise UnlearnkitError(f"{out} is a folder unlearnkit did not make (no {MARKER}); choose another --out.")
    return False


def cmd_eval(args) -> int:
    from unlearnkit.evaluation.report import flatten_metrics, markdown_table, write_report
    from unlearnkit.evaluation.suite import run_eval

    cfg = None
    config_options = None
    if args.config:
        from unlearnkit.config import load_config

        cfg = load_config(args.config)
        suite_cfg = getattr(cfg.eval, "suite", None)
        config_options = suite_cfg.model_dump(exclude_unset=True) if suite_cfg is not None else None
    options = eval_options(config_options, args.overrides, args.limit)

    model = args.model
    original = args.original
    if cfg is not None:
        if model is None:
            # The run's saved result: a merged model, else its adapter.
            for name in ("model", "adapter"):
                if (cfg.run_dir / name).is_dir():
                    model = str(cfg.run_dir / name)
                    break
            else:
                raise UnlearnkitError(
                    f"{cfg.run_dir} holds no saved model (model/ or adapter/); run `unlearnkit unlearn {args.config}` "
                    "first, or pass --model."
                )
        if original is None:
            original = cfg.model.name
    if model is None:
        raise UnlearnkitError("give a model to evaluate: --model NAME_OR_PATH (or a run CONFIG).")

    suites = [s.strip() for s in args.suite.split(",") if s.strip()] if args.suite else None
    out = Path(args.out) if args.out else (cfg.run_dir if cfg is not None else default_eval_dir(model))
    fresh = check_eval_out(out, model, overwrite=args.overwrite, run_folder=cfg is not None and out == cfg.run_dir)
    result = run_eval(model, suites, options, original=original, run_config=cfg)
    json_path, md_path = write_report(result, out)
    if cfg is not None and out == cfg.run_dir:
        from unlearnkit.outputs import write_run_outputs

        write_run_outputs(out)  # the model card and report.html now carry these figures
    if fresh:
        from unlearnkit.rundir import write_marker

        write_marker(out, "eval", model=str(model))
    for suite, res in result["results"].items():
        print(f"\n{suite}")
        print(markdown_table(["metric", "value"], [[k, v] for k, v in flatten_metrics(res).items()]), end="")
    print(f"\nWrote {json_path} and {md_path}")
    return 0


# --------------------------------------------------------------------------- compare


def cmd_compare(args) -> int:
    from unlearnkit.evaluation.report import compare

    labels = [x.strip() for x in args.labels.split(",")] if args.labels else None
    markdown, _ = compare(args.paths, out_dir=args.out, labels=labels)
    print(markdown, end="")
    print(f"\nWrote {Path(args.out) / 'compare.md'}, compare.json, compare.png and compare.html")
    return 0


# --------------------------------------------------------------------------- judge


def _train_command(args, data: Path, out: Path) -> str:
    """The command that reproduces this training, every setting that matters spelled out."""
    parts = ["unlearnkit", "judge", "train", "--kind", args.kind, "--data", str(data)]
    if args.out:  # else the package's assets/judge, wherever the package is installed
        parts += ["--out", str(out)]
    parts += ["--train-pairs", str(args.train_pairs)]
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


def _float_list(text: str) -> list[float]:
    import argparse

    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one number")
    return values


def cmd_judge_train(args) -> int:
    from unlearnkit.evaluation.judges import default_judge_dir, train_judge

    data = Path(args.data) if args.data else _default_pku()
    if data is None:
        raise UnlearnkitError("no PKU-SafeRLHF file found at ../shared/data/pku_saferlhf/pku_saferlhf_5k.json; pass --data PATH.")
    out = Path(args.out) if args.out else default_judge_dir()
    meta = train_judge(
        data,
        out,
        kind=args.kind,
        train_pairs=args.train_pairs,
        heldout_pairs=args.heldout_pairs,
        seed=args.seed,
        progress=not args.no_progress,
        command=_train_command(args, data, out),
        dim=args.dim,
        ngram=args.ngram,
        l2_grid=args.l2,
        max_iter=args.max_iter,
        base_model=args.base_model,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        max_length=args.max_length,
        lora_r=args.lora_r,
        lora_alpha=args.lora_alpha,
        pooling=args.pooling,
        max_steps=args.max_steps,
    )
    ci = meta["heldout_scores"]["accuracy_ci95"]
    print(f"held-out accuracy: {meta['heldout_accuracy']:.3f} [95% {ci[0]:.3f}, {ci[1]:.3f}] on "
          f"{meta['split']['heldout_responses']} responses to {meta['split']['heldout_prompts']} unseen prompts")
    print(f"Judge saved to {out} ({meta['weights_bytes'] / 1024:.0f} kB)")
    return 0


def cmd_judge_eval(args) -> int:
    from unlearnkit.evaluation.judges import evaluate_judge

    result = evaluate_judge(args.judge, args.data, batch_size=args.batch_size, progress=not args.no_progress)

    def line(name: str, value, ci, n) -> str:
        if value is None:
            return f"{name}: - (n=0)"
        return f"{name}: {value:.3f} [95% {ci[0]:.3f}, {ci[1]:.3f}] (n={n})"

    print(line("accuracy", result["accuracy"], result["accuracy_ci95"], result["n"]))
    print(f"held out: {result['n']} distinct responses never seen in training, to {result['prompts']} prompts "
          f"never trained on ({result['pairs']} held-out rows)")
    print(line("harmful recall", result["harmful_recall"], result["harmful_recall_ci95"], result["n_harmful"]))
    print(line("safe recall", result["safe_recall"], result["safe_recall_ci95"], result["n_safe"]))
    seen = result.get("seen_in_training")
    if seen:
        print(line("accuracy on held-out-prompt responses also in training (not counted above)", seen["accuracy"],
                   seen["accuracy_ci95"], seen["n"]))
    return 0


# --------------------------------------------------------------------------- parser


def add_commands(subparsers) -> None:
    """Add ``eval``, ``compare`` and ``judge`` to the CLI's subparsers."""
    from unlearnkit.evaluation.suite import SUITES

    p = subparsers.add_parser(
        "eval", help="evaluate a model: harm, normal answers, TruthfulQA, perplexity, memorisation",
        description="Writes eval.json and eval.md. With a run CONFIG the run's saved model is evaluated against "
        "its original model, on the run's held-out data and template.",
    )
    p.add_argument("config", nargs="?", help="a run config (optional)")
    p.add_argument("--model", help="model to evaluate: alias, folder, LoRA adapter folder, .gguf or hub id")
    p.add_argument("--original", help="the original model (needed by the normal suite)")
    p.add_argument("--suite", help=f"comma-separated suites from {','.join(SUITES)} (default: harm,truthfulqa,"
                   "perplexity; plus normal with an original model, memorisation for a book run)")
    p.add_argument("--out", help="output folder (default: the run folder, else eval/NAME, NAME after the model: "
                   "runs/x/model -> eval/x)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier evaluation in the output folder")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="at most N items per set (a quick look)")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="an eval option, e.g. --set max_new_tokens=32, --set judges=[refusal,classifier], "
        "--set unseen_prompts.spec=prompts:my.csv (repeatable; the value is read as YAML)",
    )
    p.set_defaults(func=cmd_eval)

    p = subparsers.add_parser(
        "compare", help="side-by-side table and bar chart of several evaluations",
        description="Each path is an eval.json or a run folder (its eval.json, else its summary.json). "
        "Put the original model first: E (%%) rows compare every column's harmful rate with the first's.",
    )
    p.add_argument("paths", nargs="+", metavar="RUN_OR_EVAL")
    p.add_argument("--out", default="compare", help="folder for compare.md, compare.json, compare.png (default: compare)")
    p.add_argument("--labels", help="comma-separated column names (default: folder names)")
    p.set_defaults(func=cmd_compare)

    p = subparsers.add_parser("judge", help="train or evaluate the harm classifier judge")
    jsub = p.add_subparsers(dest="judge_command", metavar="SUBCOMMAND")
    t = jsub.add_parser(
        "train", help="train the classifier judge on PKU-SafeRLHF labels (default: n-gram logistic regression)",
        description="Splits the PKU pairs by pair into train / held-out with --seed, trains, and saves the judge "
        "(<= 5 MB) with judge.json (provenance, held-out accuracy). --kind lexical (default, the shipped judge): "
        "hashed word 1-3-grams of the response + logistic regression, minutes on a CPU. --kind lora: a LoRA adapter "
        "and a linear head on --base-model, hours on a CPU.",
    )
    t.add_argument("--kind", choices=["lexical", "lora"], default="lexical", help="judge kind (default lexical)")
    t.add_argument("--data", help="PKU-SafeRLHF file (default: ../shared/data/pku_saferlhf/pku_saferlhf_5k.json)")
    t.add_argument("--out", help="output folder (default: the package's assets/judge, the shipped judge)")
    t.add_argument("--train-pairs", type=int, default=4000)
    t.add_argument("--heldout-pairs", type=int, default=None, help="default: every pair not trained on")
    t.add_argument("--seed", type=int, default=0, help="split and training seed")
    t.add_argument("--dim", type=int, default=2**18, help="lexical: hash buckets (default 262144 = 1 MB of weights)")
    t.add_argument("--ngram", type=int, default=3, help="lexical: longest n-gram (default 3)")
    t.add_argument("--l2", type=_float_list, default=[1e-6, 1e-5, 1e-4],
                   help="lexical: L2 penalties to choose from on a validation part of the training pairs "
                   "(comma-separated, default 1e-6,1e-5,1e-4)")
    t.add_argument("--max-iter", type=int, default=300, help="lexical: L-BFGS iterations (default 300)")
    t.add_argument("--base-model", default="smollm2-135m-instruct", help="lora: base model spec (default smollm2-135m-instruct)")
    t.add_argument("--epochs", type=int, default=1, help="lora")
    t.add_argument("--lr", type=float, default=3e-4, help="lora")
    t.add_argument("--batch-size", type=int, default=8, help="lora")
    t.add_argument("--max-length", type=int, default=256, help="lora")
    t.add_argument("--lora-r", type=int, default=8, help="lora")
    t.add_argument("--lora-alpha", type=float, default=16.0, help="lora")
    t.add_argument("--pooling", choices=["mean", "last"], default="mean", help="lora")
    t.add_argument("--max-steps", type=int, default=None, help="lora: cap on optimiser steps (smoke tests)")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=cmd_judge_train)

    e = jsub.add_parser("eval", help="accuracy of a trained judge on its held-out pairs")
    e.add_argument("--judge", help="judge folder (default: the shipped judge)")
    e.add_argument("--data", help="the PKU-SafeRLHF file it was trained on (default: the path in judge.json)")
    e.add_argument("--batch-size", type=int, default=16)
    e.add_argument("--no-progress", action="store_true")
    e.set_defaults(func=cmd_judge_eval)
