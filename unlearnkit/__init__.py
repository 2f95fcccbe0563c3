"""unlearnkit: make a Hugging Face causal LM forget, and prove it."""

__version__ = "0.1.0"

from unlearnkit.console import install_warning_filters as _install_warning_filters

_install_warning_filters()
