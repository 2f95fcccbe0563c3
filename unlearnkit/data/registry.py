"""The data-recipe registry: each recipe's options model, its loader and how its files are recognised.

A :class:`Recipe` is registered beside its function (``unlearnkit.data.recipes``,
``unlearnkit.data.tofu_recipes``): its name (the ``RECIPE:`` of a spec), its
``Options`` model (the source options only this recipe reads, with their
defaults and checks), ``load(rows, options, tokenizer, location)`` and
``detects``: (priority, rule) pairs by which an unnamed file's schema picks the
recipe (lowest priority first, the first rule that holds wins).
:class:`~unlearnkit.data.spec.DataSourceConfig` holds the options of every
registered recipe and refuses, on a source whose spec names a recipe, an
option that recipe's ``Options`` does not declare.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict

# A rule: (column names, first row, location) -> does this recipe read the file?
Rule = Callable[[set, dict, str], bool]


class RecipeOptions(BaseModel):
    """The options one recipe reads (none by default)."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class Recipe:
    name: str
    load: Callable[[list[dict], Any, Any, str], list]  # (rows, options, tokenizer, location) -> items
    Options: type[RecipeOptions] = RecipeOptions
    detects: tuple[tuple[int, Rule], ...] = ()
    reads_own_file: bool = False  # the loader reads the location itself (no rows are loaded for it)

    def options_of(self, source) -> RecipeOptions:
        """This recipe's options, taken from a DataSourceConfig (or any object with those attributes)."""
        return self.Options(**{k: getattr(source, k) for k in self.Options.model_fields})


RECIPE_REGISTRY: dict[str, Recipe] = {}


def register_recipe(recipe: Recipe) -> Recipe:
    taken = {k: name for name, r in RECIPE_REGISTRY.items() if name != recipe.name for k in r.Options.model_fields}
    for key, field in recipe.Options.model_fields.items():
        other = taken.get(key)
        if other is not None and RECIPE_REGISTRY[other].Options.model_fields[key].annotation != field.annotation:
            raise ValueError(f"recipe {recipe.name!r}: option {key!r} is already the {other} recipe's, of another type.")
    RECIPE_REGISTRY[recipe.name] = recipe
    return recipe


def detection_rules() -> list[tuple[int, str, Rule]]:
    """Every registered rule, in the order they are tried."""
    rules = [(prio, name, rule) for name, r in RECIPE_REGISTRY.items() for prio, rule in r.detects]
    return sorted(rules, key=lambda t: t[0])
