"""What a command prints: progress bars, ``--quiet``, ``NO_COLOR``, warnings that are not the user's.

- Progress bars (tqdm) name their unit (step, batch, tensor) and show an ETA
  wherever the total is known. :func:`show_progress` is what every bar asks.
- ``unlearnkit --quiet COMMAND`` (or ``UNLEARNKIT_QUIET=1``, which processes
  started by ``accelerate launch`` inherit) turns every progress bar off,
  unlearnkit's and those of transformers, datasets and huggingface_hub, and
  lowers those libraries' logging to errors. The command's result lines,
  warnings and errors are still printed.
- ``NO_COLOR`` (https://no-color.org: any non-empty value) keeps every ANSI
  colour out of the output; without it, colour is used only on a terminal.
- The transformers deprecation of ``is_gradient_checkpointing``, raised inside
  PEFT whenever a model is wrapped, is filtered by its message and category
  alone; every other warning is shown as before.
"""

from __future__ import annotations

import os
import sys
import warnings

QUIET_ENV = "UNLEARNKIT_QUIET"
_TRUE = {"1", "true", "yes", "on"}
_COLOURS = {"red": "31", "yellow": "33", "green": "32", "bold": "1"}


def quiet() -> bool:
    return os.environ.get(QUIET_ENV, "").strip().lower() in _TRUE


def set_quiet(flag: bool = True) -> None:
    """Switch quiet mode on (or off) for this process and the processes it starts."""
    if not flag:
        os.environ.pop(QUIET_ENV, None)
        return
    os.environ[QUIET_ENV] = "1"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    try:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except ImportError:
        pass
    try:
        import datasets

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
    except ImportError:
        pass


def show_progress(requested: bool = True) -> bool:
    """Whether a progress bar is drawn: asked for, and not in quiet mode."""
    return bool(requested) and not quiet()


def colour_enabled(stream=None) -> bool:
    """Colour only on a terminal, never with ``NO_COLOR`` set (to anything) or ``TERM=dumb``."""
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("TERM") == "dumb":
        return False
    stream = sys.stderr if stream is None else stream
    return bool(getattr(stream, "isatty", lambda: False)())


def style(text: str, colour: str, stream=None) -> str:
    """``text`` in ``colour`` where colour is allowed on ``stream``, else unchanged."""
    if colour not in _COLOURS or not colour_enabled(stream):
        return text
    return f"\033[{_COLOURS[colour]}m{text}\033[0m"


def install_warning_filters() -> None:
    """Hide the warnings that are about our dependencies' internals, not the user's code."""
    # PEFT reads `model.is_gradient_checkpointing` on every wrap; transformers 5 deprecated that
    # property in favour of is_activation_checkpointing. Nothing the user can change.
    warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
