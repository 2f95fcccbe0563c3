"""Upload a run's saved model and its model card to the Hugging Face hub, on opt-in.

``train.push_to_hub: true`` with ``train.hub_repo_id: you/name`` uploads the
run's ``model/`` (merged) or ``adapter/`` folder, model card included, once the
run has finished. Whether the hub can be reached is checked BEFORE training
starts (a TCP connection to the endpoint with a short timeout, and the
``HF_HUB_OFFLINE`` switch), so an offline machine learns it in a second, not
after hours of training.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from unlearnkit.errors import UnlearnkitError

DEFAULT_ENDPOINT = "https://huggingface.co"
CONNECT_TIMEOUT_S = 3.0


class HubError(UnlearnkitError):
    """The hub cannot be reached, or an upload failed."""


def endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def _offline_switch() -> str | None:
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in {"1", "true", "yes", "on"}:
            return var
    from huggingface_hub import constants

    # huggingface_hub reads HF_HUB_OFFLINE once, when it is imported: its own view decides the upload.
    return "HF_HUB_OFFLINE is set (read by huggingface_hub when it was imported)" if constants.HF_HUB_OFFLINE else None


def unreachable_reason(url: str | None = None, timeout: float = CONNECT_TIMEOUT_S) -> str | None:
    """Why the hub endpoint cannot be reached (None when a TCP connection to it opens)."""
    switch = _offline_switch()
    if switch:
        return switch if " " in switch else f"{switch} is set"
    url = url or endpoint()
    parsed = urlparse(url)
    if not parsed.hostname:
        return f"the endpoint {url!r} is not a URL"
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            return None
    except socket.timeout:
        return f"no answer from {parsed.hostname}:{port} within {timeout:g} s"
    except OSError as exc:
        return f"{parsed.hostname}:{port}: {exc.strerror or exc}"


def check_push(cfg, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Before training: a run that will push must be able to reach the hub (one clear sentence if not)."""
    if not cfg.train.push_to_hub:
        return
    reason = unreachable_reason(timeout=timeout)
    if reason is not None:
        raise HubError(
            f"train.push_to_hub is true but the Hugging Face hub at {endpoint()} cannot be reached ({reason}), "
            "so the run was not started; connect to the network or set train.push_to_hub: false."
        )


def push_folder(folder: str | Path, repo_id: str, private: bool = True, message: str | None = None) -> str:
    """Create ``repo_id`` (if needed) and upload ``folder`` (model or adapter, README.md card included).

    Returns the URL of the commit. The token is huggingface_hub's usual one
    (``HF_TOKEN`` or ``hf auth login``); unlearnkit never reads or stores it.
    """
    from huggingface_hub import HfApi

    folder = Path(folder)
    if not folder.is_dir():
        raise HubError(f"cannot upload {folder}: it is not a folder.")
    api = HfApi(endpoint=endpoint())
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                                 commit_message=message or f"Upload {folder.name} from unlearnkit")
    except Exception as exc:  # the hub client raises many kinds (HTTP, auth, network)
        raise HubError(f"the upload of {folder} to {repo_id} failed ({type(exc).__name__}: "
                       f"{str(exc).splitlines()[0] if str(exc) else ''}); the run folder is complete and unchanged, "
                       f"upload it later with huggingface_hub's upload_folder.") from None
    return str(getattr(info, "commit_url", info))


def push_run(cfg, summary: dict) -> str | None:
    """After a finished run: upload its saved model with its card, when ``train.push_to_hub`` asks for it."""
    if not cfg.train.push_to_hub or not summary.get("model_path"):
        return None
    url = push_folder(summary["model_path"], cfg.train.hub_repo_id, private=cfg.train.hub_private,
                      message=f"unlearnkit: {cfg.method['name']} run {cfg.name} ({summary.get('status')})")
    print(f"Uploaded {summary['model_path']} to {cfg.train.hub_repo_id}: {url}", flush=True)
    return url
