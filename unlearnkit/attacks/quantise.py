"""Weight quantisation as an attack on unlearning: round-to-nearest, group-wise, symmetric.

Zhang et al. (ICLR 2025, "Catastrophic failure of LLM unlearning via
quantization") show that rounding an unlearned model's weights to 4 bits can
bring back most of what it forgot: when the unlearning update of a weight is
smaller than half a quantisation step, the original and the unlearned weight
round to the same grid point. This module rounds a model's weights the way
weight-only LLM quantisers do, and measures how the unlearning delta compares
with the step.

The scheme (per weight matrix ``W`` of shape ``[out, in]``):

- the input dimension of every row is cut into groups of ``group_size``
  consecutive weights (128 by default); the last group of a row holds what is
  left when ``in`` is not a multiple of ``group_size``;
- each group gets one symmetric scale ``s = max|w| / qmax`` with
  ``qmax = 2**(bits - 1) - 1`` (127 for 8 bits, 7 for 4 bits);
- each weight becomes ``s * clamp(round(w / s), -qmax, qmax)`` (``torch.round``:
  halves go to the even code); an all-zero group stays zero.

The model is dequantised back to its dtype, so every evaluation runs on it
unchanged: the attack is what a user gets from a quantised deployment, measured
with the same code as the full-precision model. No maintained library does
4-bit group-wise integer rounding on a CPU here (torchao's int4 weight-only path
needs a CUDA kernel package; bitsandbytes' 4-bit types are NF4/FP4 code books,
not an integer grid), so this is a small, tested implementation.

By default the input embeddings and the output head are left in full precision,
as weight-only quantisers of language models (GPTQ, AWQ and their tools) do;
``include_embeddings=True`` rounds them too (an embedding's groups run along
its hidden dimension).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from unlearnkit.errors import ConfigError


def qmax_of(bits: int) -> int:
    if not isinstance(bits, int) or not 2 <= bits <= 16:
        raise ConfigError(f"quantisation bits must be a whole number from 2 to 16, not {bits!r}.")
    return 2 ** (bits - 1) - 1


def _grouped(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, int]:
    """``w`` ([rows, cols]) as [rows, groups, group_size], zero-padded at the end; and the padding."""
    if group_size < 1:
        raise ConfigError(f"quantisation group_size must be at least 1, not {group_size}.")
    rows, cols = w.shape
    pad = (-cols) % group_size
    if pad:
        w = torch.cat([w, w.new_zeros(rows, pad)], dim=1)
    return w.reshape(rows, -1, group_size), pad


def group_scales(w: torch.Tensor, bits: int, group_size: int = 128) -> torch.Tensor:
    """The scale (one quantisation step) of every group: ``[rows, ceil(cols / group_size)]``.

    Zero padding of the last group does not change its maximum, so a partial
    group's scale is that of its real weights.
    """
    g, _ = _grouped(w.detach().float(), group_size)
    return g.abs().amax(dim=-1) / qmax_of(bits)


def quantise_tensor(w: torch.Tensor, bits: int, group_size: int = 128) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Round a 2-D weight to the group-wise symmetric grid: ``(dequantised, codes, scales)``.

    ``dequantised`` has ``w``'s shape and dtype; ``codes`` are the integers in
    ``[-qmax, qmax]`` (``w``'s shape, int32); ``scales`` one per group.
    """
    if w.dim() != 2:
        raise ConfigError(f"quantise_tensor expects a 2-D weight, got shape {tuple(w.shape)}.")
    qmax = qmax_of(bits)
    rows, cols = w.shape
    g, _ = _grouped(w.detach().float(), group_size)
    scales = g.abs().amax(dim=-1) / qmax
    safe = torch.where(scales > 0, scales, torch.ones_like(scales)).unsqueeze(-1)
    codes = torch.clamp(torch.round(g / safe), -qmax, qmax)
    deq = (codes * safe).reshape(rows, -1)[:, :cols]
    codes = codes.reshape(rows, -1)[:, :cols].to(torch.int32)
    return deq.to(w.dtype), codes, scales


def quantisable_weights(model: nn.Module, include_embeddings: bool = False) -> dict[str, nn.Parameter]:
    """The weights the attack rounds, by parameter name: every ``nn.Linear`` weight, less
    the output head unless ``include_embeddings`` (which adds the embedding tables).

    A weight shared by two modules (tied input and output embeddings) is listed once.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    skip: set[int] = set()
    if not include_embeddings:
        for m in (head, embed):
            if m is not None and getattr(m, "weight", None) is not None:
                skip.add(id(m.weight))
    out: dict[str, nn.Parameter] = {}
    seen: set[int] = set()
    for name, module in model.named_modules():
        kinds = (nn.Linear, nn.Embedding) if include_embeddings else (nn.Linear,)
        w = getattr(module, "weight", None)
        if not isinstance(module, kinds) or w is None or w.dim() != 2:
            continue
        if id(w) in skip or id(w) in seen:
            continue
        seen.add(id(w))
        out[f"{name}.weight" if name else "weight"] = w
    return out


@torch.no_grad()
def quantise_model(model: nn.Module, bits: int, group_size: int = 128, include_embeddings: bool = False) -> dict:
    """Round the model's weights in place (see the module's docstring); a summary of what was done."""
    weights = quantisable_weights(model, include_embeddings)
    if not weights:
        raise ConfigError("the model has no linear layer to quantise.")
    changed = 0
    total = 0
    for w in weights.values():
        deq, _, _ = quantise_tensor(w.data, bits, group_size)
        changed += int((deq != w.data).sum())
        total += w.numel()
        w.data.copy_(deq)
    return {"bits": bits, "group_size": group_size, "include_embeddings": include_embeddings,
            "tensors": len(weights), "weights": total, "weights_moved": changed}


# --------------------------------------------------------------------------- the delta against the step


@dataclass
class _Tally:
    weights: int = 0
    abs_delta: float = 0.0  # sum of |delta|
    step: float = 0.0  # sum of the step each weight sees
    below_half: int = 0  # |delta| < step / 2
    same_after: int = 0  # both models' weights round to the same value

    def add(self, other: "_Tally") -> None:
        for k in ("weights", "abs_delta", "step", "below_half", "same_after"):
            setattr(self, k, getattr(self, k) + getattr(other, k))

    def as_dict(self) -> dict:
        n = max(self.weights, 1)
        return {"weights": self.weights, "mean_abs_delta": self.abs_delta / n, "mean_step": self.step / n,
                "delta_over_step": self.abs_delta / self.step if self.step else None,
                "share_below_half_step": self.below_half / n, "share_same_after_quantisation": self.same_after / n}


def _tally(original: torch.Tensor, unlearned: torch.Tensor, bits: int, group_size: int) -> _Tally:
    o, u = original.detach().float(), unlearned.detach().float()
    rows, cols = o.shape
    scales = group_scales(o, bits, group_size)
    step = scales.repeat_interleave(group_size, dim=1)[:, :cols]
    delta = (u - o).abs()
    qo, _, _ = quantise_tensor(o, bits, group_size)
    qu, _, _ = quantise_tensor(u, bits, group_size)
    return _Tally(weights=o.numel(), abs_delta=float(delta.double().sum()), step=float(step.double().sum()),
                  below_half=int((delta < step / 2).sum()), same_after=int((qo == qu).sum()))


def _layer_of(name: str) -> str:
    """"model.layers.3.mlp.up_proj.weight" -> "layers.3"; names without a block index keep their module path."""
    parts = name.split(".")
    for i, p in enumerate(parts[:-1]):
        if p.isdigit() and i > 0:
            return f"{parts[i - 1]}.{p}"
    return ".".join(parts[:-1]) or name


def _kind_of(name: str) -> str:
    """"model.layers.3.mlp.up_proj.weight" -> "up_proj"."""
    parts = name.split(".")
    return parts[-2] if len(parts) >= 2 else name


@torch.no_grad()
def delta_report(original: nn.Module, unlearned: nn.Module, bits: int, group_size: int = 128,
                 include_embeddings: bool = False) -> dict:
    """How the unlearning delta (unlearned - original) compares with the quantisation step.

    For every weight the attack rounds, with the step of the ORIGINAL weight's
    group: the mean |delta|, the mean step, their ratio, the share of weights
    whose delta is below half a step, and the share whose two versions round to
    the same value (where quantisation undoes the unlearning exactly). Summed
    per block (``layers.N``), per module kind (``q_proj``, ...) and overall.
    """
    ow = quantisable_weights(original, include_embeddings)
    uw = quantisable_weights(unlearned, include_embeddings)
    missing = sorted(set(ow) ^ set(uw))
    if missing:
        raise ConfigError(f"the two models do not have the same weights (first difference: {missing[0]}); "
                          "the reference must be the model the unlearning started from.")
    overall, by_layer, by_kind = _Tally(), {}, {}
    for name, w in ow.items():
        if w.shape != uw[name].shape:
            raise ConfigError(f"{name} has shape {tuple(w.shape)} in the reference and {tuple(uw[name].shape)} in the "
                              "unlearned model.")
        t = _tally(w, uw[name], bits, group_size)
        overall.add(t)
        by_layer.setdefault(_layer_of(name), _Tally()).add(t)
        by_kind.setdefault(_kind_of(name), _Tally()).add(t)
    return {"bits": bits, "group_size": group_size, "overall": overall.as_dict(),
            "by_kind": {k: v.as_dict() for k, v in by_kind.items()},
            "by_layer": {k: v.as_dict() for k, v in by_layer.items()}}
