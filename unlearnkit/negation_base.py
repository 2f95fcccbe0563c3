"""What both ways of negating share: the error, the checks, and a reader of safetensors checkpoints.

The reader opens a checkpoint folder (one ``model.safetensors`` or a sharded
index) and lists its tensors' files, shapes and dtypes from the headers alone,
without loading a tensor.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from unlearnkit.errors import UnlearnkitError

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
REPORT_FILE = "negation.json"

# Files with these suffixes hold weights; they are never copied into the output
# folder (the output gets freshly computed safetensors instead, and stale
# pickle/gguf weights next to it would silently shadow or contradict them).
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf")


# A safetensors header is a few KB to a few MB; anything bigger means the file is
# not a safetensors file (or is corrupt), and reading it would waste memory.
_MAX_HEADER_BYTES = 100 * 1024 * 1024


class NegationError(UnlearnkitError):
    """Knowledge negation cannot proceed; the message says why in one sentence."""


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
