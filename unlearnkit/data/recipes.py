"""Recipes: turn raw rows (see :mod:`unlearnkit.data.sources`) into examples.

Each recipe accepts both the schema of the offline data files (``UNLEARNKIT_DATA``) and the schema
of the same data set on the Hugging Face Hub, so a config works offline with a
local copy and online with the hub name. Recipes never drop a row silently: a row
missing a required key, or holding null or (for a text that is trained or
evaluated) an empty string, is an error naming the row (counted from 1), the key
and the value.

Every recipe takes a keyword-only ``source`` (a file or hub name) used only to say
where a bad row comes from.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

from pydantic import Field

from unlearnkit.data.registry import RECIPE_REGISTRY, Recipe, RecipeOptions, register_recipe
from unlearnkit.data.rows import _answer_list, _field, _flag, _pick, _row, _text  # noqa: F401 (re-exported)
from unlearnkit.data.sources import row_keys
from unlearnkit.data.tofu_recipes import TOFU_FIELDS, TofuOptions, answers, idk_examples, load_idk_answers, tofu  # noqa: F401
from unlearnkit.data.types import Example, MCItem
from unlearnkit.errors import DataError


def pku_saferlhf(rows: list[dict], subset: str = "unsafe", *, source: str = "the data") -> list[Example]:
    """PKU-SafeRLHF responses as prompt/response examples.

    - File schema: ``{"prompt", "response": [safe, unsafe]}``.
    - Hub schema: ``prompt, response_0, response_1, is_response_0_safe, is_response_1_safe``;
      every response is classified by its own flag (both may be unsafe, or both safe).

    ``subset``: ``"unsafe"`` (the usual forget set), ``"safe"`` or ``"both"``.
    meta: ``{"safe": bool, "pair": row_index}``; ``pair`` lets a hold-out keep the
    answers to one prompt on the same side.
    """
    if subset not in ("unsafe", "safe", "both"):
        raise DataError(f"pku_saferlhf: subset must be 'unsafe', 'safe' or 'both', not {subset!r}.")
    out: list[Example] = []
    for i, row in enumerate(rows):
        prompt = _text(row, "prompt", i, "pku_saferlhf", source, allow_empty=False)
        if "response_0" in row or "is_response_0_safe" in row:
            labelled = [
                (
                    _text(row, f"response_{k}", i, "pku_saferlhf", source, allow_empty=False),
                    _flag(row, f"is_response_{k}_safe", i, "pku_saferlhf", source),
                )
                for k in (0, 1)
            ]
        else:
            pair = _field(row, "response", i, "pku_saferlhf", source)
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise DataError(
                    f"pku_saferlhf: {_row(i, source)} has 'response' = {str(pair)[:60]!r}, "
                    "expected a list [safe_response, unsafe_response]."
                )
            for k, r in enumerate(pair):
                if r is None:
                    raise DataError(f"pku_saferlhf: {_row(i, source)} has 'response'[{k}] = null; "
                                    "give it a value or remove the row.")
                if not isinstance(r, str):
                    raise DataError(f"pku_saferlhf: {_row(i, source)} has a non-text item in 'response' "
                                    f"('response'[{k}] of type {type(r).__name__}).")
                if not r.strip():
                    raise DataError(f"pku_saferlhf: {_row(i, source)} has an empty 'response'[{k}] ({r!r}); an empty "
                                    "answer would be trained as nothing: fill it in or remove the row.")
            labelled = [(pair[0], True), (pair[1], False)]
        for response, safe in labelled:
            if subset == "both" or (subset == "safe") == safe:
                out.append(Example(prompt, response, {"safe": safe, "pair": i}))
    return out


# --------------------------------------------------------------------------- TruthfulQA

# Column spellings: the original CSV, then the hub's "generation" config.
_TQA_QUESTION = ("Question", "question")
_TQA_BEST = ("Best Answer", "best_answer")
_TQA_CORRECT = ("Correct Answers", "correct_answers")
_TQA_INCORRECT = ("Incorrect Answers", "incorrect_answers")


def _tqa_get(row: dict, names: Sequence[str], index: int, recipe: str, source: str) -> Any:
    key = _pick(row, names)
    if key is None:
        raise DataError(
            f"{recipe}: {_row(index, source)} has no {' / '.join(repr(n) for n in names)} "
            f"(keys found: {', '.join(map(str, row)) or 'none'})."
        )
    return _field(row, key, index, recipe, source)


def _nonempty(value: Any, what: str, index: int, recipe: str, source: str) -> str:
    text = str(value)
    if not text.strip():
        raise DataError(f"{recipe}: {_row(index, source)} has an empty {what}; fill it in or remove the row.")
    return text


def truthfulqa(rows: list[dict], answers: str = "best", *, source: str = "the data") -> list[Example]:
    """TruthfulQA questions with true answers, as QA examples.

    Accepts the original CSV (``Question, Best Answer, Correct Answers, ...`` with
    '; '-separated lists) and the hub ``generation`` config (``question,
    best_answer, correct_answers`` as lists). ``answers="best"`` gives one example
    per question; ``"correct"`` one per correct answer.
    meta: ``{"row": index, "category": str}`` (category is "" on hub rows without it).
    """
    if answers not in ("best", "correct"):
        raise DataError(f"truthfulqa: answers must be 'best' or 'correct', not {answers!r}.")
    out: list[Example] = []
    for i, row in enumerate(rows):
        question = _nonempty(_tqa_get(row, _TQA_QUESTION, i, "truthfulqa", source), "question", i, "truthfulqa", source)
        meta = {"row": i, "category": str(row.get("Category", row.get("category", "")) or "")}
        if answers == "best":
            best = _nonempty(_tqa_get(row, _TQA_BEST, i, "truthfulqa", source), "best answer", i, "truthfulqa", source)
            out.append(Example(question, best, dict(meta)))
        else:
            key = _pick(row, _TQA_CORRECT) or _TQA_CORRECT[0]
            for answer in _answer_list(_tqa_get(row, _TQA_CORRECT, i, "truthfulqa", source), key, i, "truthfulqa", source):
                out.append(Example(question, answer, dict(meta)))
    return out


def _close_answer(answer: str) -> str:
    """An answer as TruthfulQA's own scoring writes it: stripped, ending with '.'.

    The official ``format_best`` / ``split_multi_answer`` add the period to every
    CSV answer that does not end with one (even after '?' or '!'); the hub's
    ``multiple_choice`` targets already carry it.
    """
    answer = answer.strip()
    return answer if not answer or answer.endswith(".") else answer + "."


def truthfulqa_mc(rows: list[dict], kind: str = "mc1", *, source: str = "the data") -> list[MCItem]:
    """TruthfulQA multiple-choice items (MC1: one true choice; MC2: several).

    From the hub ``multiple_choice`` config the ``mc1_targets`` / ``mc2_targets``
    (``{"choices": [...], "labels": [...]}``) are used as they are.

    From the CSV or the hub ``generation`` config the items are built as
    TruthfulQA's own MC tasks are:

    - MC1: the best answer (label 1) followed by every incorrect answer (label 0);
    - MC2: every correct answer (label 1) followed by every incorrect answer (label 0).

    The true choice comes first; scorers compare likelihoods, so order does not matter.
    """
    if kind not in ("mc1", "mc2"):
        raise DataError(f"truthfulqa_mc: kind must be 'mc1' or 'mc2', not {kind!r}.")
    out: list[MCItem] = []
    for i, row in enumerate(rows):
        question = str(_tqa_get(row, _TQA_QUESTION, i, "truthfulqa_mc", source))
        if "mc1_targets" in row or "mc2_targets" in row:
            key = f"{kind}_targets"
            choices, labels = _targets(_field(row, key, i, "truthfulqa_mc", source), key, i, source)
        else:
            incorrect_key = _pick(row, _TQA_INCORRECT) or _TQA_INCORRECT[0]
            incorrect = [_close_answer(a) for a in _answer_list(
                _tqa_get(row, _TQA_INCORRECT, i, "truthfulqa_mc", source), incorrect_key, i, "truthfulqa_mc", source
            )]
            if kind == "mc1":
                true = [_close_answer(str(_tqa_get(row, _TQA_BEST, i, "truthfulqa_mc", source)))]
            else:
                correct_key = _pick(row, _TQA_CORRECT) or _TQA_CORRECT[0]
                true = [_close_answer(a) for a in _answer_list(
                    _tqa_get(row, _TQA_CORRECT, i, "truthfulqa_mc", source), correct_key, i, "truthfulqa_mc", source
                )]
            choices = [*true, *incorrect]
            labels = [1] * len(true) + [0] * len(incorrect)
        if not any(labels) or all(labels):
            raise DataError(
                f"truthfulqa_mc: {_row(i, source)} gives {kind} choices with no "
                f"{'true' if not any(labels) else 'false'} answer; a multiple-choice item needs both."
            )
        if kind == "mc1" and sum(labels) != 1:
            raise DataError(f"truthfulqa_mc: {_row(i, source)} has {sum(labels)} true mc1 choices, expected exactly 1.")
        out.append(MCItem(question, tuple(choices), tuple(labels)))
    return out


def _targets(value: Any, key: str, index: int, source: str) -> tuple[list[str], list[int]]:
    if isinstance(value, str):  # a hub export to CSV/JSON lines stores the struct as JSON text
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            pass
    if not isinstance(value, dict) or "choices" not in value or "labels" not in value:
        raise DataError(
            f"truthfulqa_mc: {_row(index, source)} has {key!r} = {str(value)[:60]!r}, "
            "expected {'choices': [...], 'labels': [...]}."
        )
    choices, labels = list(value["choices"]), [int(x) for x in value["labels"]]
    if len(choices) != len(labels) or any(x not in (0, 1) for x in labels):
        raise DataError(
            f"truthfulqa_mc: {_row(index, source)} has {key!r} with {len(choices)} choices and "
            f"labels {labels}; expected one 0/1 label per choice."
        )
    return [str(c) for c in choices], labels


# --------------------------------------------------------------------------- plain text


def text_of_rows(rows: list[dict], *, source: str = "the data") -> str:
    """The ``text`` column of every row, joined with blank lines (C4, BookCorpus, a .txt file)."""
    return "\n\n".join(_text(row, "text", i, "text", source) for i, row in enumerate(rows))


def _token_bounds(text: str, tokenizer) -> tuple[list[int], Callable[[int, int], str]]:
    """Token ids of ``text`` and a function giving the text of tokens ``[a, b)``.

    With a fast tokenizer the text of a token span is cut from the original string
    by character offsets: it is then exactly the book's text (consecutive spans
    join up with nothing lost, and no character split across two byte-level tokens
    turns into a replacement mark). A slow tokenizer falls back to decoding.
    """
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        offsets = enc["offset_mapping"]
    except (NotImplementedError, TypeError, ValueError, KeyError):
        offsets = None
    if offsets is not None:
        ids = list(enc["input_ids"])
        starts = [s for s, _ in offsets]
        end_of_text = offsets[-1][1] if offsets else 0

        def span(a: int, b: int) -> str:
            return text[starts[a] : starts[b] if b < len(ids) else end_of_text]

        return ids, span

    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])

    def decoded(a: int, b: int) -> str:
        return tokenizer.decode(ids[a:b], skip_special_tokens=False, clean_up_tokenization_spaces=False)

    return ids, decoded


def text_chunks(text: str, tokenizer, chunk_tokens: int, stride: int | None = None) -> list[Example]:
    """Cut ``text`` into chunks of ``chunk_tokens`` tokens (prompt "", response = chunk).

    Chunks start every ``stride`` tokens (default: ``chunk_tokens``, no overlap).
    The last, shorter chunk is kept when it has at least half a chunk of tokens;
    whitespace-only chunks are dropped (they would train on nothing).
    meta: ``{"offset": first_token_index, "tokens": chunk_length}`` (the span a
    hold-out keeps apart from trained chunks).
    """
    if chunk_tokens < 1:
        raise DataError(f"text: chunk_tokens must be at least 1, not {chunk_tokens}.")
    step = chunk_tokens if stride is None else stride
    if step < 1:
        raise DataError(f"text: stride must be at least 1, not {step}.")
    ids, span = _token_bounds(text, tokenizer)
    n = len(ids)
    out: list[Example] = []
    for start in range(0, n, step):
        end = min(start + chunk_tokens, n)
        if 2 * (end - start) < chunk_tokens:
            break  # a short tail under half a chunk (a full chunk always passes)
        piece = span(start, end)
        if piece.strip():
            out.append(Example("", piece, {"offset": start, "tokens": end - start}))
        if end == n:
            break  # the tail is covered; a later start would only repeat it
    return out


def text_pairs(
    text: str,
    tokenizer,
    prompt_tokens: int,
    continuation_tokens: int,
    stride: int | None = None,
    max_pairs: int | None = None,
) -> list[Example]:
    """Prompt/continuation pairs from a text: K prompt tokens, then the next M tokens.

    Pairs start every ``stride`` tokens (default ``K + M``: the pairs tile the text).
    Only full pairs are made; a pair whose prompt or continuation is blank is
    skipped. meta: ``{"offset": first_token_index, "tokens": K + M, "continuation_ids": the M true token ids}``:
    the continuation's text re-tokenised on its own is not always those ids (a
    word cut at the prompt boundary merges differently), and memorisation is
    measured against the ids the model would have to reproduce.
    """
    if prompt_tokens < 1 or continuation_tokens < 1:
        raise DataError(
            f"text: prompt_tokens and continuation_tokens must be at least 1, "
            f"not {prompt_tokens} and {continuation_tokens}."
        )
    step = prompt_tokens + continuation_tokens if stride is None else stride
    if step < 1:
        raise DataError(f"text: stride must be at least 1, not {step}.")
    ids, span = _token_bounds(text, tokenizer)
    out: list[Example] = []
    for start in range(0, len(ids) - prompt_tokens - continuation_tokens + 1, step):
        if max_pairs is not None and len(out) >= max_pairs:
            break
        mid = start + prompt_tokens
        prompt, continuation = span(start, mid), span(mid, mid + continuation_tokens)
        if prompt.strip() and continuation.strip():
            out.append(Example(prompt, continuation,
                               {"offset": start, "tokens": prompt_tokens + continuation_tokens,
                                "continuation_ids": [int(t) for t in ids[mid : mid + continuation_tokens]]}))
    return out


def text_recipe(
    rows: list[dict],
    tokenizer,
    *,
    mode: str = "chunks",
    chunk_tokens: int = 256,
    prompt_tokens: int = 32,
    continuation_tokens: int = 32,
    stride: int | None = None,
    max_pairs: int | None = None,
    source: str = "the data",
) -> list[Example]:
    """The ``text`` recipe on rows: join the ``text`` column, then chunks or pairs."""
    if tokenizer is None:
        raise DataError(f"text: cutting {source} into tokens needs a tokenizer, and none was given.")
    joined = text_of_rows(rows, source=source)
    if mode == "chunks":
        return text_chunks(joined, tokenizer, chunk_tokens, stride)
    if mode == "pairs":
        return text_pairs(joined, tokenizer, prompt_tokens, continuation_tokens, stride, max_pairs)
    raise DataError(f"text: mode must be 'chunks' or 'pairs', not {mode!r}.")


# --------------------------------------------------------------------------- prompt lists

# Prompt columns of the known prompt sets, most specific first: AdvBench,
# StrongREJECT, HarmBench, BeaverTails, then any question list.
PROMPT_COLUMNS: tuple[str, ...] = ("goal", "forbidden_prompt", "Behavior", "prompt", "question")
_CATEGORY_COLUMNS = ("category", "SemanticCategory")


def prompt_lines(text: str) -> list[str]:
    """The prompts of a ``.txt`` prompt file: one a line; blank lines and ``#`` comment lines skipped."""
    lines = [line.strip() for line in text.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def _is_text_file(rows: list[dict], source: str) -> bool:
    return str(source).lower().endswith(".txt") and len(rows) == 1 and set(rows[0]) == {"text"}


def prompts(rows: list[dict], column: str | None = None, *, source: str = "the data") -> list[Example]:
    """A list of prompts (response ""), for generation and refusal checks.

    A ``.txt`` file holds one prompt a line (blank and ``#`` lines skipped), in
    every command. Otherwise ``column`` defaults to the first of ``goal`` (AdvBench), ``forbidden_prompt``
    (StrongREJECT), ``Behavior`` (HarmBench), ``prompt`` (BeaverTails), ``question``
    found. A HarmBench contextual behaviour (non-empty ``ContextString``) is put
    after its context, as HarmBench itself prompts it. meta: ``{"row": index}``
    plus ``"category"`` when the file has one.
    """
    if _is_text_file(rows, source) and column in (None, "text"):
        return [Example(p, "", {"row": i}) for i, p in enumerate(prompt_lines(rows[0]["text"] or ""))]
    columns = row_keys(rows)
    if column is None:
        column = next((c for c in PROMPT_COLUMNS if c in columns), None)
        if column is None:
            raise DataError(
                f"prompts: {source} has none of the prompt columns {', '.join(PROMPT_COLUMNS)} "
                f"(columns found: {', '.join(map(str, columns)) or 'none'}); name one with column=..."
            )
    elif rows and column not in columns:
        raise DataError(
            f"prompts: {source} has no column {column!r} (columns found: {', '.join(map(str, columns)) or 'none'})."
        )
    out: list[Example] = []
    for i, row in enumerate(rows):
        prompt = _text(row, column, i, "prompts", source, allow_empty=False)
        context = row.get("ContextString") if column == "Behavior" else None
        if isinstance(context, str) and context.strip():
            prompt = f"{context}\n\n---\n\n{prompt}"
        meta: dict[str, Any] = {"row": i}
        category_key = _pick(row, _CATEGORY_COLUMNS)
        if category_key is not None:
            meta["category"] = row[category_key]
        out.append(Example(prompt, "", meta))
    return out


def read_prompt_file(path, column: str | None = None) -> list[str]:
    """The prompts of a file, as every command reads them: ``.txt`` one a line, else the ``prompts`` recipe."""
    from pathlib import Path

    from unlearnkit.data.sources import load_rows

    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"prompt file {path} does not exist.")
    return [ex.prompt.strip() for ex in prompts(load_rows(str(path)), column, source=str(path))]


# --------------------------------------------------------------------------- the user's own files


def generic(
    rows: list[dict], prompt_field: str = "prompt", response_field: str = "response", *, source: str = "the data"
) -> list[Example]:
    """The user's own prompt/response file, with named fields. meta: ``{"row": index}``."""
    columns = row_keys(rows)
    for name in (prompt_field, response_field):
        if rows and name not in columns:
            raise DataError(
                f"generic: {source} has no field {name!r} (columns found: {', '.join(map(str, columns)) or 'none'})."
            )
    return [
        Example(
            _text(row, prompt_field, i, "generic", source, allow_empty=False),
            _text(row, response_field, i, "generic", source, allow_empty=False),
            {"row": i},
        )
        for i, row in enumerate(rows)
    ]


# --------------------------------------------------------------------------- registration


class PkuOptions(RecipeOptions):
    subset: Literal["unsafe", "safe", "both"] = "unsafe"


class TruthfulQAOptions(RecipeOptions):
    answers: Literal["best", "correct"] = "best"


class TruthfulQAMCOptions(RecipeOptions):
    mc: Literal["mc1", "mc2"] = "mc1"


class TextOptions(RecipeOptions):
    mode: Literal["chunks", "pairs"] = "chunks"
    chunk_tokens: int = Field(256, ge=8)
    prompt_tokens: int = Field(32, ge=1)
    continuation_tokens: int = Field(32, ge=1)
    stride: int | None = Field(None, ge=1)


class PromptsOptions(RecipeOptions):
    column: str | None = None


class GenericOptions(RecipeOptions):
    prompt_field: str = "prompt"
    response_field: str = "response"


for _recipe in (
    # Detection priorities: a .txt file is text; then the data sets' own schemas, most specific
    # first; then the user's own prompt lists and pairs; a "text" column last.
    Recipe("pku_saferlhf", lambda rows, o, tok, loc: pku_saferlhf(rows, o.subset, source=loc), PkuOptions,
           ((10, lambda keys, first, loc: {"response_0", "response_1", "is_response_0_safe",
                                           "is_response_1_safe"} <= keys),
            (11, lambda keys, first, loc: "prompt" in keys and isinstance(first.get("response"), (list, tuple))
             and len(first["response"]) == 2))),
    Recipe("truthfulqa", lambda rows, o, tok, loc: truthfulqa(rows, o.answers, source=loc), TruthfulQAOptions,
           ((30, lambda keys, first, loc: {"Question", "Best Answer"} <= keys or {"question", "best_answer"} <= keys),)),
    Recipe("truthfulqa_mc", lambda rows, o, tok, loc: truthfulqa_mc(rows, o.mc, source=loc), TruthfulQAMCOptions,
           ((20, lambda keys, first, loc: bool(keys & {"mc1_targets", "mc2_targets"})),)),
    Recipe("text", lambda rows, o, tok, loc: text_recipe(
               rows, tok, mode=o.mode, chunk_tokens=o.chunk_tokens, prompt_tokens=o.prompt_tokens,
               continuation_tokens=o.continuation_tokens, stride=o.stride, source=loc),
           TextOptions, ((0, lambda keys, first, loc: Path(loc).suffix.lower() == ".txt"),
                         (90, lambda keys, first, loc: "text" in keys))),
    Recipe("prompts", lambda rows, o, tok, loc: prompts(rows, o.column, source=loc), PromptsOptions,
           ((50, lambda keys, first, loc: bool(keys & {"goal", "forbidden_prompt", "Behavior"})),
            (60, lambda keys, first, loc: "prompt" in keys and "response" not in keys))),
    Recipe("generic", lambda rows, o, tok, loc: generic(rows, o.prompt_field, o.response_field, source=loc),
           GenericOptions, ((70, lambda keys, first, loc: "prompt" in keys and isinstance(first.get("response"), str)),)),
    Recipe("tofu", lambda rows, o, tok, loc: tofu(rows, o.tofu_field, source=loc), TofuOptions,
           # question and answer, and none of TruthfulQA's answer columns (TruthfulQA is tried first).
           ((40, lambda keys, first, loc: {"question", "answer"} <= keys
             and not keys & {"Best Answer", "best_answer", "Correct Answers", "correct_answers"}),)),
    Recipe("answers", lambda rows, o, tok, loc: answers(loc), reads_own_file=True),
):
    register_recipe(_recipe)

# The recipes a spec may name as "RECIPE:PATH", by name.
RECIPES = RECIPE_REGISTRY
