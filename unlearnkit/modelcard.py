"""Model cards: a ``README.md`` in the hub's model-card format beside every saved model.

The card is built from what the run folder already records: ``config.yaml``
(method, parameters, training settings), ``manifest.json`` (data sets, sizes,
content hashes, package versions, git commit), ``summary.json`` (status, the
held-out answer NLL before and after with its bootstrap interval) and, once
``unlearnkit eval`` has written it into the run folder, ``eval.json`` (harmful
rates, over-refusal, utility, each with its Wilson interval, and the judges).
Its tables are drawn by :mod:`unlearnkit.reports.evaluation`, the code that
writes ``eval.md`` and ``compare.md``.

The YAML metadata follows the hub's model-card fields (``base_model``,
``library_name``, ``license``, ``tags``, ``datasets``, ``pipeline_tag``); the
license is carried over from the base model's own card where it is known.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from unlearnkit.reports.tables import with_ci, flatten_intervals, flatten_metrics, markdown_table
from unlearnkit.rundir import atomic_write_text

CARD = "README.md"
# Folders of a run that hold a saved model, and what each one is.
MODEL_FOLDERS = {"model": "the unlearned model (merged)", "adapter": "the unlearned model's LoRA adapter",
                 "harmful": "the intermediate model trained towards the forget set (SKU stage 1)",
                 "harmful_adapter": "the LoRA adapter trained towards the forget set (SKU stage 1)"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
# The evaluation headline: the figures a reader of a card looks for first.
HEADLINE = (
    r"^harm\.[^.]+\.harmful_rate\.", r"^harm\.[^.]+\.refusal_rate", r"^normal\.(similarity_cosine|similarity_rouge_l|"
    r"fluency_perplexity|empty_rate)$", r"^over_refusal\.", r"^truthfulqa\.mc[12]$", r"^perplexity\.perplexity$",
    r"^memorisation\.(rouge_l|bleu|cosine)$", r"^tofu\.(forget_quality|model_utility)", r"^robustness\.",
)
KNOWN_LIMITS = [
    "Unlearning by gradient ascent or task-vector negation suppresses what was learned; it does not prove the "
    "content is gone from the weights. A few steps of finetuning on related text can bring it back (relearning), "
    "and paraphrased or jailbreak prompts may still elicit it.",
    "Harmful rates come from automatic judges whose accuracy is measured on held-out labelled data and is below "
    "100%; a rate is an estimate with the 95% interval shown, on the prompts named, not a guarantee.",
    "Figures are measured on held-out sets split from the training data by normalised prompt, and on the "
    "evaluation sets named; other prompts, languages and domains were not measured.",
    "Unlearning can lower general quality (fluency, knowledge, refusal of benign requests): read the utility "
    "figures beside the forget figures.",
]


def _read(path: Path, kind: str = "json") -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text()) if kind == "json" else yaml.safe_load(path.read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def _card_metadata(path: Path) -> dict:
    """The YAML block of a model card file (empty when there is none)."""
    if not path.is_file():
        return {}
    text = path.read_text(encoding="utf-8", errors="replace")
    match = re.match(r"^---\s*\n(.*?)\n---\s*\n", text, flags=re.S)
    if not match:
        return {}
    try:
        data = yaml.safe_load(match.group(1))
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def base_model_id(spec: str) -> str | None:
    """The hub id of a base model spec: the alias's hub id, the id itself; None for local files."""
    from unlearnkit.models import ALIASES

    if spec in ALIASES:
        return ALIASES[spec].hub_id
    if Path(spec).expanduser().exists():
        return None
    return spec if _HUB_ID.match(spec) else None


def base_license(spec: str) -> dict:
    """``license`` (and ``license_name``/``license_link``) of the base model, where it is known.

    From the alias table, a local model folder's card, or a hub model's card in
    the local hub cache (nothing is downloaded). Empty when unknown.
    """
    from unlearnkit.models import ALIASES

    if spec in ALIASES and ALIASES[spec].license:
        return {"license": ALIASES[spec].license}
    p = Path(spec).expanduser()
    meta: dict = {}
    if p.is_dir():
        meta = _card_metadata(p / CARD)
    elif not p.exists() and _HUB_ID.match(spec):
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(spec, CARD)
        except Exception:  # a malformed id or cache: the license is simply unknown
            cached = None
        if isinstance(cached, str):
            meta = _card_metadata(Path(cached))
    return {k: meta[k] for k in ("license", "license_name", "license_link") if isinstance(meta.get(k), str)}


def _hub_datasets(cfg: dict) -> list[str]:
    """Hub dataset names among the run's data specs (local files are not hub datasets)."""
    from unlearnkit.data.spec import parse_spec

    data = cfg.get("data") or {}
    specs = [data.get("forget"), data.get("random")]
    retain = data.get("retain")
    specs += retain if isinstance(retain, list) else [retain]
    out = []
    for ds in specs:
        if not isinstance(ds, dict) or not ds.get("spec"):
            continue
        _, location = parse_spec(ds["spec"])
        if _HUB_ID.match(location) and not Path(location).expanduser().exists() and location not in out:
            out.append(location)
    return out


def card_metadata(cfg: dict, folder_name: str) -> dict:
    """The card's YAML metadata for one saved folder of a run."""
    spec = (cfg.get("model") or {}).get("name", "")
    method = (cfg.get("method") or {}).get("name", "unknown")
    adapter = folder_name.endswith("adapter")
    meta: dict = {}
    base = base_model_id(spec)
    if base:
        meta["base_model"] = base
    meta["library_name"] = "peft" if adapter else "transformers"
    meta.update(base_license(spec))
    tags = ["unlearning", "machine-unlearning", "unlearnkit", method.replace("_", "-")]
    if adapter or (cfg.get("model") or {}).get("lora", {}).get("enabled"):
        tags.append("lora")
    meta["tags"] = tags
    datasets = _hub_datasets(cfg)
    if datasets:
        meta["datasets"] = datasets
    meta["pipeline_tag"] = "text-generation"
    return meta


def _data_section(cfg: dict, manifest: dict) -> list[str]:
    data = cfg.get("data") or {}
    lines = ["## What was unlearned\n"]
    forget = data.get("forget") or {}
    if forget.get("spec"):
        lines.append(f"Forget set: `{forget['spec']}`" + (f" (subset {forget['subset']})" if forget.get("subset") else "")
                     + f"; template `{data.get('template')}`, max length {data.get('max_length')} tokens.\n")
    described = manifest.get("data") or {}
    if described:
        lines.append("Every set the run used, with its size and content hash (SHA-256 of the examples, "
                     "so that anyone can check they hold the same data):\n")
        lines.append(markdown_table(["set", "examples", "sha256"],
                                    [[name, d.get("count"), f"`{d.get('sha256', '')}`"] for name, d in described.items()]))
    audit = manifest.get("overlap_audit") or {}
    if "total" in audit:
        lines.append(f"Leak audit of the held-out sets against the trained ones: {audit['total']} shared normalised "
                     f"prompts or responses (allow_overlap: {audit.get('allow_overlap')}).\n")
    return lines


def _method_section(cfg: dict, summary: dict) -> list[str]:
    method = dict(cfg.get("method") or {})
    name = method.pop("name", "?")
    train = cfg.get("train") or {}
    lora = (cfg.get("model") or {}).get("lora") or {}
    mode = (f"LoRA (r={lora.get('r')}, alpha={lora.get('alpha')}, dropout={lora.get('dropout')}, targets "
            f"{lora.get('target_modules') or 'the architecture default'})" if lora.get("enabled") else "full-parameter")
    lines = ["## Method\n", f"`{name}`, {mode}. Parameters:\n"]
    lines.append(markdown_table(["parameter", "value"], [[k, json.dumps(v)] for k, v in method.items()]))
    lines.append(f"Training: {summary.get('steps', '?')} steps of {train.get('max_steps')}, batch {train.get('batch_size')}"
                 f" x {train.get('grad_accum')} accumulation, AdamW lr {train.get('lr')} ({train.get('scheduler')}), "
                 f"seed {cfg.get('seed')}. Stopped: {summary.get('status', '?')}, {summary.get('reason', '?')}.\n")
    return lines


def _change_rows(summary: dict) -> list[list]:
    from unlearnkit.evaluation.stats import fmt_change

    rows = []
    before, after = summary.get("eval_before") or {}, summary.get("eval_after") or {}
    for name, change in (summary.get("eval_change") or {}).items():
        ci = change.get("nll_change_ci95")
        text = (fmt_change({"change": change["nll_change"], "ci95": ci, "verdict": change.get("nll_verdict")})
                if ci else f"{change['nll_change']:+.1%}")
        rows.append([name, (before.get(name) or {}).get("examples"), (before.get(name) or {}).get("mean_nll"),
                     (after.get(name) or {}).get("mean_nll"), text])
    return rows


def headline(result: dict) -> list[list]:
    """``[metric, value [95% interval], n]`` rows of an evaluation's headline figures."""
    results = result.get("results") or {}
    flat, cis = flatten_metrics(results), flatten_intervals(results)
    rows = []
    for name, value in flat.items():
        if not any(re.search(p, name) for p in HEADLINE):
            continue
        parts = name.split(".")
        n = next((flat[".".join(parts[:i] + ["n"])] for i in range(len(parts) - 1, 0, -1)
                  if ".".join(parts[:i] + ["n"]) in flat), None)
        rows.append([name, with_ci(value, cis.get(name)), n])
    return rows


def _eval_section(summary: dict, result: dict) -> list[str]:
    lines = ["## Evaluation\n"]
    rows = _change_rows(summary)
    if rows:
        lines.append("Answer NLL on held-out sets (never trained on) before and after unlearning; the change carries "
                     "a 95% paired bootstrap interval (a rise on forget data is the aim, a small change on retain "
                     "data is what should stay):\n")
        lines.append(markdown_table(["held-out set", "n", "NLL before", "NLL after", "change [95% CI]"], rows))
    if result:
        lines.append(f"`unlearnkit eval` of this model ({result.get('created', '?')}; suites "
                     f"{', '.join(result.get('suites', []))}). Rates: value [95% Wilson interval], n items scored:\n")
        lines.append(markdown_table(["metric", "value [95% CI]", "n"], headline(result)))
        judges = result.get("judges") or {}
        if judges:
            lines.append("Judges: " + "; ".join(
                f"`{label}`" + (f" (held-out accuracy {info['heldout_accuracy']:.3f})"
                                if isinstance(info.get("heldout_accuracy"), (int, float)) else "")
                for label, info in judges.items()) + ".\n")
    elif not rows:
        lines.append("No evaluation was recorded for this run (eval.enabled was false and `unlearnkit eval` has not "
                     "been run on it).\n")
    else:
        lines.append("Harmful rates, over-refusal and utility: run `unlearnkit eval CONFIG` on this run; the card is "
                     "rewritten with them.\n")
    return lines


def _usage(folder_name: str, repo: str) -> list[str]:
    if folder_name.endswith("adapter"):
        code = (f"from peft import AutoPeftModelForCausalLM\nmodel = AutoPeftModelForCausalLM.from_pretrained({repo!r})")
    else:
        code = (f"from transformers import AutoModelForCausalLM, AutoTokenizer\n"
                f"model = AutoModelForCausalLM.from_pretrained({repo!r})\n"
                f"tokenizer = AutoTokenizer.from_pretrained({repo!r})")
    return ["## Use\n", f"```python\n{code}\n```\n"]


def run_markdown(run_dir: str | Path, folder_name: str = "model") -> str:
    """What was unlearned, how, and how well, in Markdown: the card's text, and the run's report."""
    run_dir = Path(run_dir)
    cfg = _read(run_dir / "config.yaml", "yaml")
    manifest, summary = _read(run_dir / "manifest.json"), _read(run_dir / "summary.json")
    meta = card_metadata(cfg, folder_name)
    spec = (cfg.get("model") or {}).get("name", "?")
    method = (cfg.get("method") or {}).get("name", "?")
    packages = manifest.get("packages") or {}
    parts = [f"# {cfg.get('name', run_dir.name)}: `{method}` unlearning of `{spec}`\n",
             f"Made by unlearnkit {packages.get('unlearnkit') or '?'} (git commit "
             f"`{manifest.get('git_commit') or 'unknown'}`) from `{spec}` ({meta.get('base_model') or 'a local model'}"
             + (f", license {meta['license']}" if meta.get("license") else "") + ").\n"]
    parts += _data_section(cfg, manifest)
    parts += _method_section(cfg, summary)
    parts += _eval_section(summary, _read(run_dir / "eval.json"))
    parts += ["## Known limits\n", *[f"- {line}" for line in KNOWN_LIMITS], ""]
    return "\n".join(parts)


def card_text(run_dir: str | Path, folder_name: str) -> str:
    """The whole card (metadata block and text) for ``run_dir/folder_name``."""
    run_dir = Path(run_dir)
    cfg = _read(run_dir / "config.yaml", "yaml")
    manifest = _read(run_dir / "manifest.json")
    meta = card_metadata(cfg, folder_name)
    repo = (cfg.get("train") or {}).get("hub_repo_id") or f"path/to/{folder_name}"
    versions = ", ".join(f"{k} {v}" for k, v in (manifest.get("packages") or {}).items() if v)
    parts = [run_markdown(run_dir, folder_name),
             f"This folder holds {MODEL_FOLDERS.get(folder_name, 'a saved model')}.\n", *_usage(folder_name, repo),
             f"## Provenance\n\nPackages: {versions or 'unknown'}; Python {manifest.get('python', '?')}. The run "
             "folder's config.yaml, manifest.json and summary.json hold every setting and figure above.\n"]
    header = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).strip()
    return f"---\n{header}\n---\n\n" + "\n".join(parts)


def write_run_cards(run_dir: str | Path) -> list[Path]:
    """Write (or rewrite) the card of every saved model folder of a run; returns the cards written."""
    run_dir = Path(run_dir)
    written = []
    for name in MODEL_FOLDERS:
        folder = run_dir / name
        if folder.is_dir():
            written.append(atomic_write_text(folder / CARD, card_text(run_dir, name)))
    return written
