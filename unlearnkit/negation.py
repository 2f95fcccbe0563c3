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
import shutil
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from unlearnkit.console import show_progress
from unlearnkit.negation_base import (  # noqa: F401 (the public names of negation, re-exported)
    INDEX_FILE,
    REPORT_FILE,
    SINGLE_FILE,
    _WEIGHT_SUFFIXES,
    NegationError,
    _check_same_names,
    _check_scale,
    _Checkpoint,
    _open_checkpoint,
    _negate_tensor,
    _shape_message,
    _TensorInfo,
)
from unlearnkit.negation_lora import negate_lora_, negate_module_  # noqa: F401

__all__ = [
    "NegationError",
    "negate_checkpoints",
    "negate_lora_",
    "negate_module_",
    "negate_state_dict",
]

# ---------------------------------------------------------------------------
# The formula
# ---------------------------------------------------------------------------


# Bytes read through one memory-mapped input file before it is closed and
# reopened, which bounds the mapped (resident) part of an input checkpoint.
_REMAP_BYTES = 256 * 1024 * 1024


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


# ---------------------------------------------------------------------------
# Reading checkpoint layouts without loading weights
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
