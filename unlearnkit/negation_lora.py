"""Negation in memory: a PEFT LoRA model's adapter subtracted from its base, or a trained module from the original."""

from __future__ import annotations

from typing import Any, Mapping

import torch

from unlearnkit.negation_base import NegationError, _check_same_names, _check_scale, _negate_tensor, _shape_message

def negate_lora_(model: Any, scale: float = 1.0) -> Any:
    """Negate a LoRA adapter into its base weights in place and drop the adapter.

    For a PEFT ``PeftModel`` whose LoRA adapter was trained on top of the
    original weights, the task vector is exactly what merging would add to each
    wrapped layer, ``delta = B @ A * scaling`` (transposed for ``fan_in_fan_out``
    layers such as GPT-2's Conv1D), as computed by the layer's own
    ``get_delta_weight``. This subtracts ``scale * delta`` from each base layer
    weight in place, one layer at a time, so no second full model is built; then
    it returns the plain base model with all LoRA modules removed via
    ``unload()`` (not merged: merging would add the adapter back).

    All active adapters are negated, matching what ``merge_and_unload`` would
    merge. As with merging, a LoRA on a weight tied to another module (lm_head
    tied to the input embeddings) changes both, since they share one tensor. LoRA dropout only acts on activations during training and has no
    effect on the delta. ``modules_to_save`` copies are negated as full task
    vectors (``orig - scale * (copy - orig)``). Other PEFT types and LoRA
    variants whose delta is not ``B @ A`` (DoRA etc.) are refused.
    """
    scale = _check_scale(scale)
    try:
        from peft import PeftModel
        from peft.tuners.lora import LoraLayer
        from peft.tuners.lora.layer import Embedding as LoraEmbedding
        from peft.tuners.lora.layer import Linear as LoraLinear
        from peft.tuners.lora.layer import _ConvNd as LoraConv
        from peft.utils import ModulesToSaveWrapper, PeftType
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError as exc:  # pragma: no cover - peft is a dependency
        raise NegationError(f"LoRA negation needs the peft package: {exc}.") from exc

    if not isinstance(model, PeftModel):
        raise NegationError(
            f"negate_lora_ expects a peft PeftModel with a LoRA adapter, got {type(model).__name__}."
        )
    adapters = list(model.active_adapters)
    for adapter in adapters:
        peft_type = model.peft_config[adapter].peft_type
        if peft_type != PeftType.LORA:
            raise NegationError(
                f"Adapter {adapter!r} is a {getattr(peft_type, 'value', peft_type)} adapter; "
                "only LoRA adapters can be negated in place."
            )

    # The supported layers' delta is B @ A * scaling on a plain weight tensor.
    supported = (LoraLinear, LoraEmbedding, LoraConv)
    lora_layers = []
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            if not isinstance(module, supported):
                raise NegationError(
                    f"LoRA layer {name} ({type(module).__name__}) is not supported for negation; "
                    "only Linear, Conv1D, Conv and Embedding LoRA layers on unquantised weights are."
                )
            if module.merged:
                # Its base weight already contains the delta, so it is not theta_o.
                raise NegationError(f"LoRA layer {name} is merged; unmerge it before negating.")
            for adapter in adapters:
                if adapter in getattr(module, "lora_variant", {}):
                    raise NegationError(
                        f"LoRA layer {name} uses a LoRA variant (e.g. DoRA) for adapter {adapter!r}, "
                        "whose update is not B @ A; negating it in place is not supported."
                    )
            lora_layers.append((name, module))
        elif isinstance(module, BaseTunerLayer) and not isinstance(module, ModulesToSaveWrapper):
            raise NegationError(
                f"Module {name} ({type(module).__name__}) is not a LoRA layer; only LoRA adapters can be negated."
            )

    with torch.no_grad():
        for name, module in lora_layers:
            base_layer = module.get_base_layer()
            for adapter in adapters:
                has_adapter = adapter in module.lora_A or adapter in module.lora_embedding_A
                if not has_adapter:
                    continue
                delta = module.get_delta_weight(adapter)
                _subtract_(base_layer.weight, delta, scale)
                if getattr(module, "lora_bias", {}).get(adapter, False):
                    # lora_bias trains a bias on B; merging adds it to the base bias.
                    if getattr(base_layer, "bias", None) is None:
                        raise NegationError(f"LoRA layer {name} trains a bias but its base layer has none.")
                    bias_delta = module.lora_B[adapter].bias * module.scaling[adapter]
                    _subtract_(base_layer.bias, bias_delta, scale)

        for name, module in model.named_modules():
            if isinstance(module, ModulesToSaveWrapper):
                _negate_modules_to_save_(module, adapters, scale)

    # unload() swaps every LoRA wrapper for its (now negated) base layer without
    # merging; it returns the underlying transformers model.
    return model.unload()


def _subtract_(param: torch.Tensor, delta: torch.Tensor, scale: float) -> None:
    """param <- param - scale * delta, computed in >= float32, written in place."""
    compute = torch.promote_types(param.dtype, torch.float32)
    new = param.data.to(compute) - scale * delta.to(device=param.device, dtype=compute)
    param.data.copy_(new.to(param.dtype))


def _negate_modules_to_save_(wrapper: Any, adapters: list[str], scale: float) -> None:
    """Negate a fully trained module copy (``modules_to_save``) against its original.

    ``unload()`` puts the active adapter's copy back into the model, so the
    result is written into the copy. The original is left alone: it may be tied
    to another module (e.g. lm_head to the input embeddings), which must not
    change.
    """
    active = [a for a in adapters if a in wrapper.modules_to_save]
    if not active:
        return
    if len(active) > 1:
        raise NegationError("Several active adapters train the same modules_to_save module; negate them one at a time.")
    original = dict(wrapper.original_module.named_parameters())
    trained = dict(wrapper.modules_to_save[active[0]].named_parameters())
    for pname, orig in original.items():
        if pname not in trained:
            continue
        copy = trained[pname]
        copy.data.copy_(_negate_tensor(orig.data, copy.data, scale))


def negate_module_(tuned: torch.nn.Module, original: torch.nn.Module | Mapping[str, torch.Tensor],
                   scale: float = 1.0) -> torch.nn.Module:
    """In place on ``tuned``: every float tensor becomes ``original - scale * (tuned - original)``.

    For the full-parameter path of a training run, where the original is the
    frozen reference already in memory (or, when that reference is kept in a
    lower precision than the trained weights, the state dict of the original
    weights in their own dtype): one tensor at a time, no third copy. The
    arithmetic runs in at least float32 and the result keeps the TRAINED tensor's
    dtype: with float32 sources, scale 0 gives the original bit for bit, and a
    small task vector (norm weights) is not lost to bf16 rounding.
    """
    scale = _check_scale(scale)
    orig = dict(original) if isinstance(original, Mapping) else dict(original.state_dict())
    live = tuned.state_dict()
    if set(orig) != set(live):
        _check_same_names(set(orig), set(live), "original model", "tuned model")
    done: set[int] = set()
    with torch.no_grad():
        for name, t in live.items():
            # Tied weights (embeddings and LM head) share one storage: negate it once.
            if t.data_ptr() in done:
                continue
            done.add(t.data_ptr())
            b = orig[name].to(t.device)
            if tuple(b.shape) != tuple(t.shape):
                raise NegationError(_shape_message(name, tuple(b.shape), tuple(t.shape)))
            if t.is_floating_point():
                t.copy_(_negate_tensor(b, t, scale, out_dtype=t.dtype))
    return tuned
