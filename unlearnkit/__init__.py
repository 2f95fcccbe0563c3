"""unlearnkit: make a Hugging Face causal LM forget, and prove it."""

__version__ = "0.1.0"
