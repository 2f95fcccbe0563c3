"""What the evaluation suites share: the model under test, its data, generation and judging.

Each suite (one module each under :mod:`unlearnkit.evaluation.suites`, registered
in :mod:`unlearnkit.evaluation.registry`) receives a :class:`SuiteContext`.
A source with a ``holdout`` is split exactly as training splits it
(:func:`load_set`), and a suite scores the held-out part (:func:`eval_part`)
less anything the run trained on (:meth:`SuiteContext.eval_set`).
"""

from __future__ import annotations

from pathlib import Path

from unlearnkit.data.spec import DataSourceConfig, load_examples, parse_spec, split_holdout
from unlearnkit.errors import DataError
from unlearnkit.evaluation.options import EvalOptions


def recipe_of(src: DataSourceConfig) -> str | None:
    recipe, location = parse_spec(src.spec)
    if recipe is None and Path(location).suffix.lower() == ".txt":
        return "text"
    return recipe


def load_set(option: str, src: DataSourceConfig, tokenizer) -> tuple[list, list]:
    """(trained part, held-out part) of a source, split as training splits it.

    Without a holdout, everything is in the first part and the second is empty.
    """
    try:
        items = load_examples(src, tokenizer)
        if src.holdout:
            return split_holdout(items, src.holdout, src.seed)
    except DataError as exc:
        raise DataError(f"{option}: {exc} (change it with --set {option}.spec=... or turn the set off with --set {option}=null)") from None
    return list(items), []


def eval_part(option: str, src: DataSourceConfig, tokenizer) -> list:
    train, held = load_set(option, src, tokenizer)
    return held if src.holdout else train


def unique_prompts(examples, cap: int | None) -> list[str]:
    # PKU lists a prompt once per answer; a prompt is asked once.
    seen: dict[str, None] = {}
    for ex in examples:
        if ex.prompt.strip():
            seen.setdefault(ex.prompt, None)
    prompts = list(seen)
    return prompts[:cap] if cap is not None else prompts


def capped(items: list, cap: int | None) -> list:
    return items[:cap] if cap is not None else items


class SuiteContext:
    """What every suite shares: the model under test, its tokenizer and the options."""

    def __init__(self, model, tokenizer, options: EvalOptions, template: str, trained=None):
        self.model = model
        self.tokenizer = tokenizer
        self.options = options
        self.template = template
        # What the model was trained on (a TrainedContent), or None: scored as is.
        self.trained = trained

    def eval_set(self, option: str, src: DataSourceConfig) -> tuple[list, int]:
        """The evaluation part of a source (see :func:`eval_part`) without the items the run trained on."""
        return self.untrained(eval_part(option, src, self.tokenizer))

    def untrained(self, items: list) -> tuple[list, int]:
        """(the items the run never trained on, how many were dropped)."""
        if self.trained is None:
            return list(items), 0
        return self.trained.drop(items)

    def generate(self, prompts: list[str], desc: str, model=None, tokenizer=None) -> list[str]:
        from unlearnkit.evaluation.generation import generate

        o = self.options
        return generate(
            model if model is not None else self.model,
            tokenizer if tokenizer is not None else self.tokenizer,
            prompts,
            template=self.template,
            max_new_tokens=o.max_new_tokens,
            batch_size=o.batch_size,
            do_sample=o.do_sample,
            temperature=o.temperature,
            top_p=o.top_p,
            seed=o.seed,
            progress=o.progress,
            desc=desc,
        )


def judge_all(judge, prompts: list[str], responses: list[str], progress: bool, desc: str) -> dict[str, list[float]]:
    """A judge's two verdicts (harmful, refusal) in chunks, so that a progress bar moves on slow judges."""
    from tqdm.auto import tqdm
    from unlearnkit.console import show_progress

    size = 32
    out: dict[str, list[float]] = {"harmful": [], "refusal": []}
    starts = range(0, len(prompts), size)
    for start in tqdm(starts, desc=desc, disable=not show_progress(progress) or len(starts) < 2, unit="chunk"):
        verdicts = judge.verdicts(prompts[start : start + size], responses[start : start + size])
        for key in out:
            out[key].extend(verdicts[key])
    return out
