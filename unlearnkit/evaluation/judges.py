"""Harm judges; they live in :mod:`unlearnkit.judges` (this module re-exports them)."""

from unlearnkit.judges import *  # noqa: F401,F403
from unlearnkit.judges import __all__  # noqa: F401
from unlearnkit.judges import _by_prompt, _check_pairs, _flatten, _model_device, _normalise, _scores  # noqa: F401
