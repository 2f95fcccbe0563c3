"""Where the library's default data sets come from.

With ``UNLEARNKIT_DATA`` set to a folder laid out as the offline data of this
project (``harmful_prompts/``, ``truthfulqa/``, ``retain/``, ``books/``,
``tofu/``, ``pku_saferlhf/``), every default data set is read from it. Without
it, the defaults are the same data sets on the Hugging Face Hub (network
needed), and a default with no hub copy is unset: the suite that needs it asks
for it by name. The library itself names no folder of any checkout.
"""

from __future__ import annotations

import os

DATA_ENV = "UNLEARNKIT_DATA"


def data_root() -> str | None:
    root = os.environ.get(DATA_ENV, "").strip()
    return root.rstrip("/\\") or None


def default_spec(recipe: str, relative: str, hub: str | None = None, **hub_options) -> dict | None:
    """The DataSourceConfig fields of a default data set: the local file, else its hub copy, else None."""
    root = data_root()
    if root is not None:
        return {"spec": f"{recipe}:{root}/{relative}"}
    if hub is None:
        return None
    return {"spec": f"{recipe}:{hub}", **hub_options}


def default_path(relative: str) -> str | None:
    """A default local file under ``UNLEARNKIT_DATA`` (None when it is not set)."""
    root = data_root()
    return f"{root}/{relative}" if root is not None else None
