"""``unlearnkit attack MODEL --reference ORIGINAL``: the robustness evaluation from the command line."""

from __future__ import annotations

from pathlib import Path

from unlearnkit.cliargs import add_set
from unlearnkit.errors import ConfigError


def attack_options(config_options: dict | None, overrides: list[str], forget: str | None, attacks: str | None):
    """AttackOptions from a run config's ``eval.suite.attack`` section, ``--forget``, ``--attacks`` and ``--set``."""
    from pydantic import ValidationError

    from unlearnkit.attacks.options import AttackOptions
    from unlearnkit.config import format_errors, apply_overrides

    raw = dict(config_options or {})
    if forget:
        raw["forget"] = {"spec": forget, **(raw.get("forget") or {})}
    if attacks:
        raw["attacks"] = [a.strip() for a in attacks.split(",") if a.strip()]
    raw = apply_overrides(raw, overrides)
    try:
        return AttackOptions.model_validate(raw)
    except ValidationError as exc:
        detail = format_errors(exc).removeprefix("invalid config: ")
        raise ConfigError(f"invalid attack option: {detail}") from None


def cmd_attack(args) -> int:
    from unlearnkit.reports.attack import robustness_rows, write_attack_report
    from unlearnkit.attacks.run import run_attacks
    from unlearnkit.reports.evaluation import markdown_table
    from unlearnkit.rundir import check_outputs, check_replaceable, write_marker

    cfg = None
    config_options = None
    if args.config:
        from unlearnkit.config import load_config

        cfg = load_config(args.config)
        config_options = cfg.eval.suite.attack or None
    options = attack_options(config_options, args.overrides, args.forget, args.attacks)
    out = Path(args.out) if args.out else Path("attack") / (Path(args.model).name or "model")
    check_outputs([("attack output", out)], [("model", Path(args.model)), ("reference", Path(args.reference))])
    check_replaceable(out, "attack", args.overwrite, "attack output")
    result = run_attacks(args.model, args.reference, options, run_config=cfg)
    out.mkdir(parents=True, exist_ok=True)
    write_marker(out, "attack", model=str(args.model), reference=str(args.reference))
    json_path, md_path = write_attack_report(result, out)
    header, rows = robustness_rows(result)
    print(markdown_table(header, rows), end="")
    print(f"\nWrote {json_path} and {md_path}")
    return 0


def add_attack_command(sub) -> None:
    p = sub.add_parser(
        "attack", help="try to undo an unlearning: quantisation, relearning and prompt attacks, with recovery ratios",
        description="Measures MODEL (unlearned), its REFERENCE (the model before unlearning) and every attacked "
        "version on the same held-out forget items; writes attack.json and attack.md (the robustness table). "
        "Options: --set KEY=VALUE for any attack option (bits=[4], relearn_steps=[5,10], full_lrs=[1e-5], "
        "prompt_limit=20, ...; see docs/robustness.md).",
    )
    p.add_argument("model", help="the unlearned model: folder, LoRA adapter folder, alias or hub id")
    p.add_argument("--reference", required=True, help="the model the unlearning started from")
    p.add_argument("--config", help="the unlearning run's config: its forget data, template and trained sets are used")
    p.add_argument("--forget", metavar="SPEC", help="forget data spec (without --config); its holdout part is scored, "
                   "e.g. pku_saferlhf:FILE with --set forget.holdout=60")
    p.add_argument("--attacks", help="comma-separated from quantise,relearn,prompts (default: all three)")
    p.add_argument("--out", help="output folder (default attack/NAME, NAME the model folder's name)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier attack output in --out")
    add_set(p, "an attack option (repeatable; the value is read as YAML)")
    p.set_defaults(func=cmd_attack)
