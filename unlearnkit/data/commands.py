"""``unlearnkit data overlap``: the leak audit of a run, on any two (or more) data specs."""

from __future__ import annotations

import json

from unlearnkit.cliargs import add_set
from unlearnkit.errors import UnlearnkitError


def _source(spec: str, overrides: list[str]):
    from pydantic import ValidationError

    from unlearnkit.config import apply_overrides
    from unlearnkit.data.spec import DataSourceConfig

    raw = apply_overrides({"spec": spec, "shuffle": False}, overrides)
    try:
        return DataSourceConfig.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "option"
        raise UnlearnkitError(f"invalid data option {where}: {first.get('msg')}") from None


def overlap_report(specs: list[str], overrides: list[str], tokenizer) -> dict:
    """Every pair of the specs: shared normalised prompts and responses, and within-set duplicates."""
    from unlearnkit.data.audit import dedupe, overlap
    from unlearnkit.data.spec import load_examples

    loaded = {}
    duplicates = {}
    for spec in specs:
        src = _source(spec, overrides)
        raw = load_examples(src.model_copy(update={"dedupe": False}), tokenizer)
        duplicates[spec] = dedupe(raw)[1]
        loaded[spec] = raw
    pairs = []
    for i, a in enumerate(specs):
        for b in specs[i + 1 :]:
            pairs.append({"a": a, "b": b, **overlap(loaded[a], loaded[b])})
    return {"sets": {s: {"items": len(v), "duplicate_items": duplicates[s]} for s, v in loaded.items()}, "pairs": pairs}


def cmd_data_overlap(args) -> int:
    from unlearnkit.models import load_tokenizer

    if len(args.specs) < 2:
        raise UnlearnkitError("data overlap needs at least two data specs to compare.")
    tokenizer = load_tokenizer(args.model)
    report = overlap_report(args.specs, args.overrides, tokenizer)
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        for spec, info in report["sets"].items():
            print(f"{spec}: {info['items']} items, {info['duplicate_items']} exact duplicates (normalised)")
        for p in report["pairs"]:
            print(f"\n{p['a']}\n  vs {p['b']}\n  shared prompts: {p['shared_prompts']}, shared responses: {p['shared_responses']}")
            if p["example_prompt"]:
                print(f"  e.g. prompt: {p['example_prompt']!r}")
            if p["example_response"]:
                print(f"  e.g. response: {p['example_response']!r}")
    shared = sum(p["shared_prompts"] + p["shared_responses"] for p in report["pairs"])
    return 1 if shared and args.fail_on_overlap else 0


def add_overlap_command(dsub) -> None:
    p = dsub.add_parser(
        "overlap", help="count the prompts and responses that data sets share (the run's leak audit)",
        description="Compares every pair of SPECs by normalised prompt (or question) and normalised response "
        "(lower-cased, punctuation and whitespace folded), and counts exact duplicates inside each.",
    )
    p.add_argument("specs", nargs="+", metavar="SPEC")
    p.add_argument("--model", default="smollm2-135m-instruct", help="whose tokenizer cuts text into chunks")
    add_set(p, "a data option for every spec, e.g. --set subset=both", metavar="OPTION=VALUE")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--fail-on-overlap", action="store_true", help="exit 1 when any pair shares a prompt or response")
    p.set_defaults(func=cmd_data_overlap)
