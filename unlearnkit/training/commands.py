"""The `unlearn` command: one run from a config, with its summary printed."""

from __future__ import annotations


def cmd_unlearn(args) -> int:
    from unlearnkit.config import load_config
    from unlearnkit.train import run_unlearning

    cfg = load_config(args.config, args.overrides)
    summary = run_unlearning(cfg, resume=args.resume, overwrite=args.overwrite, stop_at=args.stop_at)
    if summary["status"] == "paused":
        print(summary["reason"])
        return 0
    print(f"\n{summary['status']}: {summary['reason']}")
    change = summary.get("eval_change") or {}
    for name, c in change.items():
        print(f"  {name:<20} answer NLL {c['nll_change']:+.1%}")
    if summary.get("model_path"):
        print(f"Model saved to {summary['model_path']} (load it with transformers' from_pretrained).")
    print(f"Run folder: {cfg.run_dir}")
    return 0 if summary["status"] == "completed" or "max_forget_loss" in summary["reason"] else 3
