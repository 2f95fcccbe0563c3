"""Prompt templates.

A template turns an :class:`Example` into two strings: the prompt text the model
is conditioned on, and the response text it is scored on. Training, generation and
evaluation all go through :func:`render_prompt`, so a model is always evaluated
with the template it was trained with.

- ``qa``: the papers' format, ``### Question: {prompt}\\n### Answer: {response}``.
- ``chat``: the tokenizer's own chat template (a single user turn, then the
  assistant's answer).
- ``raw``: the prompt as it is, the response appended directly (text chunks,
  prompt/continuation pairs of a book).
"""

from __future__ import annotations

from typing import Literal

from unlearnkit.errors import DataError

TemplateName = Literal["qa", "chat", "raw"]
TEMPLATES: tuple[str, ...] = ("qa", "chat", "raw")

QA_PROMPT = "### Question: {prompt}\n### Answer:"


def render_prompt(template: str, tokenizer, prompt: str) -> str:
    """The text a model sees before its answer starts."""
    if template == "qa":
        return QA_PROMPT.format(prompt=prompt)
    if template == "chat":
        if not getattr(tokenizer, "chat_template", None):
            raise DataError(
                f"template 'chat' needs a tokenizer with a chat template, and "
                f"{type(tokenizer).__name__} ({getattr(tokenizer, 'name_or_path', '?')}) has none; "
                "use template 'qa' or 'raw'."
            )
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
    if template == "raw":
        return prompt
    raise DataError(f"unknown template {template!r}; choose one of {', '.join(TEMPLATES)}.")


def render_response(template: str, response: str) -> str:
    """The scored text that follows the prompt (end-of-sequence is added as a token later)."""
    if template == "qa":
        # The separating space belongs to the answer, so the prompt ends on ':'
        # both in training and in generation.
        return " " + response if response else response
    if template in ("chat", "raw"):
        return response
    raise DataError(f"unknown template {template!r}; choose one of {', '.join(TEMPLATES)}.")


def prompt_adds_special_tokens(template: str) -> bool:
    """Whether the tokenizer should add its own special tokens (BOS) to the prompt.

    A chat template already writes its special tokens into the text.
    """
    return template != "chat"
