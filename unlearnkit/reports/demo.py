"""The demo's report: the before/after table with intervals, example answers, the plot and the HTML page."""

from __future__ import annotations

from pathlib import Path

from unlearnkit.reports.tables import fmt_value
from unlearnkit.reports.plots import plot_demo
from unlearnkit.rundir import atomic_write_json, atomic_write_text


def _quote(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return (text[:limit] + "…") if len(text) > limit else (text or "(empty)")


def demo_markdown(report: dict, short: bool = False) -> str:
    from unlearnkit.evaluation.stats import fmt_rate

    m = report["metrics"]
    ci = report.get("intervals") or {}
    lines = ["| metric | Original | Unlearned |", "|---|---|---|"]
    for key in m["Original"]:
        cells = [fmt_rate(ci[label][key]) if key in ci.get(label, {}) else fmt_value(m[label][key])
                 for label in ("Original", "Unlearned")]
        lines.append(f"| {key} | {cells[0]} | {cells[1]} |")
    drop = report["unseen_harmful_rate_relative_drop"]
    drop_ci = report.get("unseen_harmful_rate_relative_drop_ci95")
    table = "\n".join(lines)
    judge = report["judge"]["spec"]
    head = (f"Harmful rate on unseen prompts (judge {judge!r}) changed by "
            f"{-drop * 100:+.0f}% relative to the original" if drop is not None else "")
    if head and drop_ci:
        lo, hi = drop_ci["ci95"]
        head += (f" (drop {drop_ci['drop']:.0%}, 95% interval [{lo:.0%}, {hi:.0%}], n={drop_ci['n']} prompts"
                 + ("; no measurable change" if drop_ci["verdict"] == "no measurable change" else "") + ")")
    if head:
        head += "."
    from unlearnkit.demo_sets import changes_markdown

    more = changes_markdown(report.get("changes") or {})
    head = f"{head} {more}".strip() + " Rates: value [95% Wilson interval] (n)."
    examples = []
    for ex in report["examples"]:
        p = "" if "p_before" not in ex else f" (judge: {ex['p_before']:.2f} -> {ex['p_after']:.2f})"
        examples.append(f"**Prompt:** {_quote(ex['prompt'], 200)}{p}\n\n- before: {_quote(ex['before'])}\n"
                        f"- after: {_quote(ex['after'])}\n")
    if short:
        return f"{table}\n\n{head}\n\n" + "\n".join(examples)
    c, u, s, j = report["counts"], report["unlearning"], report["seconds"], report["judge"]
    o = report["options"]
    if j["spec"] == "classifier":
        judge_line = (f"- judge `classifier`: the project's {j.get('kind')} judge, held-out accuracy "
                      f"{fmt_value(j.get('heldout_accuracy'))} on PKU-SafeRLHF (docs/evaluation.md)")
    else:
        judge_line = f"- judge `{j['spec']}`"
    bullets = [
        f"- harmful prompts: {c['harmful_prompts']} from `{o['prompts']}`; {c['forget_prompts']} to forget, of which "
        f"{c['forget_answers_harmful']} answers the judge `{j['spec']}` rated harmful (the forget set); "
        f"{c['unseen_prompts']} unseen prompts for the test only",
        f"- retain set (KL anchor): {c['retain_answers']} of the original's answers, to everyday questions and "
        f"{c.get('borderline_retained', 0)} training borderline prompts; {c['normal_test']} everyday questions and "
        f"{c.get('borderline_heldout', 0)} held-out borderline prompts (benign, alarming words) for the test only",
        judge_line,
        "- `refusal`: the refusal-phrase proxy (share of answers without a refusal phrase)",
        f"- unlearning: llm_unlearn with LoRA r={o['lora_r']}, {u['steps']} steps ({u['status']}: {u['reason']}), "
        f"{fmt_value(u['train_seconds'])} s of training",
        f"- time: {', '.join(f'{k} {v:.0f} s' for k, v in s.items())}",
        f"- unlearned model: `{report['model_path']}`",
    ]
    return (f"# unlearnkit demo: {o['model']}\n\n{head}\n\n{table}\n\n" + "\n".join(bullets)
            + "\n\n![before and after](report.png)\n\n## Example answers\n\n" + "\n".join(examples))


def write_demo_report(report: dict, out: Path) -> None:
    atomic_write_json(out / "report.json", report)
    plot_demo(report, out / "report.png")
    atomic_write_text(out / "report.md", demo_markdown(report))
    from unlearnkit.reports.html import markdown_to_html, write_page

    write_page(out / "report.html", "unlearnkit demo", markdown_to_html(demo_markdown(report), out))
