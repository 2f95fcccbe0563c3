"""The evaluation commands of the CLI: ``eval``, ``compare``, ``judge train``, ``judge eval``.

:func:`add_commands` adds them to the ``unlearnkit`` parser; every handler is
a thin call into the library, returns an exit code, and raises
:class:`~unlearnkit.errors.UnlearnkitError` subclasses for user errors (the
CLI's ``main`` prints those as one line).
"""

from __future__ import annotations

import shlex
from pathlib import Path

from unlearnkit.cliargs import add_set
from unlearnkit.errors import ConfigError, UnlearnkitError


def _default_pku() -> Path | None:
    from unlearnkit.evaluation.judges import default_pku_path

    p = default_pku_path()
    return p if p.is_file() else None


# --------------------------------------------------------------------------- eval


def eval_options(config_options: dict | None, overrides: list[str], limit: int | None):
    """EvalOptions from a config's ``eval.suite`` section, ``--set`` overrides and ``--limit``."""
    from pydantic import ValidationError

    from unlearnkit.config import format_errors, apply_overrides
    from unlearnkit.evaluation.suite import EvalOptions

    raw = apply_overrides(dict(config_options or {}), overrides)
    if limit is not None:
        raw["limit"] = limit
    try:
        return EvalOptions.model_validate(raw)
    except ValidationError as exc:
        detail = format_errors(exc).removeprefix("invalid config: ")
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
    from unlearnkit.reports.evaluation import EVAL_JSON, EVAL_MD
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
    from unlearnkit.reports.evaluation import flatten_metrics, markdown_table, write_report
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
    from unlearnkit.reports.evaluation import compare

    labels = [x.strip() for x in args.labels.split(",")] if args.labels else None
    markdown, _ = compare(args.paths, out_dir=args.out, labels=labels)
    print(markdown, end="")
    print(f"\nWrote {Path(args.out) / 'compare.md'}, compare.json, compare.png and compare.html")
    return 0


# --------------------------------------------------------------------------- parser


def add_commands(subparsers) -> None:
    """Add ``eval``, ``compare`` and ``judge`` to the CLI's subparsers."""
    from unlearnkit.evaluation.suite import SUITES

    p = subparsers.add_parser(
        "eval", help="evaluate a model: harm, over-refusal, normal answers, TruthfulQA, perplexity, memorisation",
        description="Writes eval.json and eval.md. With a run CONFIG the run's saved model is evaluated against "
        "its original model, on the run's held-out data and template.",
    )
    p.add_argument("config", nargs="?", help="a run config (optional)")
    p.add_argument("--model", help="model to evaluate: alias, folder, LoRA adapter folder, .gguf or hub id")
    p.add_argument("--original", help="the original model (needed by the normal suite)")
    p.add_argument("--suite", help=f"comma-separated suites from {','.join(SUITES)},attack (default: harm,overrefusal,"
                   "truthfulqa,perplexity; plus normal with an original model; memorisation instead of "
                   "overrefusal for a book run; attack only when named)")
    p.add_argument("--out", help="output folder (default: the run folder, else eval/NAME, NAME after the model: "
                   "runs/x/model -> eval/x)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier evaluation in the output folder")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="at most N items per set (a quick look)")
    add_set(p, "an eval option, e.g. --set max_new_tokens=32, --set judges=[refusal,classifier], "
            "--set unseen_prompts.spec=prompts:my.csv (repeatable; the value is read as YAML)")
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

    from unlearnkit.judges.cli import add_judge_commands

    add_judge_commands(subparsers)
