"""Fingerprinted stages: the key is a hash of what decides a result, and a cached value is reused
only under the same key."""

from __future__ import annotations

import hashlib
import json

from unlearnkit.stagecache import cached_json, fingerprint


def test_fingerprint_is_the_sha256_of_sorted_json_and_ignores_key_order():
    expected = hashlib.sha256(b'{"a": 1, "b": [2, "x"]}').hexdigest()[:16]
    assert fingerprint({"b": [2, "x"], "a": 1}) == expected
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})
    assert fingerprint({"p": json}) == fingerprint({"p": str(json)})  # non-JSON values by str


def test_cached_json_reuses_only_under_the_same_key(tmp_path, capsys):
    path = tmp_path / "stage.json"
    calls = []

    def compute(value):
        def run():
            calls.append(value)
            return value
        return run

    assert cached_json(path, "k1", compute({"x": 1})) == {"x": 1}
    assert cached_json(path, "k1", compute({"x": 2})) == {"x": 1}  # reused: not recomputed
    assert "reusing" in capsys.readouterr().out
    assert cached_json(path, "k2", compute({"x": 3})) == {"x": 3}  # another key: recomputed and replaced
    assert json.loads(path.read_text()) == {"key": "k2", "value": {"x": 3}}
    path.write_text("{not json")  # a torn or foreign file is recomputed, never trusted
    assert cached_json(path, "k2", compute([4])) == [4]
    assert calls == [{"x": 1}, {"x": 3}, [4]]
