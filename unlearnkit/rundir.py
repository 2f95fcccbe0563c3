"""Run directories: atomic writes, the resolved config and the manifest."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write a file so that readers see the old content or the new, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(path: str | Path, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


PACKAGES = ("unlearnkit", "torch", "transformers", "peft", "accelerate", "safetensors", "pydantic", "datasets", "numpy")


def package_versions() -> dict[str, str | None]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        res = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() or None if res.returncode == 0 else None


def manifest(seed: int, model_spec: str, data: dict[str, dict], extra: dict | None = None) -> dict:
    return {
        "packages": package_versions(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "git_commit": git_commit(),
        "seed": seed,
        "model": model_spec,
        "data": data,
        "command": sys.argv,
        **(extra or {}),
    }


def check_not_inside(out: Path, protected: Path, what: str) -> None:
    """Refuse to write ``out`` inside an input folder (the input model's, say)."""
    try:
        out.resolve().relative_to(protected.resolve())
    except ValueError:
        return
    from unlearnkit.errors import UnlearnkitError

    raise UnlearnkitError(f"refusing to write {out} inside the {what} {protected}; choose another output_dir.")


def save_figure(fig, out_png: str | Path, dpi: int = 110) -> Path:
    """Write a matplotlib figure to ``out_png`` atomically and close it."""
    import matplotlib.pyplot as plt

    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_png.with_name(f".{out_png.stem}.tmp.png")
    fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    tmp.replace(out_png)
    return out_png
