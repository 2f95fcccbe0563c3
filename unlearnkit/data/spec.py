"""Data source specs: "path", "RECIPE:PATH" or "RECIPE:hub-name", and their options.

:func:`load_examples` is the one entry point the CLI and the trainers use: parse
the spec, read the rows, pick the recipe (named, or detected from the schema),
run it, shuffle and limit. Holding out an evaluation split is a separate step
(:func:`split_holdout`) so that the same items can be split in different ways.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path
from typing import Sequence, Union

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator

from unlearnkit.data.recipes import RECIPES  # importing the recipes registers them
from unlearnkit.data.audit import dedupe, drop_span_overlaps, group_key
from unlearnkit.data.registry import RECIPE_REGISTRY, detection_rules
from unlearnkit.data.sources import load_rows, row_keys
from unlearnkit.data.types import Example, MCItem
from unlearnkit.errors import DataError

Items = Union[list[Example], list[MCItem]]


class _SourceOptions(BaseModel):
    """What every source has, whatever its recipe."""

    model_config = ConfigDict(extra="forbid")

    spec: str  # "path", "RECIPE:PATH" or "RECIPE:hub-name"
    hub_config: str | None = None
    hub_split: str = "train"
    # Further files (or hub configs of the same hub data set) read with this recipe and
    # these options and appended to the rows before deduplication, shuffling and limit:
    # one training set made of several published splits (TOFU's forget and retain authors).
    also: list[str] = Field(default_factory=list)
    limit: int | None = Field(None, ge=1)  # first N after shuffling with seed (or as-is when shuffle=False)
    shuffle: bool = True
    # Drop exact duplicate responses (normalised text; prompts for prompt lists)
    # before shuffling, limiting and splitting, so no answer is on both sides.
    dedupe: bool = True
    holdout: float | int = 0  # fraction in [0,1) or a count of examples held out for evaluation
    seed: int = 0

    @model_validator(mode="after")
    def _check_recipe_options(self):
        prefix = self.spec.strip().split(":", 1)[0] if ":" in self.spec else None
        recipe = RECIPE_REGISTRY.get(prefix) if prefix else None
        if recipe is None:
            return self  # no recipe named (a path, detected on load): nothing to check against
        owners, own = recipe_option_owners(), set(recipe.Options.model_fields)
        # A value other than the default: a dumped config (every field written out) still loads.
        wrong = sorted(k for k in owners if k not in own and getattr(self, k) != type(self).model_fields[k].default)
        if wrong:
            key = wrong[0]
            raise ValueError(f"{key} is an option of the {owners[key]} recipe; this source "
                             f"({self.spec!r}) is read with the {prefix} recipe, which does not use it. Remove it, "
                             f"or name the recipe that reads it.")
        return self

    @field_validator("holdout")
    @classmethod
    def _check_holdout(cls, value: float | int) -> float | int:
        # An int is a count, a float a fraction; 1.0 as a fraction would leave
        # nothing to train on.
        if isinstance(value, bool):
            raise ValueError("holdout must be a fraction in [0, 1) or a whole count, not a boolean")
        if isinstance(value, float) and not 0 <= value < 1:
            raise ValueError(f"holdout {value} as a fraction must be in [0, 1); give a count as a whole number")
        if isinstance(value, int) and value < 0:
            raise ValueError(f"holdout {value} must not be negative")
        return value


def recipe_option_owners() -> dict[str, str]:
    """Option name -> the (first) registered recipe whose options model declares it."""
    owners: dict[str, str] = {}
    for name, recipe in RECIPE_REGISTRY.items():
        for key in recipe.Options.model_fields:
            owners.setdefault(key, name)
    return owners


# One data source: the options every source has, and those of every registered recipe
# (unlearnkit.data.registry), each with the default and checks of the recipe that declares it.
DataSourceConfig = create_model(
    "DataSourceConfig", __base__=_SourceOptions, __module__=__name__,
    **{key: (field.annotation, field) for recipe in RECIPE_REGISTRY.values()
       for key, field in recipe.Options.model_fields.items()})
DataSourceConfig.__doc__ = ("One data source and the options of its recipe: an option of another recipe than the "
                            "spec names is refused; with no recipe named, detection decides later.")


# A one-letter prefix is a Windows drive ("C:\\data\\x.json"), never a recipe.
_DRIVE = re.compile(r"^[A-Za-z]$")


def parse_spec(spec: str) -> tuple[str | None, str]:
    """Split a spec into (recipe or None, location).

    The part before the first ':' is a recipe only when it is a known recipe
    name, so paths with colons in them stay whole.
    """
    if not spec or not spec.strip():
        raise DataError("the data spec is empty; give a path, RECIPE:PATH or RECIPE:hub-name.")
    spec = spec.strip()
    if ":" not in spec:
        return None, spec
    prefix, rest = spec.split(":", 1)
    if prefix in RECIPES:
        if not rest.strip():
            raise DataError(f"the data spec {spec!r} names recipe {prefix!r} but no path or hub name after the colon.")
        return prefix, rest.strip()
    if Path(spec).expanduser().exists() or _DRIVE.match(prefix):
        return None, spec
    raise DataError(
        f"the data spec {spec!r} starts with {prefix!r}, which is neither a known recipe "
        f"({', '.join(RECIPES)}) nor part of an existing path."
    )


def detect_recipe(rows: list[dict], location: str) -> str:
    """The recipe a file's schema implies (each registered recipe's rules, by priority), or a
    DataError asking for RECIPE:PATH.

    Beyond the listed data sets, a file with text ``prompt`` and ``response``
    fields is the user's own pairs (``generic``), and one with ``question`` and
    ``answer`` but no TruthfulQA column is read as TOFU (``tofu``).
    """
    keys = set(row_keys(rows)) if rows else set()
    first = rows[0] if rows else {}
    for _, name, rule in detection_rules():
        if rule(keys, first, location):
            return name
    if not rows:
        raise DataError(f"{location} has no rows, so its recipe cannot be told from its columns.")
    raise DataError(
        f"cannot tell which recipe reads {location} from its columns "
        f"({', '.join(map(str, row_keys(rows))) or 'none'}); name one as RECIPE:PATH "
        f"with RECIPE one of {', '.join(RECIPES)}."
    )


def _also_rows(cfg: DataSourceConfig, recipe: str, location: str) -> list[dict]:
    """The rows of ``cfg.also``: files when the source is a local file, else hub configs of its hub data set."""
    rows: list[dict] = []
    local = Path(location).expanduser().is_file()
    for entry in cfg.also:
        other_recipe, other = parse_spec(entry)
        if other_recipe not in (None, recipe):
            raise DataError(f"also entry {entry!r} names recipe {other_recipe!r}, but the source {cfg.spec!r} is read "
                            f"with {recipe!r}; every part of one source is read with the same recipe.")
        try:
            if local:
                rows.extend(load_rows(other, hub_split=cfg.hub_split))
            else:
                rows.extend(load_rows(location, hub_config=other, hub_split=cfg.hub_split))
        except DataError as exc:
            raise DataError(f"also entry {entry!r} of {cfg.spec!r}: {exc}") from None
    return rows


def load_examples(cfg: DataSourceConfig, tokenizer=None) -> Items:
    """Examples (or MC items) of one source: recipe, then shuffle and limit (no holdout)."""
    recipe, location = parse_spec(cfg.spec)
    reads_own = recipe is not None and RECIPE_REGISTRY[recipe].reads_own_file
    rows = [] if reads_own else load_rows(location, hub_config=cfg.hub_config, hub_split=cfg.hub_split)
    if recipe is None:
        recipe = detect_recipe(rows, location)
    rows = list(rows) + _also_rows(cfg, recipe, location)
    entry = RECIPE_REGISTRY[recipe]
    items: list = entry.load(rows, entry.options_of(cfg), tokenizer, location)
    if not items:
        raise DataError(f"{location} gave no examples with recipe {recipe!r}; check the file and its options.")
    if cfg.dedupe:
        items, _ = dedupe(items)
    if cfg.shuffle:
        # A private generator: the order depends on the seed only, never on
        # whatever else used the global random state.
        random.Random(cfg.seed).shuffle(items)
    if cfg.limit is not None:
        items = items[: cfg.limit]
    return items


def split_holdout(items: Sequence, holdout: float | int, seed: int) -> tuple[list, list]:
    """(train, held_out): hold out a fraction (float in [0, 1)) or a count (int).

    Split by CONTENT, never by row: examples are grouped by their normalised
    prompt (or question; see :func:`unlearnkit.data.audit.group_key`) and each
    group goes whole to one side, so no held-out prompt is ever trained on (the
    safe and unsafe answers to one PKU prompt, every row repeating that prompt,
    every correct answer to one TruthfulQA question). The held-out part may then
    exceed the requested size by at most one group. Text chunks (no prompt) are
    their own groups; a trained chunk whose token span overlaps a held-out one
    (chunks made with a short stride) is dropped from the training side.
    Deterministic for a seed; both parts keep the input order. Duplicate
    responses are removed by :func:`load_examples` before this runs.
    """
    items = list(items)
    n = len(items)
    if isinstance(holdout, bool) or not isinstance(holdout, (int, float)):
        raise DataError(f"holdout must be a fraction in [0, 1) or a whole count, not {holdout!r}.")
    if isinstance(holdout, float):
        if not 0 <= holdout < 1:
            raise DataError(f"holdout {holdout} as a fraction must be in [0, 1); give a count as a whole number.")
        # At least one item for any positive fraction: asking for a holdout and
        # getting an empty one would silently skip the evaluation.
        target = max(1, round(holdout * n)) if holdout > 0 else 0
    else:
        target = holdout
    if target == 0:
        return items, []
    if target < 0 or target >= n:
        raise DataError(f"holdout {holdout} of {n} examples leaves nothing to train on (or is negative).")

    groups: dict[tuple, list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault(group_key(item, i), []).append(i)
    order = list(groups.values())
    random.Random(seed).shuffle(order)
    held: set[int] = set()
    for members in order:
        if len(held) >= target:
            break
        held.update(members)
    if len(held) >= n:
        raise DataError(f"holdout {holdout} takes every example group of {n} examples, leaving nothing to train on.")
    train = [it for i, it in enumerate(items) if i not in held]
    held_out = [it for i, it in enumerate(items) if i in held]
    train, _ = drop_span_overlaps(train, held_out)
    if not train:
        raise DataError(f"holdout {holdout} leaves nothing to train on once chunks overlapping the held-out ones are removed.")
    return train, held_out


def _canonical(item) -> dict:
    if isinstance(item, Example):
        return {"prompt": item.prompt, "response": item.response}
    if isinstance(item, MCItem):
        return {"question": item.question, "choices": list(item.choices), "labels": list(item.labels)}
    raise DataError(f"cannot hash a {type(item).__name__}; expected Example or MCItem items.")


def content_hash(items: Sequence) -> str:
    """sha256 hex of the items' text, in order (meta excluded): a data set's fingerprint.

    Canonical JSON (sorted keys, no extra whitespace, UTF-8) makes it the same on
    every run and machine.
    """
    payload = json.dumps([_canonical(it) for it in items], sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def describe(items: Sequence) -> dict:
    """What a run manifest records about a data set."""
    return {"count": len(items), "sha256": content_hash(items)}
