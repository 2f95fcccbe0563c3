"""Knowledge negation by task arithmetic (SKU stage 2, and the task-vector baseline).

Given an original model ``theta_o`` and a "harmful" copy ``theta_h`` fine-tuned
from it, the task vector is ``tau = theta_h - theta_o`` and the negated model is::

    theta_new = theta_o - scale * tau = theta_o - scale * (theta_h - theta_o)

Three entry points share that formula:

* :func:`negate_checkpoints` works on two safetensors checkpoints on disk and
  streams tensor by tensor, so peak memory stays near one shard instead of two
  (or three) full models.
* :func:`negate_lora_` works on a PEFT LoRA model in memory: the task vector is
  the adapter's low-rank delta, subtracted layer by layer from the base weights.
* :func:`negate_state_dict` is the small in-memory version for tests and callers
  that already hold both state dicts.

Arithmetic is done in (at least) float32 and cast back to the base dtype, so
bf16/fp16 checkpoints do not lose precision in the intermediate difference.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from unlearnkit.console import show_progress
from unlearnkit.errors import UnlearnkitError

__all__ = [
    "NegationError",
    "negate_checkpoints",
    "negate_lora_",
    "negate_module_",
    "negate_state_dict",
]

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
REPORT_FILE = "negation.json"

# Files with these suffixes hold weights; they are never copied into the output
# folder (the output gets freshly computed safetensors instead, and stale
# pickle/gguf weights next to it would silently shadow or contradict them).
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf")

# Bytes read through one memory-mapped input file before it is closed and
# reopened, which bounds the mapped (resident) part of an input checkpoint.
_REMAP_BYTES = 256 * 1024 * 1024

# A safetensors header is a few KB to a few MB; anything bigger means the file is
# not a safetensors file (or is corrupt), and reading it would waste memory.
_MAX_HEADER_BYTES = 100 * 1024 * 1024


class NegationError(UnlearnkitError):
    """Knowledge negation cannot proceed; the message says why in one sentence."""


# ---------------------------------------------------------------------------
# The formula
# ---------------------------------------------------------------------------


def _check_scale(scale: float) -> float:
    try:
        value = float(scale)
    except (TypeError, ValueError):
        raise NegationError(f"Negation scale must be a number, got {scale!r}.") from None
    if not math.isfinite(value):
        raise NegationError(f"Negation scale must be finite, got {scale!r}.")
    return value


def _negate_tensor(base: torch.Tensor, tuned: torch.Tensor, scale: float,
                   out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Return ``base - scale * (tuned - base)`` in ``out_dtype`` (the base dtype when not given).

    Non-float tensors (integer buffers such as position ids, bool masks) are not
    weights that a task vector makes sense for; they are returned from base as is.
    """
    if not base.is_floating_point():
        return base
    # At least float32, and at least the precision of either input, so that
    # bf16/fp16 differences are not rounded twice; a float64 checkpoint keeps float64.
    compute = torch.promote_types(torch.promote_types(base.dtype, tuned.dtype), torch.float32)
    b = base.to(compute)
    # In-place on one fresh buffer: ((t - b) * -scale) + b is bit-identical to
    # b - scale * (t - b) but needs one temporary instead of three.
    out = tuned.to(compute, copy=True)
    out.sub_(b).mul_(-scale).add_(b)
    return out.to(base.dtype if out_dtype is None else out_dtype).contiguous()


def negate_state_dict(
    base_sd: Mapping[str, torch.Tensor],
    tuned_sd: Mapping[str, torch.Tensor],
    scale: float = 1.0,
) -> dict[str, torch.Tensor]:
    """In-memory negation: ``{k: base[k] - scale * (tuned[k] - base[k])}``.

    Both dicts must hold the same tensor names with the same shapes. Float
    tensors are computed in float32 (or wider) and cast back to the base dtype;
    non-float tensors are copied from base. Inputs are not modified.
    """
    scale = _check_scale(scale)
    _check_same_names(set(base_sd), set(tuned_sd), "base state dict", "tuned state dict")
    out: dict[str, torch.Tensor] = {}
    for name, b in base_sd.items():
        t = tuned_sd[name]
        if tuple(b.shape) != tuple(t.shape):
            raise NegationError(_shape_message(name, tuple(b.shape), tuple(t.shape)))
        result = _negate_tensor(b, t, scale)
        # Never hand back an alias of the caller's base tensor.
        out[name] = result.clone() if result is b else result
    return out


def _check_same_names(base_names: set[str], tuned_names: set[str], base_label: str, tuned_label: str) -> None:
    for missing, have, lack in (
        (sorted(base_names - tuned_names), base_label, tuned_label),
        (sorted(tuned_names - base_names), tuned_label, base_label),
    ):
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise NegationError(f"Tensor {missing[0]!r} is in the {have} but not in the {lack}{more}.")


def _shape_message(name: str, base_shape: tuple, tuned_shape: tuple) -> str:
    return (
        f"Tensor {name!r} has shape {list(base_shape)} in the base checkpoint "
        f"but {list(tuned_shape)} in the tuned checkpoint."
    )


# ---------------------------------------------------------------------------
# Reading checkpoint layouts without loading weights
# ---------------------------------------------------------------------------


@dataclass
class _TensorInfo:
    file: str  # shard file name, relative to the checkpoint folder
    shape: tuple[int, ...]
    dtype: str  # safetensors dtype tag, e.g. "F32"
    nbytes: int


@dataclass
class _Checkpoint:
    folder: Path
    sharded: bool
    files: list[str]  # shard file names in index order
    tensors: dict[str, _TensorInfo]  # in file order, then header order
    index_metadata: dict[str, Any] = field(default_factory=dict)


def _read_header(path: Path) -> dict[str, Any]:
    """Parse a safetensors header (8-byte little-endian length + JSON).

    Only the header is read, so validating and planning a 100 GB checkpoint costs
    a few KB of I/O and memory.
    """
    try:
        with open(path, "rb") as fh:
            raw_len = fh.read(8)
            if len(raw_len) != 8:
                raise NegationError(f"{path} is too short to be a safetensors file.")
            (length,) = struct.unpack("<Q", raw_len)
            if length > _MAX_HEADER_BYTES:
                raise NegationError(f"{path} does not look like a safetensors file (header length {length}).")
            header = json.loads(fh.read(length))
    except NegationError:
        raise
    except (OSError, ValueError) as exc:
        raise NegationError(f"Cannot read safetensors header of {path}: {exc}.") from exc
    if not isinstance(header, dict):
        raise NegationError(f"{path} has a malformed safetensors header.")
    return header


def _open_checkpoint(folder: Path, role: str) -> _Checkpoint:
    if not folder.exists():
        raise NegationError(f"The {role} checkpoint folder {folder} does not exist.")
    if not folder.is_dir():
        raise NegationError(f"The {role} checkpoint {folder} is not a folder.")

    index_path = folder / INDEX_FILE
    single_path = folder / SINGLE_FILE
    index_metadata: dict[str, Any] = {}
    if index_path.is_file():
        try:
            index = json.loads(index_path.read_text())
            weight_map: dict[str, str] = index["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise NegationError(f"{index_path} is not a valid safetensors index (needs a 'weight_map'): {exc}.") from exc
        index_metadata = dict(index.get("metadata") or {})
        # Keep index order but drop duplicates: the map lists one file per tensor.
        files = list(dict.fromkeys(weight_map.values()))
        sharded = True
    elif single_path.is_file():
        weight_map = {}
        files = [SINGLE_FILE]
        sharded = False
    else:
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth"))
        found = f" (found {', '.join(pickles[:3])})" if pickles else ""
        raise NegationError(
            f"The {role} checkpoint {folder} has no safetensors weights ({SINGLE_FILE} or {INDEX_FILE}){found}; "
            "pickle .bin checkpoints are not read, convert them by loading the model and re-saving it with "
            "model.save_pretrained(path, safe_serialization=True) (transformers 5 always writes safetensors)."
        )

    tensors: dict[str, _TensorInfo] = {}
    for fname in files:
        path = folder / fname
        if not path.is_file():
            raise NegationError(f"{index_path} lists shard {fname} but {path} does not exist.")
        header = _read_header(path)
        for name, meta in header.items():
            if name == "__metadata__":
                continue
            if name in tensors:
                raise NegationError(
                    f"Tensor {name!r} is stored twice in the {role} checkpoint ({tensors[name].file} and {fname})."
                )
            try:
                start, end = meta["data_offsets"]
                info = _TensorInfo(fname, tuple(meta["shape"]), str(meta["dtype"]), int(end) - int(start))
            except (KeyError, TypeError, ValueError) as exc:
                raise NegationError(f"{path} has a malformed entry for tensor {name!r}.") from exc
            tensors[name] = info

    if sharded:
        # The index is what loaders trust; it must agree with the shard headers,
        # otherwise a loader would read a different model than the one we negate.
        for name, fname in weight_map.items():
            info = tensors.get(name)
            if info is None or info.file != fname:
                raise NegationError(
                    f"{index_path} says tensor {name!r} is in {fname}, but that shard does not contain it."
                )
        extra = sorted(set(tensors) - set(weight_map))
        if extra:
            raise NegationError(f"Tensor {extra[0]!r} is in {tensors[extra[0]].file} but not listed in {index_path}.")
    if not tensors:
        raise NegationError(f"The {role} checkpoint {folder} contains no tensors.")
    return _Checkpoint(folder, sharded, files, tensors, index_metadata)


# ---------------------------------------------------------------------------
# Output planning and file handling
# ---------------------------------------------------------------------------


def _plan_shards(base: _Checkpoint, shard_size_bytes: int | None) -> list[tuple[str, list[str]]]:
    """Decide which tensors go into which output file, before reading any data.

    Default: mirror the base layout exactly (same file names, same grouping), so
    the output looks like the base to every tool. With ``shard_size_bytes``, pack
    tensors greedily in base order; a tensor larger than the limit gets its own
    shard (tensors are never split).
    """
    if shard_size_bytes is None:
        groups: dict[str, list[str]] = {f: [] for f in base.files}
        for name, info in base.tensors.items():
            groups[info.file].append(name)
        return [(f, names) for f, names in groups.items() if names]

    if int(shard_size_bytes) <= 0:
        raise NegationError(f"shard_size_bytes must be a positive number of bytes, got {shard_size_bytes!r}.")
    packs: list[list[str]] = []
    current: list[str] = []
    size = 0
    for name, info in base.tensors.items():
        if current and size + info.nbytes > shard_size_bytes:
            packs.append(current)
            current, size = [], 0
        current.append(name)
        size += info.nbytes
    if current:
        packs.append(current)
    if len(packs) == 1:
        return [(SINGLE_FILE, packs[0])]
    n = len(packs)
    return [(f"model-{i + 1:05d}-of-{n:05d}.safetensors", names) for i, names in enumerate(packs)]


class _Readers:
    """Read tensors of one checkpoint through at most one open file at a time.

    safe_open memory-maps the file, and every page it touched counts towards the
    process RSS for as long as the mapping lives. So a file is closed as soon as
    its last tensor has been read, when the next tensor lives in another file
    (the two checkpoints' layouts may differ), and after ``_REMAP_BYTES`` have
    been read through it (a single-file checkpoint would otherwise stay mapped,
    and resident, in full). Reopening only costs a header parse.
    """

    def __init__(self, folder: Path, tensors: Mapping[str, _TensorInfo]):
        self.folder = folder
        self.remaining: dict[str, int] = {}
        for info in tensors.values():
            self.remaining[info.file] = self.remaining.get(info.file, 0) + 1
        self.fname: str | None = None
        self.handle: Any = None
        self.bytes_read = 0

    def get(self, name: str, info: _TensorInfo) -> torch.Tensor:
        if self.handle is not None and (self.fname != info.file or self.bytes_read >= _REMAP_BYTES):
            self.close()
        if self.handle is None:
            handle = safe_open(str(self.folder / info.file), framework="pt", device="cpu")
            handle.__enter__()
            self.fname, self.handle, self.bytes_read = info.file, handle, 0
        tensor = self.handle.get_tensor(name)  # a copy, independent of the mapping
        self.bytes_read += info.nbytes
        self.remaining[info.file] -= 1
        if self.remaining[info.file] == 0:
            self.close()
        return tensor

    def close(self) -> None:
        if self.handle is not None:
            handle, self.handle, self.fname = self.handle, None, None
            handle.__exit__(None, None, None)


def _save_shard(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    # A separate function so that tests can inject a mid-run failure here.
    save_file(tensors, str(path), metadata=metadata)


def _is_inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def _check_output(out: Path, inputs: Iterable[tuple[str, Path]], overwrite: bool) -> None:
    """``out`` is no input, lies inside none and holds none; an existing output is replaced
    only when unlearnkit marked it as a negation output and ``overwrite`` is set."""
    from unlearnkit.rundir import MARKER, read_marker

    for role, src in inputs:
        if _is_inside(out, src):
            raise NegationError(
                f"Output folder {out} is the {role} checkpoint {src} or inside it; refusing to write inside an input."
            )
        if _is_inside(src, out):
            # Overwriting `out` would delete the input that lives inside it.
            raise NegationError(f"The {role} checkpoint {src} lies inside the output folder {out}; choose another output.")
    if out.exists():
        if not out.is_dir():
            raise NegationError(f"Output path {out} exists and is not a folder.")
        if any(out.iterdir()):
            marker = read_marker(out)
            if marker is None or marker.get("kind") != "negation":
                raise NegationError(
                    f"Output folder {out} already exists and is not a negation output made by unlearnkit (no {MARKER} "
                    "of kind negation); it is never replaced: choose another output folder."
                )
            if not overwrite:
                raise NegationError(f"Output folder {out} already holds a negation output; pass overwrite=True "
                                    "(--overwrite) to replace it.")


def _temp_dir(out: Path) -> Path:
    """A fresh sibling temporary folder for ``out``; those of killed earlier runs are removed first."""
    from unlearnkit.rundir import remove_leftovers, temp_sibling

    remove_leftovers(out)
    tmp = temp_sibling(out)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def _copy_side_files(src: Path, dst: Path) -> list[str]:
    """Copy config, generation config, tokenizer files etc. from the base folder.

    Only top-level regular files are copied: sub-folders of a checkpoint are
    typically caches or training checkpoints, which do not belong in the output.
    """
    copied = []
    for p in sorted(src.iterdir()):
        if not p.is_file() or p.name.startswith("."):
            continue
        if p.name.endswith(_WEIGHT_SUFFIXES) or p.name in (INDEX_FILE, REPORT_FILE):
            continue
        shutil.copy2(p, dst / p.name)
        copied.append(p.name)
    return copied


def _publish(tmp: Path, out: Path) -> None:
    """Mark the finished temporary folder and move it to ``out`` with a single rename.

    An existing ``out`` (empty, or allowed by ``overwrite``) is first renamed
    aside and removed only after the new folder is in place, so a crash never
    leaves a half-written ``out``.
    """
    from unlearnkit.rundir import swap_in, write_marker

    write_marker(tmp, "negation")
    swap_in(tmp, out)


# ---------------------------------------------------------------------------
# Public: checkpoint negation
# ---------------------------------------------------------------------------


def negate_checkpoints(
    base: str | Path,
    tuned: str | Path,
    out: str | Path,
    scale: float = 1.0,
    progress: bool = True,
    shard_size_bytes: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``base - scale * (tuned - base)`` as a new safetensors checkpoint.

    ``base`` is the original model folder (theta_o), ``tuned`` the folder of a
    copy fine-tuned from it (theta_h). Both must hold safetensors weights, either
    ``model.safetensors`` or shards listed in ``model.safetensors.index.json``;
    their layouts may differ, but they must contain the same tensor names with
    the same shapes. Tied weights stored only once are fine: whatever is stored
    is negated, and the copied config re-ties them at load time.

    The work is streamed: each tensor is read from both checkpoints, negated in
    float32 (or float64 for float64 weights), cast back to the base dtype and
    added to the current output shard, which is written as soon as it is
    complete. Peak memory is therefore about one output shard plus a bounded
    window of each memory-mapped input, never two full models. Non-float tensors are copied from base.

    The output mirrors the base's shard layout unless ``shard_size_bytes`` asks
    for a different split. Non-weight files of the base folder (config,
    generation config, tokenizer files, ...) are copied, and ``negation.json``
    records the inputs and the scale. Everything is built in a sibling folder
    ``.<out>.unlearnkit-tmp-<pid>`` and renamed into place at the end, so a failure leaves
    no partial ``out`` (the temporary folder of a killed run is removed by the next
    run). ``out`` must not be an input, lie inside one or hold one, and an existing
    non-empty ``out`` is replaced only when it is a negation output unlearnkit
    marked (``.unlearnkit.json``) and ``overwrite=True``.

    Returns the output folder path.
    """
    scale = _check_scale(scale)
    base_dir = Path(base).expanduser().resolve()
    tuned_dir = Path(tuned).expanduser().resolve()
    out_dir = Path(out).expanduser().resolve()

    # Validate everything that can be known from headers before writing a byte:
    # a mismatch discovered after hours of streaming would be a waste.
    _check_output(out_dir, (("base", base_dir), ("tuned", tuned_dir)), overwrite)
    base_ckpt = _open_checkpoint(base_dir, "base")
    tuned_ckpt = _open_checkpoint(tuned_dir, "tuned")
    _check_same_names(
        set(base_ckpt.tensors),
        set(tuned_ckpt.tensors),
        f"base checkpoint {base_dir}",
        f"tuned checkpoint {tuned_dir}",
    )
    for name, b_info in base_ckpt.tensors.items():
        t_info = tuned_ckpt.tensors[name]
        if b_info.shape != t_info.shape:
            raise NegationError(_shape_message(name, b_info.shape, t_info.shape))
    plan = _plan_shards(base_ckpt, shard_size_bytes)

    tmp_dir = _temp_dir(out_dir)

    base_readers = _Readers(base_dir, base_ckpt.tensors)
    tuned_readers = _Readers(tuned_dir, tuned_ckpt.tensors)
    n_negated = n_copied = 0
    weight_map: dict[str, str] = {}
    total_size = 0
    bar = tqdm(total=len(base_ckpt.tensors), desc="Negating", unit="tensor", disable=not show_progress(progress))
    try:
        for fname, names in plan:
            shard: dict[str, torch.Tensor] = {}
            for name in names:
                b = base_readers.get(name, base_ckpt.tensors[name])
                t = tuned_readers.get(name, tuned_ckpt.tensors[name])
                result = _negate_tensor(b, t, scale)
                if result is b:
                    n_copied += 1
                else:
                    n_negated += 1
                del b, t  # free the inputs before the next tensor is read
                shard[name] = result
                weight_map[name] = fname
                total_size += result.numel() * result.element_size()
                bar.update(1)
            _save_shard(shard, tmp_dir / fname, {"format": "pt"})
            del shard  # the shard is on disk; do not keep it while building the next

        if len(plan) > 1:
            metadata = dict(base_ckpt.index_metadata) if shard_size_bytes is None else {}
            metadata["total_size"] = total_size
            index = {"metadata": metadata, "weight_map": weight_map}
            (tmp_dir / INDEX_FILE).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")

        copied = _copy_side_files(base_dir, tmp_dir)
        report = {
            "method": "knowledge_negation",
            "formula": "base - scale * (tuned - base)",
            "base": str(base_dir),
            "tuned": str(tuned_dir),
            "scale": scale,
            "tensors": n_negated + n_copied,
            "negated_tensors": n_negated,
            "copied_non_float_tensors": n_copied,
            "shards": len(plan),
            "copied_files": copied,
        }
        (tmp_dir / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
        base_readers.close()
        tuned_readers.close()
        _publish(tmp_dir, out_dir)
    except BaseException:
        # Includes KeyboardInterrupt: never leave a half-written folder behind.
        base_readers.close()
        tuned_readers.close()
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    finally:
        bar.close()
    return out_dir


# ---------------------------------------------------------------------------
# Public: LoRA negation
# ---------------------------------------------------------------------------


def negate_adapter(
    base: str | Path, adapter: str | Path, out: str | Path, scale: float = 1.0, overwrite: bool = False
) -> Path:
    """Write ``base - scale * delta(adapter)`` as a full model folder (see :func:`negate_lora_`).

    The output is checked against both inputs before anything is loaded (never
    inside the base or the adapter, never holding them; an existing output only
    replaced when it is a marked negation output and ``overwrite``), built in a
    temporary sibling and renamed into place, so an interrupted run leaves no
    partial ``out`` and never replaces the adapter.
    """
    scale = _check_scale(scale)
    base_dir = Path(base).expanduser().resolve()
    adapter_dir = Path(adapter).expanduser().resolve()
    out_dir = Path(out).expanduser().resolve()
    if not (adapter_dir / "adapter_config.json").is_file():
        raise NegationError(f"{adapter_dir} is not a LoRA adapter folder (no adapter_config.json).")
    _check_output(out_dir, (("base", base_dir), ("adapter", adapter_dir)), overwrite)
    from peft import PeftModel

    from unlearnkit.models import load_model

    model, tokenizer = load_model(str(base_dir))
    model = PeftModel.from_pretrained(model, str(adapter_dir))
    negated = negate_lora_(model, scale)
    tmp_dir = _temp_dir(out_dir)
    try:
        negated.save_pretrained(tmp_dir, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp_dir)
        report = {"method": "knowledge_negation", "formula": "base - scale * delta(LoRA adapter)",
                  "base": str(base_dir), "tuned": str(adapter_dir), "scale": scale}
        (tmp_dir / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
        _publish(tmp_dir, out_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return out_dir



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
