"""RMU: representation misdirection for unlearning (Li et al. 2024, the WMDP paper, arXiv 2403.03218).

At one decoder layer l, the hidden states of the forget answers' tokens are
pushed towards a fixed random direction, those of the retain answers are held
where the original model puts them:

    L_RMU = mean over forget answer tokens of  || h_l(x) - c * u ||^2 / H
          + alpha * mean over retain answer tokens of || h_l(x) - h_l^ref(x) ||^2 / H

with u a random unit vector (seeded, fixed for the run and kept in checkpoints),
c the steering coefficient and H the hidden size. Only the MLPs of layer l and
of the ``trained_layers - 1`` layers before it are trained (``setup``); the
later layers then see misdirected activations on forget-like inputs, which is
what scrambles the model's answers there.

Full-parameter mode: the frozen copy of the original model gives h^ref. With
LoRA, only the adapter weights inside those MLPs train (the base weights stay
frozen, the other adapters are frozen too) and h^ref is the same model with the
adapter disabled.
"""

from __future__ import annotations

import random
import re

import torch
from pydantic import Field

from unlearnkit.data.tokenize import IGNORE_INDEX
from unlearnkit.errors import ConfigError
from unlearnkit.methods.registry import register
from unlearnkit.methods.base import Method, MethodParams

# Parameters of a decoder layer's MLP: Llama / Mistral / Qwen (``layers.N.mlp.``),
# GPT-2 (``h.N.mlp.``), OPT (``layers.N.fc1`` / ``fc2``).
_MLP_PARAM = re.compile(r"(?:^|\.)(?:layers|h)\.(\d+)\.(?:mlp\.|fc1\.|fc2\.)")


def control_vector(hidden_size: int, seed: int, coefficient: float) -> torch.Tensor:
    """c * u: u uniform in [0, 1)^H, normalised to unit length (as in the WMDP reference code), seeded."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(hidden_size, generator=g, dtype=torch.float64)
    return (u / u.norm() * coefficient).to(torch.float32)


def answer_token_mask(batch: dict) -> torch.Tensor:
    """[B, T] True at the answer tokens (the positions whose label is an answer token)."""
    return batch["labels"] != IGNORE_INDEX


def masked_mse(hidden: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, denominator) -> torch.Tensor:
    """Sum over masked tokens of the mean over H of (hidden - target)^2, divided by ``denominator``."""
    per_token = (hidden.float() - target.float()).pow(2).mean(dim=-1)
    d = torch.as_tensor(denominator, dtype=per_token.dtype, device=per_token.device)
    return (per_token * mask).sum() / torch.where(d > 0, d, torch.ones_like(d))


def select_mlp_parameters(model, layers: set[int], lora: bool, modules: list[str] | None = None) -> list[str]:
    """Freeze every parameter outside the MLPs of ``layers`` (and, when given, outside the MLP
    sub-modules named in ``modules``, e.g. ``down_proj``); return the names left trainable."""
    trainable = []
    for name, param in model.named_parameters():
        m = _MLP_PARAM.search(name)
        inside = m is not None and int(m.group(1)) in layers
        if inside and modules:
            inside = any(f".{mod}." in f".{name}." for mod in modules)
        if not inside:
            param.requires_grad_(False)
        elif not lora:
            param.requires_grad_(True)
        if param.requires_grad:
            trainable.append(name)
    return trainable


class RMUParams(MethodParams):
    layer: int = Field(7, ge=0, description="the decoder layer (0-based) whose output is steered")
    trained_layers: int = Field(3, ge=1, description="train the MLPs of `layer` and the layers before it, this many in all")
    steering_coeff: float = Field(20.0, gt=0, description="c: the norm of the target direction")
    alpha: float = Field(100.0, ge=0, description="weight of the retain activation term")
    mlp_modules: list[str] = Field(default_factory=list,
                                   description="train only these MLP sub-modules (e.g. [down_proj]); empty: the whole MLP")
    forget_weight: float = Field(1.0, ge=0)
    seed: int | None = Field(None, description="seed of the random direction (drawn once per run when unset)")


@register
class RMU(Method):
    name = "rmu"
    Params = RMUParams
    needs = frozenset({"forget", "retain"})
    needs_reference = True
    forget_term = "forget_mse"

    def __init__(self, params=None):
        super().__init__(params)
        self.seed = self.params.seed
        self._vector: torch.Tensor | None = None

    def setup(self, model) -> None:
        from unlearnkit.models import is_peft

        p = self.params
        layers = set(range(max(0, p.layer - p.trained_layers + 1), p.layer + 1))
        n_layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
        if n_layers is not None and p.layer >= n_layers:
            raise ConfigError(f"method.layer: {p.layer} does not exist; the model has {n_layers} decoder layers (0-{n_layers - 1}).")
        trainable = select_mlp_parameters(model, layers, lora=is_peft(model), modules=p.mlp_modules)
        if not trainable:
            raise ConfigError(f"method rmu: no MLP parameter of layers {sorted(layers)} is trainable "
                              "(with LoRA, its target_modules must include the MLP projections).")
        if self.seed is None:
            self.seed = random.SystemRandom().randrange(2**31)

    def state_dict(self) -> dict:
        return {"seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        if state.get("seed") is not None:
            self.seed = int(state["seed"])
            self._vector = None

    def vector(self, hidden_size: int, device) -> torch.Tensor:
        if self._vector is None or self._vector.numel() != hidden_size:
            self._vector = control_vector(hidden_size, int(self.seed or 0), self.params.steering_coeff)
        return self._vector.to(device)

    def loss(self, ctx, batches):
        p = self.params
        forget, retain = batches["forget"], batches["retain"]
        h_forget = ctx.hidden(forget, p.layer)
        f_mask = answer_token_mask(forget)
        target = self.vector(h_forget.shape[-1], h_forget.device).expand_as(h_forget)
        forget_mse = masked_mse(h_forget, target, f_mask, ctx.normaliser(forget, f_mask))
        h_retain = ctx.hidden(retain, p.layer)
        r_mask = answer_token_mask(retain)
        ref = ctx.reference_hidden(retain, p.layer).detach()
        retain_mse = masked_mse(h_retain, ref, r_mask, ctx.normaliser(retain, r_mask))
        total = p.forget_weight * forget_mse + p.alpha * retain_mse
        return total, {"forget_mse": forget_mse.item(), "retain_mse": retain_mse.item()}
