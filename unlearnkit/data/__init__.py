"""Data: sources, recipes, templates and tokenisation."""

from unlearnkit.data.types import Example, MCItem

__all__ = ["Example", "MCItem"]
