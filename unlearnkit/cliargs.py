"""Arguments that several commands share (``--set``, and a run's ``--resume / --overwrite / --stop-at``)."""

from __future__ import annotations

import argparse

SET_HELP = "override a config key, e.g. --set train.lr=1e-4 (repeatable; the value is read as YAML)"


def add_set(p: argparse.ArgumentParser, help: str = SET_HELP, metavar: str = "KEY=VALUE") -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar=metavar, help=help)


def add_run_flags(p: argparse.ArgumentParser) -> None:
    """What a training command accepts beside its config."""
    p.add_argument("--resume", action="store_true", help="continue the run from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    p.add_argument("--stop-at", type=int, default=None, metavar="STEP",
                   help="pause after STEP steps with a checkpoint (the schedule still targets max_steps)")


def add_config_command(sub, name: str, func, help: str, description: str | None = None) -> None:
    """A training command: ``NAME CONFIG [--set ...] [--resume | --overwrite] [--stop-at STEP]``."""
    p = sub.add_parser(name, help=help, description=description)
    p.add_argument("config")
    add_set(p)
    add_run_flags(p)
    p.set_defaults(func=func)


def add_table_command(sub, name: str, make_table, metavar: str, help: str, description: str) -> None:
    """``report NAME INPUT... [-o FILE]``: print the Markdown table ``make_table(inputs)`` and
    optionally write it (atomically)."""

    def run(args) -> int:
        from pathlib import Path

        from unlearnkit.rundir import atomic_write_text

        text = make_table(args.inputs)
        if args.output:
            atomic_write_text(Path(args.output), text)
            print(f"Wrote {args.output}")
        print(text)
        return 0

    p = sub.add_parser(name, help=help, description=description)
    p.add_argument("inputs", nargs="+", metavar=metavar)
    p.add_argument("--output", "-o", help="also write the Markdown table to this file (atomically)")
    p.set_defaults(func=run)
