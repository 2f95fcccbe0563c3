"""Answer-list recipes: TOFU's question/answer sets (with their perturbed and paraphrased sides), TOFU's
"I don't know" answers, and the ``answers`` recipe (one answer a line)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Literal, Sequence

from unlearnkit.data.registry import RecipeOptions
from unlearnkit.data.rows import _answer_list, _text
from unlearnkit.data.types import Example
from unlearnkit.errors import DataError


TOFU_FIELDS: tuple[str, ...] = ("answer", "paraphrased_answer", "paraphrased_question", "perturbed_answer")
_TOFU_OPTIONS = ("option1", "option2", "option3", "option4")


def tofu(rows: list[dict], field: str = "answer", *, source: str = "the data") -> list[Example]:
    """TOFU question/answer pairs (Maini et al. 2024, "TOFU: A Task of Fictitious
    Unlearning for LLMs"), from the local files or the hub data set ``locuslab/TOFU``
    (configs ``full``, ``forgetNN``, ``retainNN``, ``holdoutNN``, ``forgetNN_perturbed``,
    ``retain_perturbed``, ``real_authors(_perturbed)``, ``world_facts(_perturbed)``).

    Every row needs ``question`` and ``answer``. ``field`` picks what the examples are:

    - ``"answer"``: (question, answer), one per row (the default);
    - ``"paraphrased_answer"``: (question, paraphrased answer);
    - ``"paraphrased_question"``: (paraphrased question, answer);
    - ``"perturbed_answer"``: (question, one wrong answer), one example per
      perturbed answer, ``meta["perturbed_index"]`` saying which.

    meta: ``{"row": index, "answer": the original answer}`` plus, when the row has
    them, ``paraphrased_answer``, ``paraphrased_question`` and ``perturbed_answer``
    (a list). A ``real_authors`` / ``world_facts`` row without perturbed answers
    but with ``option1..4`` gets ``perturbed_answer`` = the options other than the
    answer, in order: exactly the list the ``*_perturbed`` file holds, so both files
    give the same items. The metrics of :mod:`unlearnkit.evaluation.tofu` read
    these meta fields.
    """
    if field not in TOFU_FIELDS:
        raise DataError(f"tofu: field must be one of {', '.join(TOFU_FIELDS)}, not {field!r}.")
    out: list[Example] = []
    for i, row in enumerate(rows):
        question = _text(row, "question", i, "tofu", source)
        answer = _text(row, "answer", i, "tofu", source)
        meta: dict[str, Any] = {"row": i, "answer": answer}
        for key in ("paraphrased_answer", "paraphrased_question"):
            if row.get(key) is not None:
                meta[key] = _text(row, key, i, "tofu", source)
        if row.get("perturbed_answer") is not None:
            meta["perturbed_answer"] = _answer_list(row["perturbed_answer"], "perturbed_answer", i, "tofu", source)
        elif all(row.get(k) is not None for k in _TOFU_OPTIONS):
            options = [_text(row, k, i, "tofu", source) for k in _TOFU_OPTIONS]
            if answer not in options:
                raise DataError(f"tofu: row {i} of {source} has an answer {answer!r} that is none of its options.")
            meta["perturbed_answer"] = [o for o in options if o != answer]
        if field == "answer":
            out.append(Example(question, answer, meta))
        elif field == "perturbed_answer":
            wrong = meta.get("perturbed_answer")
            if not wrong:
                raise DataError(f"tofu: row {i} of {source} has no 'perturbed_answer' (use a *_perturbed file).")
            out.extend(Example(question, w, {**meta, "perturbed_index": k}) for k, w in enumerate(wrong))
        else:
            if field not in meta:
                raise DataError(f"tofu: row {i} of {source} has no {field!r} (use a *_perturbed file).")
            if field == "paraphrased_answer":
                out.append(Example(question, meta[field], meta))
            else:
                out.append(Example(meta[field], answer, meta))
    return out


def load_idk_answers(path: str) -> list[str]:
    """TOFU's refusal answers (``idontknow.jsonl``: 100 lines such as "I'm not sure.").

    Despite its name the file is plain text, one answer a line (not JSON): this
    reads it as TOFU's and open-unlearning's loaders do (every line, stripped),
    skipping blank lines. The answers are the targets of the "IdK" unlearning
    objective and can serve as a random-answer pool.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataError(f"no such file: {path} (the TOFU refusal answers, idontknow.jsonl).")
    answers = [line.strip() for line in file.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    if not answers:
        raise DataError(f"{path} holds no refusal answer.")
    return answers


_ANSWER_KEYS = ("answer", "response", "text")


def answers(path: str) -> list[Example]:
    """A file of answers, one a line (prompt ""): refusals, "I don't know" answers, a random-answer pool.

    A line that is a JSON string, or a JSON object with an ``answer``,
    ``response`` or ``text`` field, gives that text; any other line is the
    answer as written (TOFU's ``idontknow.jsonl`` is plain text). Blank lines
    are skipped. meta: ``{"row": line_index}``.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataError(f"answers: no such file: {path}.")
    out: list[Example] = []
    for i, line in enumerate(file.read_text(encoding="utf-8-sig").splitlines()):
        text = line.strip()
        if not text:
            continue
        try:
            value = json.loads(text)
        except ValueError:
            value = text
        if isinstance(value, dict):
            key = next((k for k in _ANSWER_KEYS if isinstance(value.get(k), str)), None)
            if key is None:
                raise DataError(f"answers: {path}, line {i + 1}: a JSON object needs one of the fields "
                                f"{', '.join(_ANSWER_KEYS)}.")
            value = value[key]
        out.append(Example("", str(value).strip() if isinstance(value, str) else text, {"row": i}))
    return out


def idk_examples(examples: Sequence[Example], answers: Sequence[str], seed: int = 0) -> list[Example]:
    """Each example's prompt paired with a refusal drawn at random from ``answers``.

    TOFU's IdK objective trains the forget questions towards "I don't know"
    answers, one drawn uniformly per question; here the draw is seeded, so a run
    is reproducible. meta: the example's meta plus ``{"idk": True}``.
    """
    if not answers:
        raise DataError("idk_examples needs at least one refusal answer.")
    rng = random.Random(seed)
    return [Example(e.prompt, rng.choice(list(answers)), {**e.meta, "idk": True}) for e in examples]


# --------------------------------------------------------------------------- registration


class TofuOptions(RecipeOptions):
    # What each example is: "answer" (question, answer), "paraphrased_answer",
    # "paraphrased_question" or "perturbed_answer" (one example per wrong answer).
    tofu_field: Literal["answer", "paraphrased_answer", "paraphrased_question", "perturbed_answer"] = "answer"

