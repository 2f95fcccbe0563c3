"""The ``unlearnkit`` command line: a thin layer over the library."""

from __future__ import annotations

import argparse
import sys

from unlearnkit import __version__
from unlearnkit.cliargs import add_config_command, add_set
from unlearnkit.errors import UnlearnkitError


def cmd_models(args) -> int:
    from unlearnkit.models import ALIASES, alias_status

    print(f"{'alias':<24} {'offline':<8} {'cached':<7} description")
    for name in ALIASES:
        s = alias_status(name)
        print(f"{name:<24} {'yes' if s['offline'] else 'no':<8} {'yes' if s['cached'] else 'no':<7} {s['description']}")
        print(f"{'':<24} cache: {s['cache_path']}; with network also: {s['hub_id']}")
    print("\nAny Hugging Face hub id, local model folder or .gguf file works too.")
    return 0


def cmd_data_preview(args) -> int:
    from pydantic import ValidationError

    from unlearnkit.config import format_errors, apply_overrides
    from unlearnkit.data.spec import DataSourceConfig, load_examples
    from unlearnkit.data.templates import render_prompt, render_response
    from unlearnkit.data.tokenize import IGNORE_INDEX, ExampleTooLong, tokenize_example, tokenize_set
    from unlearnkit.data.types import MCItem
    from unlearnkit.models import load_tokenizer

    raw = apply_overrides({"spec": args.spec, "shuffle": False}, args.overrides)
    try:
        ds = DataSourceConfig.model_validate(raw)
    except ValidationError as exc:  # one line naming the option, as for configs
        detail = format_errors(exc).removeprefix("invalid config: ")
        raise UnlearnkitError(f"invalid data option: {detail}") from None
    tokenizer = load_tokenizer(args.model)
    items = load_examples(ds, tokenizer)
    print(f"{args.spec}: {len(items)} items (template {args.template}, tokenizer of {args.model})")
    pairs = [it for it in items if not isinstance(it, MCItem)]
    if pairs:
        _, _, report = tokenize_set(pairs, tokenizer, args.template, args.max_length, truncation=args.truncation,
                                    what=args.spec, strict=False)
        line = report.sentence(args.spec)
        if line:
            print(line.removeprefix("warning: ").replace("data.truncation=", "--truncation ")
                  + (" A run with data.truncation: error refuses this set." if args.truncation == "error" else ""))
    print("The prompt part, masked out of every loss, is shown between ⟦ and ⟧.\n")
    for i, item in enumerate(items[: args.n]):
        if isinstance(item, MCItem):
            print(f"--- item {i + 1}: {item.question}")
            for choice, label in zip(item.choices, item.labels):
                print(f"   [{'x' if label else ' '}] {choice}")
            continue
        try:
            tok = tokenize_example(item, tokenizer, args.template, args.max_length, truncation=args.truncation)
        except ExampleTooLong as exc:
            print(f"--- example {i + 1}: dropped: {exc}\n")
            continue
        n_prompt = sum(1 for label in tok.labels if label == IGNORE_INDEX)
        shown_prompt = render_prompt(args.template if item.prompt else "raw", tokenizer, item.prompt)
        if tok.answer_cut:
            # What training sees: the answer as cut to fit --max-length.
            shown_response = tokenizer.decode(tok.input_ids[n_prompt:], skip_special_tokens=False,
                                              clean_up_tokenization_spaces=False)
            note = f", answer cut by {tok.answer_cut} tokens to fit --max-length {args.max_length}"
            eos = ""
        else:
            shown_response = render_response(args.template if item.prompt else "raw", item.response)
            note = ""
            eos = tokenizer.eos_token if item.response and tokenizer.eos_token else ""
        print(f"--- example {i + 1}: {n_prompt} prompt tokens masked, {len(tok) - n_prompt} response tokens scored{note}")
        print(f"⟦{shown_prompt}⟧{shown_response}{eos}\n")
    return 0


def cmd_config_check(args) -> int:
    from unlearnkit.config import check_for_unlearn, dump_config, load_config, summarise_config

    cfg = load_config(args.file, args.overrides)
    if cfg.method["name"] != "finetune" or cfg.data.forget is None:
        check_for_unlearn(cfg, args.file)  # finetune checks the same: data.forget is its text
    if args.full:
        print(f"# {args.file}: valid. Resolved config (defaults filled in):")
        print(dump_config(cfg), end="")
        return 0
    print(f"{args.file}: valid.")
    for line in summarise_config(cfg):
        print(f"  {line}")
    print("Every resolved key, defaults included: --full.")
    return 0


def cmd_negate(args) -> int:
    from pathlib import Path

    from unlearnkit.errors import RunInterrupted
    from unlearnkit.models import ALIASES, ensure_alias_cached
    from unlearnkit.negation import negate_adapter, negate_checkpoints

    base = Path(ensure_alias_cached(args.base)) if args.base in ALIASES else Path(args.base)
    tuned = Path(args.tuned)
    out = Path(args.out)
    try:
        if (tuned / "adapter_config.json").is_file():
            # A LoRA adapter: subtract its scaled delta from the base, no second model.
            negate_adapter(base, tuned, out, scale=args.scale, overwrite=args.overwrite)
        else:
            negate_checkpoints(base, tuned, out, scale=args.scale, overwrite=args.overwrite)
    except KeyboardInterrupt:
        raise RunInterrupted(f"interrupted; nothing was written to {out} (run the command again to start over).") from None
    print(f"Negated model (base - {args.scale} x (tuned - base)) written to {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unlearnkit",
        description="Machine unlearning for Hugging Face causal language models: make a model forget harmful "
        "answers or a book, keep what it should, and prove it.",
    )
    parser.add_argument("--version", action="version", version=f"unlearnkit {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="no progress bars and no library chatter; results, warnings and errors are still printed "
                        "(NO_COLOR is honoured too)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("models", help="list the built-in model aliases and whether each works offline")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("data", help="inspect data sets")
    dsub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    pv = dsub.add_parser(
        "preview", help="show the first examples of a data spec after templating, with the masked prompt marked",
        description="SPEC is a file path (recipe detected from its columns), RECIPE:PATH or RECIPE:hub-name; "
        "recipes: pku_saferlhf, truthfulqa, truthfulqa_mc, text, prompts, generic.",
    )
    pv.add_argument("spec")
    pv.add_argument("-n", type=int, default=3, help="how many examples (default 3)")
    pv.add_argument("--template", default="qa", choices=["qa", "chat", "raw"])
    pv.add_argument("--model", default="smollm2-135m-instruct", help="whose tokenizer to use")
    pv.add_argument("--max-length", type=int, default=512)
    pv.add_argument("--truncation", default="answer_first", choices=["answer_first", "drop", "error"],
                    help="what a run does with an example longer than --max-length (data.truncation; default "
                    "answer_first: cut the answer's end, drop an example whose prompt does not fit)")
    add_set(pv, "a data option, e.g. --set subset=safe, --set mode=pairs", metavar="OPTION=VALUE")
    pv.set_defaults(func=cmd_data_preview)
    from unlearnkit.data.commands import add_overlap_command

    add_overlap_command(dsub)

    p = sub.add_parser("config", help="validate configs")
    csub = p.add_subparsers(dest="config_command", metavar="SUBCOMMAND")
    ck = csub.add_parser("check", help="validate a config as `unlearn` would and summarise what the run does")
    ck.add_argument("file")
    ck.add_argument("--full", action="store_true", help="print the whole resolved config (every default)")
    add_set(ck)
    ck.set_defaults(func=cmd_config_check)

    from unlearnkit.training.commands import cmd_unlearn

    add_config_command(sub, "unlearn", cmd_unlearn, help="run an unlearning method from a config")

    p = sub.add_parser(
        "negate", help="task-vector negation: OUT = BASE - SCALE x (TUNED - BASE)",
        description="Stage 2 of SKU on any two checkpoints. TUNED is a full safetensors checkpoint (streamed "
        "tensor by tensor) or a LoRA adapter folder trained on BASE (its delta is subtracted directly).",
    )
    p.add_argument("--base", required=True, help="the original model: a folder or a built-in alias")
    p.add_argument("--tuned", required=True, help="the model finetuned towards what to forget, or its LoRA adapter")
    p.add_argument("--scale", type=float, default=1.0, help="lambda (default 1.0)")
    p.add_argument("--out", required=True, help="output folder (must not be an input, inside one, or hold one)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace OUT when it holds an earlier negation output of unlearnkit")
    p.set_defaults(func=cmd_negate)

    from unlearnkit.evaluation.commands import add_commands

    add_commands(sub)  # eval, compare, judge train, judge eval
    from unlearnkit.reports.tofu import add_commands as add_report_commands

    report_sub = add_report_commands(sub)  # report tofu
    from unlearnkit.reports.attack import add_report_command as add_robustness_report

    add_robustness_report(report_sub)  # report robustness
    from unlearnkit.experiment import add_commands as add_experiment_commands

    add_experiment_commands(sub)  # finetune, run
    from unlearnkit.demo import add_commands as add_demo_commands

    add_demo_commands(sub)  # demo
    from unlearnkit.attacks.commands import add_attack_command

    add_attack_command(sub)  # attack
    from unlearnkit.reports.leaderboard import add_command as add_leaderboard_command

    add_leaderboard_command(sub)  # leaderboard
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from unlearnkit.console import set_quiet, style

    if args.quiet:
        set_quiet()
    func = getattr(args, "func", None)
    if func is None:
        # A group without its subcommand: show that group's help.
        parser.parse_args([*(argv if argv is not None else sys.argv[1:]), "--help"])
        return 2
    try:
        return func(args)
    except UnlearnkitError as exc:
        print(f"{style('error:', 'red', sys.stderr)} {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        # A command that knows what it kept says so; no other promise is made.
        print(getattr(exc, "message", None) or "interrupted.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
