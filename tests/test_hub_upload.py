"""train.push_to_hub end to end against a local stand-in for the hub's HTTP API.

The real huggingface_hub client talks to a small server on 127.0.0.1 that
answers the calls an upload makes (create the repo, validate the card's YAML,
pre-upload, commit) and records the commit, so the test sees exactly what
would have been uploaded.
"""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from test_ecosystem import run_cfg
from unlearnkit.train import run_unlearning


class _Hub(BaseHTTPRequestHandler):
    commits: list[list[dict]] = []
    created: list[dict] = []

    def log_message(self, *args):  # keep the test output clean
        pass

    def _reply(self, code: int, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self._reply(404, {"error": "not here"})

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        base = f"http://127.0.0.1:{self.server.server_port}"
        if self.path == "/api/repos/create":
            self.created.append(json.loads(body))
            return self._reply(200, {"url": f"{base}/someone/unlearned"})
        if self.path == "/api/validate-yaml":
            return self._reply(200, {"errors": [], "warnings": []})
        if "/preupload/" in self.path:
            files = json.loads(body)["files"]
            return self._reply(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                               for f in files]})
        if "/commit/" in self.path:
            self.commits.append([json.loads(line) for line in body.decode().splitlines() if line.strip()])
            return self._reply(200, {"commitUrl": f"{base}/someone/unlearned/commit/{'a' * 40}", "commitOid": "a" * 40})
        self._reply(404, {"error": self.path})


@pytest.fixture
def local_hub(monkeypatch):
    _Hub.commits, _Hub.created = [], []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    # huggingface_hub read HF_HUB_OFFLINE (set by conftest) when it was imported.
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setenv("HF_TOKEN", "hf_" + "t" * 34)
    yield _Hub
    server.shutdown()
    server.server_close()


def test_push_to_hub_uploads_the_adapter_and_its_card(tmp_path, tiny_model_dir, local_hub):
    cfg = run_cfg(tmp_path, tiny_model_dir, push_to_hub=True, hub_repo_id="someone/unlearned", max_steps=2)
    summary = run_unlearning(cfg)
    assert local_hub.created == [{"name": "unlearned", "organization": "someone", "visibility": "private",
                                  "type": "model"}]
    (commit,) = local_hub.commits
    files = {e["value"]["path"]: base64.b64decode(e["value"]["content"]) for e in commit if e["key"] == "file"}
    saved = cfg.run_dir / "adapter"
    assert summary["model_path"] == str(saved)
    assert set(files) == {p.name for p in saved.iterdir() if p.is_file()}
    assert files["adapter_model.safetensors"] == (saved / "adapter_model.safetensors").read_bytes()
    card = files["README.md"].decode()
    assert card == (saved / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: peft" in card and "- unlearning" in card
    assert "someone/unlearned" in card  # the usage snippet names the repo
