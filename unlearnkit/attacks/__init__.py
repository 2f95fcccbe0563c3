"""Attacks on unlearning, as an evaluation: quantisation, relearning and prompt rewrites (docs/robustness.md)."""

from unlearnkit.attacks.options import AttackOptions
from unlearnkit.attacks.recovery import recovery_ratio

__all__ = ["AttackOptions", "recovery_ratio", "run_attacks"]


def run_attacks(*args, **kwargs):
    from unlearnkit.attacks.run import run_attacks as _run

    return _run(*args, **kwargs)
