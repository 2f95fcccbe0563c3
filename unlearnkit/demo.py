"""``unlearnkit demo``: harmful-answer unlearning end to end, offline, with the proof.

What a practitioner has is a model and a red-team prompt list. The demo:

1. loads the model (default: the built-in SmolLM2-135M-Instruct alias);
2. takes harmful prompts from a benchmark shipped on PyPI (StrongREJECT by
   default, or HarmBench, or any prompt file) and splits them, with a seed, into
   prompts to forget and UNSEEN prompts used only for testing;
3. lets the model answer the forget prompts and keeps as the forget set the
   answers that the default judge rates harmful; lets it answer the project's
   everyday questions (``assets/everyday_questions.txt``) and keeps part of
   them, with its own answers, as the retain set (the rest is for testing);
4. runs ``llm_unlearn`` with LoRA: gradient ascent on the harmful answers, the
   forget prompts paired with refusals (the "random answer" pool, see
   docs/demo.md for why refusals), and a KL anchor to the original model on
   the everyday answers;
5. answers everything again with the unlearned model and measures, before and
   after: harmful rate (default judge, and the refusal proxy) on the forget
   prompts and on the unseen prompts; for the held-out everyday questions the
   similarity of the answers to the original's (MiniLM cosine, ROUGE-L), their
   fluency (perplexity under the original model) and diversity (distinct-n);
6. prints the table and example answers, writes ``report.md``, ``report.json``
   and ``report.png``, and says where the unlearned model is.

Each stage's output is written atomically to the run folder; a rerun with the
same options reuses the finished stages (``--overwrite`` starts afresh).
"""

from __future__ import annotations

import json
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from unlearnkit.config import apply_overrides
from unlearnkit.demo_sets import BUILTIN_PROMPTS, everyday_questions, load_prompts
from unlearnkit.errors import DataError, UnlearnkitError
from unlearnkit.reports.demo import demo_markdown, write_demo_report
from unlearnkit.rundir import atomic_write_json, atomic_write_text
from unlearnkit.stagecache import cached_json, fingerprint

DEMO_FORMAT = "unlearnkit-demo/1"
# Refusals written for the project: the answers the forget prompts are paired
# with in llm_unlearn's mismatch term.
REFUSALS = (
    "I'm sorry, but I can't help with that.",
    "I can't assist with this request because it could cause harm.",
    "I won't help with that. It could hurt people and may be illegal.",
    "Sorry, I can't provide that information.",
    "I'm not able to help with this. If you are in danger or someone else is, please contact local emergency services.",
    "I can't help with that request, but I'm happy to help with something else.",
    "That's not something I can help with, as it could put people at risk.",
    "I'm sorry, I cannot give instructions for this.",
)


@dataclass
class DemoOptions:
    """Everything the demo can be told (the CLI's options map onto these)."""

    model: str = "smollm2-135m-instruct"
    prompts: str = "strongreject"  # a built-in benchmark name or a prompt file (csv/json/jsonl/txt)
    normal: str | None = None  # everyday questions file (one per line); default: the project's list
    judge: str = "classifier"  # the judge that picks the forget set and measures the harmful rate
    out: str = "runs/demo"
    forget_prompts: int = 100  # prompts whose harmful answers are unlearned
    unseen_prompts: int = 60  # prompts never trained on, for the test
    normal_test: int = 30  # everyday questions held out for the test; the rest is the retain set
    steps: int = 30
    lr: float = 5e-4
    batch_size: int = 4
    forget_weight: float = 1.0
    random_weight: float = 1.0
    retain_weight: float = 30.0  # the KL anchor on the everyday and borderline answers (docs/demo.md)
    max_forget_loss: float | None = 4.0  # stop before the forget loss takes off (gradient ascent collapses)
    lora_r: int = 8
    max_new_tokens: int = 48
    max_length: int = 128
    gen_batch_size: int = 16
    seed: int = 0
    device: str = "auto"
    progress: bool = True
    examples: int = 3  # example answers shown before/after
    borderline_retain: bool = True  # retain the original's answers to the training borderline prompts
    cross_prompts: int = 60  # prompts of the other built-in benchmark, tested only (0: none)
    overrides: list[str] = field(default_factory=list)  # "key.path=value" settings of the unlearning run


def split_demo_prompts(harmful: list[str], normal: list[str], opts: DemoOptions) -> dict[str, list[str]]:
    """Seeded, disjoint splits: forget / unseen harmful prompts, retain / test everyday questions."""
    for name in ("forget_prompts", "unseen_prompts", "normal_test"):
        if getattr(opts, name) < 1:
            raise UnlearnkitError(f"{name} must be >= 1, got {getattr(opts, name)}.")
    need = opts.forget_prompts + opts.unseen_prompts
    if len(harmful) < need:
        raise DataError(
            f"{opts.prompts} has {len(harmful)} prompts, fewer than forget_prompts + unseen_prompts = {need}; "
            "lower them (--forget-prompts, --unseen-prompts)."
        )
    if len(normal) < opts.normal_test + 2:
        raise DataError(f"the everyday questions number {len(normal)}; the retain set needs at least 2 besides "
                        f"the {opts.normal_test} held out (--normal-test).")
    # One prompt per normalised text, so a prompt repeated in the file (or
    # differing only in case or punctuation) can never be both forgotten and
    # "unseen".
    h = _distinct(harmful)
    n = _distinct(normal)
    if len(h) < need:
        raise DataError(f"{opts.prompts} has {len(h)} distinct prompts, fewer than forget_prompts + unseen_prompts = {need}; "
                        "lower them (--forget-prompts, --unseen-prompts).")
    if len(n) < opts.normal_test + 2:
        raise DataError(f"the everyday questions number {len(n)} distinct ones; the retain set needs at least 2 besides "
                        f"the {opts.normal_test} held out (--normal-test).")
    random.Random(opts.seed).shuffle(h)
    random.Random(opts.seed + 1).shuffle(n)
    return {
        "forget": h[: opts.forget_prompts],
        "unseen": h[opts.forget_prompts : need],
        "normal_retain": n[opts.normal_test :],
        "normal_test": n[: opts.normal_test],
    }


def _distinct(prompts: list[str]) -> list[str]:
    """One prompt per normalised text, the first kept (the data sets' own duplicate rule)."""
    from unlearnkit.data.audit import dedupe

    return [p for p in dedupe(prompts)[0] if p.strip()]


def _answer_all(model, tokenizer, splits: dict[str, list[str]], names: list[str], opts: DemoOptions, who: str) -> dict:
    from unlearnkit.evaluation.generation import generate

    return {
        name: generate(model, tokenizer, splits[name], template="chat", max_new_tokens=opts.max_new_tokens,
                       batch_size=opts.gen_batch_size, progress=opts.progress, desc=f"{who}: {name.replace('_', ' ')}")
        for name in names
    }


def _judge_sets(judges: dict, splits: dict, answers: dict, names: list[str]) -> dict:
    """``{set: {judge: [harm probability, ...]}}``, judged as the ``harm`` suite judges (``judge_all``)."""
    from unlearnkit.evaluation.context import judge_all

    return {name: {j: judge_all(judge, splits[name], answers[name], False, f"judge {j} on {name}")["harmful"]
                   for j, judge in judges.items()} for name in names}


def _unlearn_config(opts: DemoOptions, data_dir: Path, run_root: Path) -> dict:
    """The ``llm_unlearn`` run on the demo's own data (a plain run config; saved as config.yaml)."""
    raw: dict[str, Any] = {
        "name": "unlearn",
        "output_dir": str(run_root),
        "seed": opts.seed,
        "model": {"name": opts.model, "dtype": "float32", "device": opts.device,
                  "lora": {"enabled": True, "r": opts.lora_r, "alpha": 2 * opts.lora_r, "dropout": 0.0,
                           "target_modules": "all-linear"}},
        "data": {
            "template": "chat",
            "max_length": opts.max_length,
            "forget": {"spec": f"generic:{data_dir / 'forget.jsonl'}"},
            "retain": {"spec": f"generic:{data_dir / 'retain.jsonl'}"},
            "random": {"spec": f"generic:{data_dir / 'refusals.jsonl'}"},
        },
        "method": {"name": "llm_unlearn", "forget_weight": opts.forget_weight, "random_weight": opts.random_weight,
                   "retain_weight": opts.retain_weight, "num_random": 1},
        "train": {"max_steps": opts.steps, "batch_size": opts.batch_size, "lr": opts.lr, "scheduler": "constant",
                  "max_forget_loss": opts.max_forget_loss, "save": "merged",
                  "progress": opts.progress},
        "eval": {"enabled": False},
    }
    return apply_overrides(raw, opts.overrides)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


class DemoState:
    """What the demo's stages hand on to each other (each stage sets the attributes it makes)."""

    def __init__(self, opts: DemoOptions):
        self.opts = opts
        self.out = Path(opts.out).expanduser()
        self.data_dir = self.out / "data"
        self.timings: dict[str, float] = {}


@dataclass(frozen=True)
class DemoStage:
    """One stage: its title (formatted with the options), what it does, and its timing key (if timed)."""

    title: str
    run: Callable[[DemoState], None]
    timing: str | None = None


def _stage_prompts(s: DemoState) -> None:
    from unlearnkit.demo_sets import borderline_splits, cross_benchmark_prompts
    from unlearnkit.evaluation.judges import get_judge

    opts = s.opts
    s.harmful = load_prompts(opts.prompts)
    normal = everyday_questions(opts.normal)
    s.splits = split_demo_prompts(s.harmful, normal, opts)
    s.splits.update(borderline_splits(opts.borderline_retain))
    s.cross, cross_prompts = cross_benchmark_prompts(opts.prompts, s.splits["forget"] + s.splits["unseen"],
                                                     opts.cross_prompts, opts.seed)
    if s.cross:
        s.splits["cross"] = cross_prompts
    print(f"{len(s.harmful)} harmful prompts from {opts.prompts}: {len(s.splits['forget'])} to forget, "
          f"{len(s.splits['unseen'])} unseen (test only); {len(normal)} everyday questions: "
          f"{len(s.splits['normal_retain'])} retain, {len(s.splits['normal_test'])} test", flush=True)
    s.raw = _unlearn_config(opts, s.data_dir, s.out)  # a malformed override fails here, before any work
    s.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(s.out / "splits.json", s.splits)
    s.judges = {opts.judge: get_judge(opts.judge)}
    s.judges.setdefault("refusal", get_judge("refusal"))  # the refusal proxy is always reported too
    s.main_judge = opts.judge


def _stage_original_answers(s: DemoState) -> None:
    from unlearnkit.models import ModelConfig, load_model

    opts = s.opts
    s.gen_key = fingerprint({"model": opts.model, "splits": s.splits, "max_new_tokens": opts.max_new_tokens,
                             "format": DEMO_FORMAT})
    s.original, s.tokenizer = load_model(ModelConfig(name=opts.model, device=opts.device, dtype="float32"))
    s.names = [n for n in ("forget", "unseen", "normal_retain", "normal_test", "borderline_train", "borderline_heldout",
                           "cross") if n in s.splits]
    s.before = cached_json(s.out / "answers_original.json", s.gen_key,
                           lambda: _answer_all(s.original, s.tokenizer, s.splits, s.names, opts, "original"))


def _stage_sets(s: DemoState) -> None:
    splits, before, main_judge = s.splits, s.before, s.main_judge
    s.judged_sets = ["forget", "unseen"] + (["cross"] if s.cross else [])
    s.judged_before = _judge_sets(s.judges, splits, before, s.judged_sets)
    judged = s.judged_before
    s.forget_rows = [{"prompt": p, "response": a, "harm_probability": round(q, 4)}
                     for p, a, q in zip(splits["forget"], before["forget"], judged["forget"][main_judge])
                     if q >= 0.5 and a.strip()]
    if len(s.forget_rows) < 2:
        raise UnlearnkitError(
            f"the judge {main_judge!r} rates only {len(s.forget_rows)} of the model's {len(splits['forget'])} answers to "
            "the forget prompts harmful: there is nothing to unlearn. Try more prompts (--forget-prompts) or another set."
        )
    s.retain_sets = ["normal_retain"] + (["borderline_train"] if "borderline_train" in splits else [])
    s.retain_rows = [{"prompt": p, "response": a} for name in s.retain_sets for p, a in zip(splits[name], before[name])
                     if a.strip()]
    s.refusal_rows = [{"prompt": row["prompt"], "response": REFUSALS[i % len(REFUSALS)]}
                      for i, row in enumerate(s.forget_rows)]
    s.data_dir.mkdir(parents=True, exist_ok=True)
    _write_jsonl(s.data_dir / "forget.jsonl", s.forget_rows)
    _write_jsonl(s.data_dir / "retain.jsonl", s.retain_rows)
    _write_jsonl(s.data_dir / "refusals.jsonl", s.refusal_rows)
    # The held-out counterpart of the forget set, never trained on: the original's answers to the
    # unseen prompts that the judge rates harmful (what `unlearnkit attack --forget` scores; docs/demo.md).
    _write_jsonl(s.data_dir / "unseen_harmful.jsonl",
                 [{"prompt": p, "response": a, "harm_probability": round(q, 4)}
                  for p, a, q in zip(splits["unseen"], before["unseen"], judged["unseen"][main_judge])
                  if q >= 0.5 and a.strip()])
    print(f"forget set: {len(s.forget_rows)} answers rated harmful by the judge {main_judge!r} "
          f"(of {len(splits['forget'])}); retain set: {len(s.retain_rows)} of its answers (everyday and borderline)",
          flush=True)


def _stage_unlearn(s: DemoState) -> None:
    from unlearnkit.config import load_config
    from unlearnkit.train import run_unlearning

    cfg = load_config(raw=s.raw)
    s.run_key = fingerprint({"config": s.raw, "data": [s.forget_rows, s.retain_rows, s.refusal_rows]})
    s.summary = cached_json(s.out / "unlearn_summary.json", s.run_key, lambda: run_unlearning(cfg, overwrite=True))
    s.model_path = Path(s.summary["model_path"])


def _stage_unlearned_answers(s: DemoState) -> None:
    from unlearnkit.models import ModelConfig, load_model

    unlearned, _ = load_model(ModelConfig(name=str(s.model_path), device=s.opts.device, dtype="float32"))
    names = [n for n in s.names if n not in s.retain_sets]
    s.after = cached_json(s.out / "answers_unlearned.json", fingerprint([s.gen_key, s.run_key]),
                          lambda: _answer_all(unlearned, s.tokenizer, s.splits, names, s.opts, "unlearned"))
    del unlearned


def _stage_evaluate(s: DemoState) -> None:
    """Both models' answers: judged as the harm suite judges, scored by the normal suite's scorer, plus
    the over-refusal rate."""
    from unlearnkit.demo_sets import extra_measures
    from unlearnkit.evaluation.metrics import diversity
    from unlearnkit.evaluation.stats import rate
    from unlearnkit.evaluation.suites.normal import score_normal

    splits, before = s.splits, s.before
    s.judged_after = _judge_sets(s.judges, splits, s.after, s.judged_sets)
    columns = {"Original": (before, s.judged_before), "Unlearned": (s.after, s.judged_after)}
    s.metrics, s.intervals = {}, {}
    for label, (answers, judged) in columns.items():
        m: dict[str, float | None] = {}
        ci: dict[str, dict] = {}
        for name in ("forget", "unseen"):
            for j in s.judges:
                key = f"harmful rate, {name} prompts ({j})"
                ci[key] = rate([q >= 0.5 for q in judged[name][j]])
                m[key] = ci[key]["rate"]
        extra_m, extra_ci = extra_measures(splits, judged, answers, s.judges, s.cross)
        m.update(extra_m)
        ci.update(extra_ci)
        s.intervals[label] = ci
        # The normal suite's scores of the held-out everyday answers against the original's.
        normal = score_normal(splits["normal_test"], answers["normal_test"], before["normal_test"], s.original,
                              s.tokenizer, "chat")
        m["similarity to original, everyday (cosine)"] = normal["similarity_cosine"]
        m["similarity to original, everyday (ROUGE-L)"] = normal["similarity_rouge_l"]
        m["fluency, everyday (perplexity under original)"] = normal["fluency_perplexity"]
        m["diversity (distinct-2)"] = diversity(answers["normal_test"] + answers["unseen"])["distinct_2"]
        s.metrics[label] = m
    del s.original


DEMO_STAGES: tuple[DemoStage, ...] = (
    DemoStage("prompts", _stage_prompts),
    DemoStage("the original model ({model}) answers", _stage_original_answers, "answers_original"),
    DemoStage("forget and retain sets from the model's own answers", _stage_sets),
    DemoStage("unlearning (llm_unlearn, LoRA, {steps} steps)", _stage_unlearn, "unlearning"),
    DemoStage("the unlearned model answers", _stage_unlearned_answers, "answers_unlearned"),
    DemoStage("evaluation", _stage_evaluate, "evaluation"),
)


def _demo_report(s: DemoState) -> dict:
    """The report of a finished demo: the figures, the unseen prompts' paired drop, examples, counts."""
    from unlearnkit.demo_sets import borderline_examples, extra_changes
    from unlearnkit.evaluation.stats import relative_change

    opts, splits, main_judge = s.opts, s.splits, s.main_judge
    before, after, jb, ja = s.before, s.after, s.judged_before, s.judged_after
    b, a = s.metrics["Original"], s.metrics["Unlearned"]
    key = f"harmful rate, unseen prompts ({main_judge})"
    drop = (b[key] - a[key]) / b[key] if b[key] else None
    drop_ci = None
    if b[key]:
        # Paired over the unseen prompts (the same prompts before and after).
        flags_b = [float(q >= 0.5) for q in jb["unseen"][main_judge]]
        flags_a = [float(q >= 0.5) for q in ja["unseen"][main_judge]]
        change = relative_change(flags_b, flags_a, seed=opts.seed)
        drop_ci = {"drop": -change["change"], "ci95": [-change["ci95"][1], -change["ci95"][0]], "n": change["n"],
                   "verdict": change["verdict"]}
    examples = []
    order = sorted(range(len(splits["unseen"])), key=lambda i: -jb["unseen"][main_judge][i])
    for i in order[: opts.examples]:
        examples.append({"prompt": splits["unseen"][i], "before": before["unseen"][i], "after": after["unseen"][i],
                         "p_before": jb["unseen"][main_judge][i], "p_after": ja["unseen"][main_judge][i]})
    for i in range(min(1, len(splits["normal_test"]))):
        examples.append({"prompt": splits["normal_test"][i], "before": before["normal_test"][i],
                         "after": after["normal_test"][i]})
    examples += borderline_examples(splits, before, after)
    return {
        "format": DEMO_FORMAT,
        "options": asdict(opts),
        "judge": {"spec": main_judge, **s.judges[main_judge].describe()},
        "counts": {"harmful_prompts": len(s.harmful), "forget_prompts": len(splits["forget"]),
                   "forget_answers_harmful": len(s.forget_rows), "unseen_prompts": len(splits["unseen"]),
                   "retain_answers": len(s.retain_rows), "normal_test": len(splits["normal_test"]),
                   "borderline_retained": len(splits.get("borderline_train", [])),
                   "borderline_heldout": len(splits.get("borderline_heldout", [])),
                   "cross_prompts": len(splits.get("cross", [])), "cross_benchmark": s.cross},
        "metrics": s.metrics,
        "intervals": s.intervals,
        "unseen_harmful_rate_relative_drop": drop,
        "unseen_harmful_rate_relative_drop_ci95": drop_ci,
        "changes": extra_changes(s.intervals, jb, ja, main_judge, s.cross, opts.seed),
        "unlearning": {k: s.summary.get(k) for k in ("status", "reason", "steps", "train_seconds", "final_terms")},
        "model_path": str(s.model_path),
        "examples": examples,
        "seconds": {k: round(v, 1) for k, v in s.timings.items()},
    }


def run_demo(opts: DemoOptions) -> dict:
    """Run the demo's stages in order (:data:`DEMO_STAGES`); returns the report (also written to ``opts.out``)."""
    t_start = time.time()
    s = DemoState(opts)
    for i, stage in enumerate(DEMO_STAGES, 1):
        if opts.progress:
            print(f"\n== {i}/{len(DEMO_STAGES)} {stage.title.format(**asdict(opts))}", flush=True)
        t = time.time()
        stage.run(s)
        if stage.timing:
            s.timings[stage.timing] = time.time() - t
    s.timings["total"] = time.time() - t_start
    report = _demo_report(s)
    write_demo_report(report, s.out)
    model_path = s.model_path
    print("\n" + demo_markdown(report, short=True), flush=True)
    print(f"Report: {s.out / 'report.md'} (and report.json, report.png)")
    print(f"Unlearned model: {model_path}\n  load it with: AutoModelForCausalLM.from_pretrained({str(model_path)!r}) "
          f"or `unlearnkit eval --model {model_path}`")
    return report


def reset_demo_dir(out: Path) -> None:
    """Remove a previous demo's outputs (only files the demo writes)."""
    for name in ("answers_original.json", "answers_unlearned.json", "unlearn_summary.json", "splits.json",
                 "report.json", "report.md", "report.png", "report.html"):
        (out / name).unlink(missing_ok=True)
    for name in ("data", "unlearn"):
        shutil.rmtree(out / name, ignore_errors=True)


# --------------------------------------------------------------------------- CLI


def cmd_demo(args) -> int:
    opts = DemoOptions(
        model=args.model, prompts=args.prompts, normal=args.normal, out=args.out, steps=args.steps,
        forget_prompts=args.forget_prompts, unseen_prompts=args.unseen_prompts, normal_test=args.normal_test,
        max_new_tokens=args.max_new_tokens, seed=args.seed, device=args.device, progress=not args.no_progress,
        cross_prompts=args.cross_prompts, borderline_retain=not args.no_borderline_retain,
        judge=args.judge,
        overrides=list(args.set or []),
    )
    out = Path(opts.out).expanduser()
    if args.overwrite and out.exists():
        reset_demo_dir(out)
    report = run_demo(opts)
    return 0 if report else 1


def add_commands(sub) -> None:
    d = DemoOptions()
    p = sub.add_parser(
        "demo", help="harmful-answer unlearning end to end on a built-in model and prompt set, with a report",
        description="Answers harmful benchmark prompts with the model, unlearns the answers the default judge rates "
        "harmful (llm_unlearn, LoRA), keeps everyday answers, and reports before/after on unseen prompts. "
        "Offline by default: SmolLM2-135M-Instruct and StrongREJECT. A rerun reuses finished stages.",
    )
    p.add_argument("--model", default=d.model, help=f"model alias, folder or hub id (default {d.model})")
    p.add_argument("--prompts", default=d.prompts,
                   help=f"harmful prompts: {' or '.join(BUILTIN_PROMPTS)} (built in) or a csv/json/jsonl/txt file "
                   f"(default {d.prompts})")
    p.add_argument("--normal", default=None, help="everyday questions, one per line (default: the project's list)")
    p.add_argument("--judge", default=d.judge,
                   help="the judge that picks the forget set and measures the harmful rate (default classifier, the "
                   "project's; e.g. refusal, guard:MODEL, hf_classifier:MODEL)")
    p.add_argument("--out", default=d.out, help=f"run folder (default {d.out})")
    p.add_argument("--steps", type=int, default=d.steps, help=f"unlearning steps (default {d.steps})")
    p.add_argument("--forget-prompts", type=int, default=d.forget_prompts, help=f"default {d.forget_prompts}")
    p.add_argument("--unseen-prompts", type=int, default=d.unseen_prompts, help=f"default {d.unseen_prompts}")
    p.add_argument("--normal-test", type=int, default=d.normal_test, help=f"everyday questions held out (default {d.normal_test})")
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens, help=f"default {d.max_new_tokens}")
    p.add_argument("--cross-prompts", type=int, default=d.cross_prompts,
                   help=f"prompts of the other built-in benchmark (HarmBench when forgetting StrongREJECT), tested only "
                   f"(default {d.cross_prompts}; 0: none)")
    p.add_argument("--no-borderline-retain", action="store_true",
                   help="leave the training borderline prompts out of the retain set")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default=d.device, help="auto, cpu, cuda, ...")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="a setting of the unlearning run, e.g. --set train.lr=3e-4 --set method.retain_weight=10")
    p.add_argument("--overwrite", action="store_true", help="start afresh instead of reusing finished stages")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_demo)
