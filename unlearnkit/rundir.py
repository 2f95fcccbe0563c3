"""Output folders: atomic writes, ownership markers, build-then-swap, the manifest.

Every folder unlearnkit writes as a whole (a run folder, an evaluation folder, a
negation output) carries a marker file, :data:`MARKER`, saying which kind of
output it is. ``--overwrite`` replaces only a folder with the right marker, and
never one that holds an input of the command. New outputs are built in a
temporary sibling folder (``.NAME.unlearnkit-tmp-PID``) and renamed into place
only when complete, so an interrupted or failed command never leaves a
half-written folder that looks real, and never destroys the old output first.
Temporary folders of killed processes are found and removed (and named) by the
next command that writes the same output.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

MARKER = ".unlearnkit.json"
MARKER_FORMAT = "unlearnkit-output/1"
TMP_TAG = ".unlearnkit-tmp-"
OLD_TAG = ".unlearnkit-old-"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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
        # mkstemp creates the file 0600; an output file gets the usual mode (0644 under umask 022).
        os.chmod(tmp, 0o666 & ~_umask())
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


# --------------------------------------------------------------------------- inputs vs outputs


def _inside(child: Path, parent: Path) -> bool:
    child, parent = child.resolve(), parent.resolve()
    return child == parent or parent in child.parents


def check_outputs(outputs: Iterable[tuple[str, Path]], inputs: Iterable[tuple[str, Path]], hint: str = "") -> None:
    """Refuse any output that is an input, lies inside one, or holds one.

    ``outputs`` and ``inputs`` are ``(what, path)`` pairs; missing input paths
    (hub ids, say) are skipped. Called before any work starts, so that no
    command ever writes into, or replaces, a folder it reads from.
    """
    from unlearnkit.errors import UnlearnkitError

    inputs = [(what, Path(p).expanduser()) for what, p in inputs if p is not None]
    inputs = [(what, p) for what, p in inputs if p.exists()]
    for out_what, out in outputs:
        out = Path(out).expanduser()
        for in_what, src in inputs:
            if _inside(out, src) if src.is_dir() else out.resolve() == src.resolve():
                raise UnlearnkitError(f"refusing to write the {out_what} {out} inside the {in_what} {src}"
                                      f"{'; ' + hint if hint else '.'}")
            if _inside(src, out):
                raise UnlearnkitError(f"the {in_what} {src} lies inside the {out_what} {out}, which this command "
                                      f"writes (and would replace); {hint or 'choose another output.'}")


# --------------------------------------------------------------------------- markers


def write_marker(folder: str | Path, kind: str, **extra: Any) -> Path:
    """Mark ``folder`` as an unlearnkit output of ``kind`` (run, eval, negation)."""
    from datetime import datetime, timezone

    from unlearnkit import __version__

    return atomic_write_json(Path(folder) / MARKER, {
        "format": MARKER_FORMAT, "kind": kind, "unlearnkit": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), **extra,
    })


def read_marker(folder: str | Path) -> dict | None:
    p = Path(folder) / MARKER
    if not p.is_file():
        return None
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == MARKER_FORMAT else None


def check_replaceable(target: str | Path, kind: str, overwrite: bool, what: str, flag: str = "--overwrite") -> bool:
    """Whether writing ``target`` replaces something; an error where it may not.

    A missing or empty folder is free. Anything else is replaced only when it
    carries unlearnkit's marker of the same ``kind`` and ``overwrite`` is set.
    Returns True when an existing output will be replaced.
    """
    from unlearnkit.errors import UnlearnkitError

    target = Path(target).expanduser()
    if not target.exists() and not target.is_symlink():
        return False
    if not target.is_dir():
        raise UnlearnkitError(f"the {what} {target} exists and is a file, not a folder; choose another path.")
    if not any(target.iterdir()):
        return False
    marker = read_marker(target)
    if marker is None:
        raise UnlearnkitError(
            f"the {what} {target} already exists and was not made by unlearnkit (it has no {MARKER}); "
            "unlearnkit never replaces a folder it did not create: move it away or choose another path."
        )
    if marker.get("kind") != kind:
        raise UnlearnkitError(f"the {what} {target} holds an unlearnkit {marker.get('kind')} output, not a {kind}; "
                              "choose another path.")
    if not overwrite:
        raise UnlearnkitError(f"the {what} {target} already holds an unlearnkit {kind} output; pass {flag} to replace it.")
    return True


# --------------------------------------------------------------------------- build, then swap in


def owner_pid() -> int:
    """The process that owns a temporary folder: this one, or the launcher of a multi-process run.

    All ranks of an ``accelerate launch`` run are children of one launcher, so
    they agree on the folder's name.
    """
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        world = 1
    return os.getppid() if world > 1 else os.getpid()


def temp_sibling(target: str | Path, pid: int | None = None) -> Path:
    target = Path(target)
    return target.parent / f".{target.name}{TMP_TAG}{owner_pid() if pid is None else pid}"


def _alive(pid: int) -> bool:
    if pid == os.getpid() or pid == owner_pid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def leftovers(target: str | Path, include_live: bool = False) -> list[Path]:
    """Temporary siblings of ``target`` left by processes that no longer run."""
    target = Path(target)
    if not target.parent.is_dir():
        return []
    out = []
    for tag in (TMP_TAG, OLD_TAG):
        prefix = f".{target.name}{tag}"
        for p in target.parent.iterdir():
            if not p.name.startswith(prefix):
                continue
            pid = p.name[len(prefix):]
            if not pid.isdigit():
                continue
            if include_live or not _alive(int(pid)):
                out.append(p)
    return sorted(out)


def remove_leftovers(target: str | Path, keep: Path | None = None, quiet: bool = False) -> list[Path]:
    """Remove the dead temporary siblings of ``target`` (saying which), except ``keep``."""
    removed = []
    for p in leftovers(target):
        if keep is not None and p == keep:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
        if not quiet:
            print(f"Removed {p}, the temporary folder of an earlier command that did not finish.", flush=True)
    return removed


def remove_stale_tmp_inside(folder: str | Path, quiet: bool = False) -> list[Path]:
    """Remove hidden ``.NAME.tmp-PID`` folders of dead processes inside ``folder`` (and its checkpoints/)."""
    folder = Path(folder)
    removed = []
    for parent in (folder, folder / "checkpoints"):
        if not parent.is_dir():
            continue
        for p in parent.iterdir():
            if not p.name.startswith("."):
                continue
            head, sep, pid = p.name.rpartition(".tmp-")
            stale = (sep and pid.isdigit() and not _alive(int(pid))) or (parent.name == "checkpoints"
                                                                          and p.name.endswith(".tmp"))
            if stale and p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
                if not quiet:
                    print(f"Removed {p}, left by an earlier command that did not finish.", flush=True)
    return removed


def swap_in(tmp: str | Path, target: str | Path) -> Path:
    """Put the finished ``tmp`` folder at ``target``; an old ``target`` is removed only afterwards."""
    tmp, target = Path(tmp), Path(target)
    if target.exists():
        old = target.parent / f".{target.name}{OLD_TAG}{owner_pid()}"
        if old.exists():
            shutil.rmtree(old)
        os.rename(target, old)
        try:
            os.rename(tmp, target)
        except BaseException:
            os.rename(old, target)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, target)
    return target
