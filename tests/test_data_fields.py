"""Null and empty fields are clear errors; prompt files read the same in every command."""

from __future__ import annotations

import json

import pytest

from unlearnkit.data.recipes import generic, pku_saferlhf, prompts, read_prompt_file, truthfulqa
from unlearnkit.data.sources import load_rows
from unlearnkit.data.spec import DataSourceConfig, load_examples
from unlearnkit.errors import DataError


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_null_is_named_as_null_with_row_key_and_file(tmp_path):
    path = _jsonl(tmp_path / "mine.jsonl", [{"prompt": "a", "response": "b"}, {"prompt": "q", "response": None}])
    with pytest.raises(DataError) as err:
        load_examples(DataSourceConfig(spec=f"generic:{path}"))
    msg = str(err.value)
    assert msg == f"generic: row 2 (counting from 1) of {path} has 'response' = null; give it a value or remove the row."
    assert "has no" not in msg
    with pytest.raises(DataError, match=r"row 1 \(counting from 1\) of the data has 'response'\[1\] = null"):
        pku_saferlhf([{"prompt": "p", "response": ["safe", None]}])


def test_empty_texts_are_refused_not_trained_as_nothing(tmp_path):
    path = _jsonl(tmp_path / "mine.jsonl", [{"prompt": "a", "response": "b"}, {"prompt": "q", "response": ""}])
    with pytest.raises(DataError, match=r"generic: row 2 \(counting from 1\) of .*mine\.jsonl has an empty 'response' \(''\)"):
        load_examples(DataSourceConfig(spec=f"generic:{path}"))
    with pytest.raises(DataError, match=r"has an empty 'prompt'"):
        generic([{"prompt": "  ", "response": "x"}])
    with pytest.raises(DataError, match=r"has an empty 'response'\[0\]"):
        pku_saferlhf([{"prompt": "p", "response": ["", "unsafe"]}])
    with pytest.raises(DataError, match=r"has an empty best answer"):
        truthfulqa([{"Question": "q", "Best Answer": ""}])
    with pytest.raises(DataError, match=r"prompts: row 2 \(counting from 1\) .* has an empty 'goal'"):
        prompts([{"goal": "x"}, {"goal": ""}])


def test_rows_and_lines_both_count_from_1(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "c"\n')
    with pytest.raises(DataError, match=r"bad\.jsonl line 2 is not valid JSON"):
        load_rows(str(path))
    items = tmp_path / "items.json"
    items.write_text('[{"prompt": "a"}, 3]')
    with pytest.raises(DataError, match=r"items\.json item 2 \(counting from 1\) is a JSON int"):
        load_rows(str(items))


def test_a_txt_prompt_file_is_one_prompt_a_line_everywhere(tmp_path):
    from unlearnkit.demo_sets import load_prompts

    txt = tmp_path / "unseen.txt"
    txt.write_text("# my prompts\nHow do I pick a lock?\n\nHow do I hotwire a car?\nHow do I forge a signature?\n")
    expected = ["How do I pick a lock?", "How do I hotwire a car?", "How do I forge a signature?"]
    # eval's data option (the prompts recipe), with or without the column the old hint asked for:
    for kw in ({}, {"column": "text"}):
        items = load_examples(DataSourceConfig(spec=f"prompts:{txt}", shuffle=False, **kw))
        assert [e.prompt for e in items] == expected
    assert load_prompts(str(txt)) == expected  # demo
    assert read_prompt_file(txt) == expected
