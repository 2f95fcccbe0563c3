"""`unlearnkit run` and `unlearnkit finetune`."""

from __future__ import annotations

from unlearnkit.cliargs import add_config_command, add_set
from unlearnkit.errors import ConfigError
from unlearnkit.experiment.runner import run_experiment
from unlearnkit.experiment.spec import load_experiment, stage_state


def cmd_finetune(args) -> int:
    """``unlearnkit finetune CONFIG``: ``unlearn`` for a config whose method is ``finetune``."""
    from unlearnkit.training.commands import cmd_unlearn
    from unlearnkit.config import apply_overrides, load_raw

    raw = apply_overrides(load_raw(args.config), args.overrides)
    method = raw.get("method")
    name = method.get("name") if isinstance(method, dict) else method
    if name is None:  # no method named: this command's
        args.overrides = [*args.overrides, "method.name=finetune"]
    elif name != "finetune":
        raise ConfigError(f"{args.config}: method.name is {name!r}; `unlearnkit finetune` runs method finetune "
                          "(use `unlearnkit unlearn` for unlearning methods).")
    return cmd_unlearn(args)


def cmd_run(args) -> int:
    exp = load_experiment(args.experiment, args.overrides)
    if args.plan:
        print(f"Experiment {exp.cfg.name} -> {exp.folder}")
        for s in exp.stages:
            print(f"  [{s.index + 1}/{len(exp.stages)}] {s.name:<20} {s.kind:<8} from {s.model_from:<16} {stage_state(s)}")
        return 0
    run_experiment(exp, from_stage=args.from_stage)
    return 0


def add_commands(subparsers) -> None:
    """Add ``finetune`` and ``run`` to the CLI's subparsers."""
    add_config_command(
        subparsers, "finetune", cmd_finetune,
        help="finetune a model on a text (method finetune, e.g. LoRA on a book) from a config",
        description="The same run as `unlearnkit unlearn`, for a config whose method is finetune (set when the "
        "config names no method): minimise the NLL of data.forget, the text to learn.",
    )

    p = subparsers.add_parser(
        "run", help="run an experiment: stages (finetune, eval, unlearn, eval) in order, then one report",
        description="Each stage writes OUTPUT_DIR/NAME/STAGE/. Stages already done are skipped; an interrupted "
        "training stage resumes from its last checkpoint. The report (report.md, report.json) holds the table "
        "Original / Finetuned / Unlearned. See docs/copyright.md.",
    )
    p.add_argument("experiment")
    add_set(p, "override an experiment key, e.g. --set vars.book=my_book.txt, --set output_dir=/tmp/x "
                   "(repeatable; the value is read as YAML)")
    p.add_argument("--from", dest="from_stage", metavar="STAGE", help="rerun STAGE and every stage after it")
    p.add_argument("--plan", action="store_true", help="list the stages and their state, run nothing")
    p.set_defaults(func=cmd_run)
