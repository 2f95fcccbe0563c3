"""What a run writes as it goes and at its end: the log, the loss curves, the held-out changes."""

from __future__ import annotations

import json
from pathlib import Path



def append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")


def heldout_change(before: dict | None, after: dict | None, seed: int = 0) -> dict | None:
    """Relative change of each held-out set's answer NLL and perplexity, with 95% intervals.

    The interval is a paired bootstrap over the set's examples (token-weighted,
    as the mean NLL is), seeded; a change whose interval includes 0 is marked
    "no measurable change".
    """
    from unlearnkit.evaluation.stats import relative_change

    if not before or not after:
        return None
    out = {}
    for name, b in before.items():
        if name in after and b["mean_nll"]:
            a = after[name]
            row = {"nll_change": (a["mean_nll"] - b["mean_nll"]) / b["mean_nll"],
                   "perplexity_change": (a["perplexity"] - b["perplexity"]) / b["perplexity"]}
            per_b, per_a = b.get("per_example_nll"), a.get("per_example_nll")
            if per_b and per_a and len(per_b) == len(per_a):
                weights = b.get("per_example_tokens")
                nll = relative_change(per_b, per_a, weights, seed=seed)
                ppl = relative_change(per_b, per_a, weights, exp=True, seed=seed)
                row.update({"n": nll["n"], "nll_change_ci95": nll["ci95"], "nll_verdict": nll["verdict"],
                            "perplexity_change_ci95": ppl["ci95"], "perplexity_verdict": ppl["verdict"]})
            out[name] = row
    return out
