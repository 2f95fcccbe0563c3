"""Any Hugging Face sequence-classification model as a judge."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from unlearnkit.errors import ModelLoadError, UnlearnkitError
from unlearnkit.judges.base import Judge, _check_pairs, _model_device


class HFClassifierJudge(Judge):
    """Any Hugging Face sequence-classification model as a judge.

    The input is the (prompt, response) text pair, as the tokenizer encodes
    pairs. The harmful probability is the softmax mass of the harmful label(s)
    (a sigmoid when the model has a single output).

    ``harmful_label``: a label index, a label name from the model's
    ``id2label``, or a list of them (their probabilities are summed). Or
    ``label_map``: ``{label (index or name): True if it means harmful}``. With
    neither, a two-label model whose label names do not say which one is
    harmful takes index 1 (the usual "positive = unsafe" convention) — check
    it for your model.
    """

    name = "hf_classifier"

    def __init__(
        self,
        model: str,
        harmful_label: int | str | list[int | str] | None = None,
        label_map: dict[str | int, bool] | None = None,
        batch_size: int = 16,
        max_length: int = 512,
        device: str | None = None,
        trust_remote_code: bool = False,
    ):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if harmful_label is not None and label_map is not None:
            raise UnlearnkitError("give hf_classifier either harmful_label or label_map, not both.")
        if batch_size < 1:
            raise UnlearnkitError(f"hf_classifier batch_size must be >= 1, got {batch_size}.")
        self.model_spec = str(model)
        local = Path(model).expanduser()
        source = str(local) if local.exists() else str(model)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
            self.model = AutoModelForSequenceClassification.from_pretrained(
                source, trust_remote_code=trust_remote_code
            )
        except (OSError, ValueError) as exc:
            reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise ModelLoadError(f"could not load the classifier {model!r}: {reason}") from None
        if self.tokenizer.pad_token_id is None:
            # Decoder-based classifiers (GPT-2 style) ship without a pad token;
            # the model must know it too to find each row's last real token.
            self.tokenizer.pad_token = self.tokenizer.eos_token
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model.to(torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu"))
        self.model.eval()
        self.batch_size = batch_size
        self.max_length = max_length
        self.harmful_ids = self._resolve_labels(harmful_label, label_map)

    def _resolve_labels(self, harmful_label, label_map) -> list[int]:
        config = self.model.config
        n = int(config.num_labels)
        id2label = {int(k): str(v) for k, v in (getattr(config, "id2label", None) or {}).items()}
        by_name = {v.lower(): k for k, v in id2label.items()}

        def index_of(label: int | str) -> int:
            if isinstance(label, bool):
                raise UnlearnkitError(f"hf_classifier: label {label!r} is not a label index or name.")
            if isinstance(label, int) or (isinstance(label, str) and label.strip().isdigit()):
                i = int(label)
                if not 0 <= i < max(n, 1):
                    raise UnlearnkitError(f"hf_classifier: label index {i} is out of range for a model with {n} labels.")
                return i
            key = str(label).lower()
            if key not in by_name:
                raise UnlearnkitError(
                    f"hf_classifier: the model has no label named {label!r}; its labels are "
                    f"{', '.join(f'{k}={v}' for k, v in sorted(id2label.items())) or 'unnamed'}."
                )
            return by_name[key]

        if n == 1:
            # One logit: it is the harmful score by construction.
            return [0]
        if label_map is not None:
            ids = sorted({index_of(k) for k, harmful in label_map.items() if harmful})
        elif harmful_label is not None:
            labels = harmful_label if isinstance(harmful_label, list) else [harmful_label]
            ids = sorted({index_of(x) for x in labels})
        else:
            named = [i for i, v in id2label.items() if re.search(r"unsafe|harm|toxic", v, re.I)]
            if len(named) == 1:
                ids = named
            elif n == 2:
                ids = [1]
            else:
                raise UnlearnkitError(
                    f"hf_classifier: the model has {n} labels ({', '.join(id2label.values())}); "
                    "say which mean harmful with harmful_label or label_map."
                )
        if not ids or len(ids) == n:
            raise UnlearnkitError("hf_classifier: the harmful labels must be some, but not all, of the model's labels.")
        return ids

    @torch.no_grad()
    def harm_probability(self, prompts: list[str], responses: list[str]) -> list[float]:
        _check_pairs(prompts, responses)
        device = _model_device(self.model)
        out: list[float] = []
        for start in range(0, len(prompts), self.batch_size):
            enc = self.tokenizer(
                list(prompts[start : start + self.batch_size]),
                list(responses[start : start + self.batch_size]),
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(device)
            logits = self.model(**enc).logits.float()
            if logits.shape[-1] == 1:
                probs = torch.sigmoid(logits[:, 0])
            else:
                probs = logits.softmax(dim=-1)[:, self.harmful_ids].sum(dim=-1)
            out.extend(float(p) for p in probs.clamp(0.0, 1.0).cpu())
        return out

    def describe(self) -> dict:
        id2label = getattr(self.model.config, "id2label", {}) or {}
        return {
            "name": self.name,
            "model": self.model_spec,
            "harmful_labels": [str(id2label.get(i, i)) for i in self.harmful_ids],
        }
