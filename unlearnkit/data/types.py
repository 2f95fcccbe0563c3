"""Plain data records shared by every recipe, template and loss."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Example:
    """One prompt/response pair.

    ``prompt`` is what the model is conditioned on (masked out of every loss);
    ``response`` is what the losses score. A plain text chunk has an empty prompt;
    a prompt list (for generation) has an empty response.
    """

    prompt: str
    response: str
    meta: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class MCItem:
    """A multiple-choice question (TruthfulQA MC1/MC2 style).

    ``labels[i]`` is 1 when ``choices[i]`` is a true answer. MC1 items have exactly
    one true choice; MC2 items may have several.
    """

    question: str
    choices: tuple[str, ...]
    labels: tuple[int, ...]
