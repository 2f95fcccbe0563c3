"""Checkpoints without pickle: trainable weights, optimizer, scheduler and RNG states in safetensors and JSON."""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path

import torch

from unlearnkit.errors import TrainingError
from unlearnkit.rundir import TMP_TAG, atomic_write_json, atomic_write_text, leftovers
from unlearnkit.training.reference import trainable_state


def _jsonable(value, what: str):
    """``value`` with tuples as lists, checked to survive JSON (a checkpoint holds no pickle)."""
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as exc:
        raise TrainingError(f"cannot save the {what} as JSON ({exc}).") from None


def optimizer_to_files(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimizer state dict as safetensors tensors plus a JSON description."""
    tensors: dict[str, torch.Tensor] = {}
    state_meta: dict[str, dict] = {}
    for pid, pstate in state_dict["state"].items():
        entry = {}
        for key, value in pstate.items():
            if torch.is_tensor(value):
                name = f"state.{pid}.{key}"
                tensors[name] = value.detach().contiguous().cpu()
                entry[key] = {"tensor": name}
            else:
                entry[key] = {"value": value}
        state_meta[str(pid)] = entry
    meta = {"state": state_meta, "param_groups": _jsonable(state_dict["param_groups"], "optimizer's parameter groups")}
    return tensors, _jsonable(meta, "optimizer state")


def optimizer_from_files(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state = {}
    for pid, entry in meta["state"].items():
        state[int(pid)] = {k: (tensors[v["tensor"]] if "tensor" in v else v["value"]) for k, v in entry.items()}
    return {"state": state, "param_groups": meta["param_groups"]}


def capture_rng() -> dict:
    """Every random state the loop draws from: torch (CPU and each CUDA device), Python, NumPy."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "cuda": [], "numpy": None}
    if torch.cuda.is_available():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    try:
        import numpy as np

        state["numpy"] = np.random.get_state()
    except ImportError:
        pass
    return state


def rng_to_files(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """RNG states as uint8/int64 tensors (safetensors) and JSON."""
    tensors = {"torch": state["torch"].to(torch.uint8).contiguous()}
    for i, cuda_state in enumerate(state.get("cuda") or []):
        tensors[f"cuda.{i}"] = cuda_state.to(torch.uint8).contiguous()
    version, internal, gauss = state["python"]
    meta = {"python": {"version": version, "state": list(internal), "gauss_next": gauss},
            "cuda_devices": len(state.get("cuda") or []), "numpy": None}
    if state.get("numpy") is not None:
        kind, keys, pos, has_gauss, cached = state["numpy"]
        import numpy as np

        tensors["numpy.keys"] = torch.from_numpy(np.asarray(keys, dtype=np.int64).copy())
        meta["numpy"] = {"kind": kind, "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}
    return tensors, meta


def rng_from_files(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    py = meta["python"]
    state = {"torch": tensors["torch"].to(torch.uint8), "python": (py["version"], tuple(py["state"]), py["gauss_next"]),
             "cuda": [tensors[f"cuda.{i}"].to(torch.uint8) for i in range(int(meta.get("cuda_devices", 0)))],
             "numpy": None}
    if meta.get("numpy") is not None:
        import numpy as np

        n = meta["numpy"]
        state["numpy"] = (n["kind"], tensors["numpy.keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                          n["cached_gaussian"])
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    cuda_states = state.get("cuda") or []
    if cuda_states:
        if torch.cuda.is_available() and torch.cuda.device_count() == len(cuda_states):
            torch.cuda.set_rng_state_all(cuda_states)
        else:
            print(f"warning: the checkpoint holds the random state of {len(cuda_states)} CUDA device(s) and this "
                  f"machine has {torch.cuda.device_count() if torch.cuda.is_available() else 0}; the GPU random "
                  "numbers (dropout) will differ from an uninterrupted run.", flush=True)
    if state.get("numpy") is not None:
        try:
            import numpy as np

            np.random.set_state(state["numpy"])
        except ImportError:
            pass


def _safe_torch_load(path: Path):
    """A legacy ``.pt`` state: tensors and plain values only (torch refuses anything that would run code)."""
    import pickle

    if not path.is_file():
        raise TrainingError(f"--resume: the checkpoint {path.parent} is incomplete ({path.name} is missing).")
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise TrainingError(
            f"--resume: {path} is a pickle that holds more than tensors and plain values, so it is not loaded "
            f"(unpickling it could run code): {reason}. Start the run again without --resume."
        ) from None


def read_checkpoint_states(ckpt: Path) -> tuple[dict, dict, dict]:
    """(optimizer, scheduler, rng) states of a checkpoint, from safetensors and JSON.

    A checkpoint of an older unlearnkit (``*.pt`` files) is read with torch's
    ``weights_only`` loader, which refuses any pickle that would run code.
    """
    from safetensors.torch import load_file

    if (ckpt / "optimizer.safetensors").is_file():
        optimizer_state = optimizer_from_files(load_file(str(ckpt / "optimizer.safetensors")),
                                               json.loads((ckpt / "optimizer.json").read_text()))
    else:
        optimizer_state = _safe_torch_load(ckpt / "optimizer.pt")
    if (ckpt / "scheduler.json").is_file():
        scheduler_state = json.loads((ckpt / "scheduler.json").read_text())
    else:
        scheduler_state = _safe_torch_load(ckpt / "scheduler.pt")
    if (ckpt / "rng.safetensors").is_file():
        rng = rng_from_files(load_file(str(ckpt / "rng.safetensors")), json.loads((ckpt / "rng.json").read_text()))
    else:
        legacy = _safe_torch_load(ckpt / "rng.pt")
        if not isinstance(legacy, dict) or "torch" not in legacy or "python" not in legacy:
            raise TrainingError(f"--resume: {ckpt / 'rng.pt'} does not hold the random state of a checkpoint.")
        rng = {"torch": legacy["torch"], "python": tuple(legacy["python"]), "cuda": [], "numpy": None}
    return optimizer_state, scheduler_state, rng


def resumable_leftover(run_dir: Path) -> Path | None:
    """The temporary folder of a killed fresh run of ``run_dir`` that holds a checkpoint (the latest), if any."""
    candidates = [p for p in leftovers(run_dir) if TMP_TAG in p.name and checkpoints_of(p)]
    return max(candidates, key=lambda p: checkpoints_of(p)[-1].name) if candidates else None


def checkpoints_of(folder: Path) -> list[Path]:
    root = Path(folder) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-"))


def resume_note(run_dir: Path) -> str:
    ckpts = checkpoints_of(run_dir)
    if ckpts:
        return f"continue it with --resume from its checkpoint {ckpts[-1].name}."
    return "no checkpoint was written, so nothing can be resumed."


# --------------------------------------------------------------------------- a trainer's checkpoints


def save_checkpoint(t, step: int, before: dict | None) -> None:
    """Checkpoint ``step`` of trainer ``t`` (main process writes; every process waits)."""
    acc = t.acc
    acc.wait_for_everyone()
    if not acc.is_main_process:
        return
    from safetensors.torch import save_file

    root = t.run_dir / "checkpoints"
    final = root / f"step-{step:06d}"
    tmp = root / f".step-{step:06d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(trainable_state(acc.unwrap_model(t.model)), str(tmp / "trainable.safetensors"))
    # No pickle: tensors in safetensors, everything else in JSON.
    opt_tensors, opt_meta = optimizer_to_files(t.optimizer.state_dict())
    save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
    atomic_write_json(tmp / "optimizer.json", opt_meta)
    atomic_write_json(tmp / "scheduler.json", _jsonable(t.scheduler.state_dict(), "scheduler state"))
    rng_tensors, rng_meta = rng_to_files(capture_rng())
    save_file(rng_tensors, str(tmp / "rng.safetensors"))
    atomic_write_json(tmp / "rng.json", rng_meta)
    state = {"step": step, **t.batches.state(), "method_state": t.method.state_dict(), "eval_before": before}
    atomic_write_json(tmp / "state.json", state)
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    for old in t.checkpoints()[: -t.cfg.train.keep_checkpoints]:
        shutil.rmtree(old, ignore_errors=True)


def align_schedule(t, step: int) -> None:
    """The learning rate of the next step from the schedule this config builds.

    The same max_steps gives back exactly the saved rate. A larger max_steps
    (``--resume --set train.max_steps=N``) continues on the schedule that now
    ends at N, instead of the finished schedule's last rate (0 for linear).
    """
    sched = t.scheduler
    lambdas = getattr(sched, "lr_lambdas", None)
    if not lambdas:
        return
    sched.last_epoch = step
    values = [base * fn(step) for fn, base in zip(lambdas, sched.base_lrs)]
    old = [g["lr"] for g in t.optimizer.param_groups]
    for group, value in zip(t.optimizer.param_groups, values):
        group["lr"] = value
    sched._last_lr = list(values)
    if any(not math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-15) for a, b in zip(old, values)):
        print(f"--resume: the {t.cfg.train.scheduler} schedule now ends at max_steps={t.cfg.train.max_steps}; "
              f"step {step + 1} uses lr {values[0]:.3g} (the checkpoint had {old[0]:.3g}).", flush=True)


def load_checkpoint(t) -> tuple[int, dict]:
    from safetensors.torch import load_file

    ckpts = t.checkpoints()
    if not ckpts:
        raise TrainingError(f"--resume: no checkpoint in {t.run_dir / 'checkpoints'}.")
    ckpt = ckpts[-1]
    state = json.loads((ckpt / "state.json").read_text())
    unwrapped = t.acc.unwrap_model(t.model)
    weights = load_file(str(ckpt / "trainable.safetensors"))
    missing = [n for n in weights if n not in dict(unwrapped.named_parameters())]
    if missing:
        raise TrainingError(f"--resume: checkpoint {ckpt} does not fit this model (unknown parameter {missing[0]}).")
    with torch.no_grad():
        params = dict(unwrapped.named_parameters())
        for name, value in weights.items():
            params[name].copy_(value.to(params[name].device, params[name].dtype))
    optimizer_state, scheduler_state, rng = read_checkpoint_states(ckpt)
    t.optimizer.load_state_dict(optimizer_state)
    t.scheduler.load_state_dict(scheduler_state)
    align_schedule(t, int(state["step"]))
    restore_rng(rng)
    t.batches.load_state(state)
    t.method.load_state_dict(state.get("method_state") or {})
    step = int(state["step"])
    log_path = t.run_dir / "log.jsonl"
    if t.acc.is_main_process and log_path.exists():
        # Drop log lines written after the checkpoint: they will be written again.
        kept = [line for line in log_path.read_text().splitlines() if line and json.loads(line).get("step", 0) <= step]
        atomic_write_text(log_path, "".join(k + "\n" for k in kept))
    print(f"Resuming {t.run_dir} from step {step}", flush=True)
    return step, state

