"""The cross-encoder judge: input layout, corpus split, calibration error, two verdicts, save and load."""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest

from unlearnkit.data.audit import normalise
from unlearnkit.errors import DataError
from unlearnkit.judges import ClassifierJudge, RefusalJudge, get_judge
from unlearnkit.judges.corpus import HELDOUT_SETS, build_corpus, default_sources
from unlearnkit.judges.crosstrain import calibration_error, set_scores, train_encoder_judge
from unlearnkit.judges.encoder import VERDICTS, bucketed_batches, encode_cross
from unlearnkit.judges.refusals import OFFERS, OPENINGS, REASONS, refusals


@pytest.fixture(scope="module")
def minilm_tokenizer():
    from transformers import AutoTokenizer

    from unlearnkit.evaluation.embedding import model_dir

    return AutoTokenizer.from_pretrained(model_dir())


@pytest.fixture(scope="module")
def corpus():
    if not default_sources()["beavertails"].is_file():
        pytest.skip("the shared judge data is not here")
    return build_corpus()


# ----------------------------------------------------------------- input layout


def test_encode_cross_lays_out_cls_prompt_sep_response_sep(minilm_tokenizer):
    tok = minilm_tokenizer
    ids, seg = encode_cross(tok, "kill a process", "use kill -9", 64)
    p = tok("kill a process", add_special_tokens=False)["input_ids"]
    r = tok("use kill -9", add_special_tokens=False)["input_ids"]
    assert ids == [tok.cls_token_id, *p, tok.sep_token_id, *r, tok.sep_token_id]
    assert seg == [0] * (len(p) + 2) + [1] * (len(r) + 1)


def test_encode_cross_cuts_long_pairs_keeping_the_response(minilm_tokenizer):
    tok = minilm_tokenizer
    prompt, response = " ".join(["question"] * 100), " ".join(["answer"] * 100)
    ids, seg = encode_cross(tok, prompt, response, 32)
    assert len(ids) == len(seg) == 32
    n_prompt = seg.count(0) - 2  # CLS and the first SEP are segment 0
    assert n_prompt == (32 - 3) // 3 and seg.count(1) - 1 == 29 - n_prompt
    # A short response leaves the rest of the budget to the prompt.
    ids, seg = encode_cross(tok, prompt, "ok", 32)
    assert len(ids) == 32 and seg.count(1) == 2


def test_bucketed_batches_cover_every_item_once():
    import random

    lengths = [5, 50, 7, 40, 3, 33, 8, 9, 10, 90, 1]
    batches = bucketed_batches(lengths, 3, random.Random(0), window=2)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert all(1 <= len(b) <= 3 for b in batches)


# ----------------------------------------------------------------- scores


def test_calibration_error_matches_a_hand_computation():
    probs = [0.05, 0.15, 0.92, 0.97, 0.55, 1.0]
    labels = [False, True, True, True, False, True]
    # bins: [0,.1): {0.05 -> 0}: |0 - 0.05| ; [.1,.2): {0.15 -> 1}: |1 - 0.15|;
    # [.5,.6): {0.55 -> 0}: 0.55; [.9,1]: {0.92, 0.97, 1.0 -> all 1}: |1 - 0.9633|
    expected = (0.05 + 0.85 + 0.55 + 3 * abs(1 - (0.92 + 0.97 + 1.0) / 3)) / 6
    assert calibration_error(probs, labels) == pytest.approx(expected)
    assert calibration_error([], []) is None
    assert calibration_error([0.0, 1.0], [False, True]) == 0.0


def test_set_scores_counts_each_class():
    s = set_scores([0.9, 0.2, 0.6, 0.4], [True, True, False, False])
    assert (s["accuracy"], s["n"]) == (0.5, 4)
    assert (s["harmful_recall"], s["n_harmful"], s["safe_recall"], s["n_safe"]) == (0.5, 2, 0.5, 2)
    assert s["judged_harmful"] == 0.5 and s["judged_harmful_ci95"][0] < 0.5 < s["judged_harmful_ci95"][1]


# ----------------------------------------------------------------- refusals and corpus


def test_refusal_halves_share_no_sentence():
    train = refusals([f"p{i}" for i in range(300)], "train")
    held = refusals([f"p{i}" for i in range(300)], "heldout")
    pieces = lambda rows: {s for _, r in rows for s in (OPENINGS + REASONS + OFFERS) if s in r}  # noqa: E731
    assert pieces(train) and pieces(held) and not pieces(train) & pieces(held)
    assert refusals(["x", "y"], "train", seed=3) == refusals(["x", "y"], "train", seed=3)
    assert all(any(r.startswith(o) for o in OPENINGS[0::2]) for _, r in train)
    assert all(any(r.startswith(o) for o in OPENINGS[1::2]) for _, r in held)
    assert [p for p, _ in held] == [f"p{i}" for i in range(300)]
    with pytest.raises(ValueError, match="part"):
        refusals(["x"], "test")


def test_no_heldout_prompt_or_response_is_trained_on(corpus):
    train_prompts = {normalise(p) for p, *_ in corpus["train"]}
    train_responses = {normalise(r) for _, r, *_ in corpus["train"]}
    assert set(corpus["heldout"]) == set(HELDOUT_SETS) - {"tofu"}  # TOFU is opt-in
    for name, rows in corpus["heldout"].items():
        assert rows, name
        assert not {normalise(p) for p, _, _ in rows} & train_prompts, name
        assert not {normalise(r) for _, r, _ in rows} & train_responses, name
    # Sets are large enough to measure, and both labels occur where the data has them.
    sizes = {k: len(v) for k, v in corpus["heldout"].items()}
    assert sizes["pku"] > 900 and sizes["beavertails"] > 600 and sizes["gptfuzz_evaluate"] > 1400
    assert {h for _, _, h in corpus["heldout"]["beavertails"]} == {True, False}
    assert not any(h for _, _, h in corpus["heldout"]["refusals"] + corpus["heldout"]["truthfulqa"])


def test_corpus_keeps_the_lexical_judges_pku_split(corpus):
    from unlearnkit.judges import default_pku_path, judge_split_items, load_labelled_pairs, split_by_prompt

    pairs = load_labelled_pairs(default_pku_path())
    train_idx, held_idx = split_by_prompt(pairs, 4000, None, 0)
    assert corpus["split"]["pku"]["heldout_pair_indices"] == held_idx
    assert corpus["heldout"]["pku"] == judge_split_items(pairs, train_idx, held_idx)[1]


def test_tofu_is_an_opt_in_source_of_safe_answers(tmp_path):
    path = tmp_path / "tofu.json"
    path.write_text("\n".join(json.dumps({"question": f"Who wrote book {i}?", "answer": f"Author {i} wrote it."})
                              for i in range(20)))
    c = build_corpus({"tofu": path})
    held = c["heldout"]["tofu"]
    assert len(held) == 2 and not any(h for _, _, h in held)
    trained = [it for it in c["train"] if it[0].startswith("Who wrote book")]
    assert len(trained) == 18 and all(it[2] is False and it[3] is False for it in trained)
    assert not {p for p, _, _ in held} & {p for p, *_ in trained}
    (tmp_path / "bad.jsonl").write_text(json.dumps({"q": "x"}) + "\n")
    with pytest.raises(DataError, match="needs 'question' and 'answer'"):
        build_corpus({"tofu": tmp_path / "bad.jsonl"})


def test_repeat_lists_a_sources_training_items_k_times_and_leaves_the_heldout_alone(corpus):
    rows = [json.loads(line) for line in default_sources()["everyday"].read_text().splitlines() if line.strip()]
    everyday = [it for it in corpus["train"] if it[1] in {r["response"] for r in rows}]
    assert everyday  # the calibration answers are trained on at all
    c = build_corpus(repeat={"everyday": 3})
    counts = Counter(c["train"])
    assert all(counts[it] == 3 for it in everyday)
    assert len(c["train"]) == len(corpus["train"]) + 2 * len(everyday)
    assert c["heldout"] == corpus["heldout"] and c["split"]["everyday"]["repeated"] == 3
    assert c["split"]["settings"]["repeat"] == {"everyday": 3}
    with pytest.raises(DataError, match="repeat everyday=0"):
        build_corpus(repeat={"everyday": 0})


def test_corpus_names_a_bad_row(tmp_path):
    bad = tmp_path / "bt.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "response": "r", "harmful": "yes"}) + "\n")
    with pytest.raises(DataError, match=r"bt.jsonl: row 0 has harmful='yes'"):
        build_corpus({"beavertails": bad})


# ----------------------------------------------------------------- train, save, load


def test_encoder_judge_trains_saves_and_reloads_with_two_verdicts(tmp_path, corpus, capsys):
    caps = {"pku": 6, "beavertails": 6, "truthfulqa": 3, "everyday": 2, "refusals": 3}
    meta = train_encoder_judge(tmp_path / "j", train_max=caps, gptfuzz_train_max=4, max_steps=2, batch_size=4,
                               max_length=32, layers=[4, 5], progress=False, evaluate=False, command="test")
    assert meta["kind"] == "encoder" and meta["train_items"] == 24 and meta["hyperparameters"]["steps_run"] == 2
    assert meta["weights_bytes"] < 1_000_000 and meta["lora"]["layers"] == [4, 5]
    assert meta["data"]["pku"]["sha256"] == corpus["split"]["pku"]["sha256"]
    judge = get_judge(f"classifier:{tmp_path / 'j'}")  # reload passes the probe self-check
    assert isinstance(judge, ClassifierJudge) and judge.kind == "encoder"
    out = judge.verdicts(["How do I kill a Python process?", "Hi"], ["Run kill -9 with its PID.", "Hello!"])
    assert set(out) == set(VERDICTS) and all(len(v) == 2 and all(0 < p < 1 for p in v) for v in out.values())
    assert judge.harm_probability(["Hi"], ["Hello!"]) == pytest.approx([out["harmful"][1]], abs=1e-5)
    assert judge.refusal_probability(["Hi"], ["Hello!"]) == pytest.approx([out["refusal"][1]], abs=1e-5)
    # `unlearnkit judge eval` prints every figure per held-out set, with n and intervals.
    from unlearnkit.cli import main

    assert main(["judge", "eval", "--judge", str(tmp_path / "j"), "--sets", "refusals,pku", "--limit", "3",
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "[refusals]" in printed and "[pku]" in printed and "[beavertails]" not in printed
    for line in ("accuracy:", "harmful recall:", "safe recall:", "judged harmful:", "judged refusal:",
                 "expected calibration error:"):
        assert printed.count(line) == 2, line
    assert "(n=3)" in printed and "throughput: 6 answers in" in printed
    # Altered weights fail the self-check.
    from safetensors.torch import load_file, save_file

    state = load_file(str(tmp_path / "j" / "judge.safetensors"))
    state["head.bias"] = state["head.bias"] + 3.0
    save_file(state, str(tmp_path / "j" / "judge.safetensors"))
    from unlearnkit.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="does not reproduce"):
        ClassifierJudge(tmp_path / "j")


def test_phrase_judges_answer_the_refusal_verdict_by_phrases():
    judge = RefusalJudge()
    out = judge.verdicts(["a", "b", "c"], ["I'm sorry, I can't help.", "Sure, here it is.", ""])
    assert out == {"harmful": [0.0, 1.0, 0.0], "refusal": [1.0, 0.0, 1.0]}
    assert not math.isnan(sum(out["harmful"]))


# ----------------------------------------------------------------- the shipped judge


def _shipped():
    from unlearnkit.judges import JUDGE_META, JUDGE_WEIGHTS, MAX_JUDGE_BYTES, default_judge_dir

    folder = default_judge_dir()
    meta = json.loads((folder / JUDGE_META).read_text())
    assert (folder / JUDGE_WEIGHTS).stat().st_size <= MAX_JUDGE_BYTES
    return meta


def test_shipped_judge_is_the_cross_encoder_with_its_provenance():
    from unlearnkit.judges import default_judges
    from unlearnkit.judges.crosstrain import recorded_corpus

    if not default_sources()["beavertails"].is_file():
        pytest.skip("the shared judge data is not here")
    meta = _shipped()
    assert meta["kind"] == "encoder" and meta["base_model"] == "all-MiniLM-L6-v2"
    assert meta["training_command"].startswith("unlearnkit judge train --kind encoder")
    assert default_judges() == ["refusal", "classifier"]
    corpus = recorded_corpus(meta)  # checks every file's sha256 and the held-out indices
    # A source listed K times (--repeat) counts K times in what the judge saw.
    assert meta["train_items"] == len(corpus["train"]) == sum(
        v["train_items"] * v.get("repeated", 1) for v in meta["split"].values() if isinstance(v, dict) and "train_items" in v)
    assert set(meta["heldout"]["sets"]) == set(corpus["heldout"])
    for name, rows in corpus["heldout"].items():
        assert meta["heldout"]["sets"][name]["n"] == len(rows), name
    # Nothing the shipped judge trained on is in any of its held-out sets.
    trained = {normalise(p) for p, *_ in corpus["train"]} | {normalise(r) for _, r, *_ in corpus["train"]}
    for name, rows in corpus["heldout"].items():
        assert not trained & ({normalise(p) for p, _, _ in rows} | {normalise(r) for _, r, _ in rows}), name


def test_recorded_files_not_here_fall_back_to_this_installations_by_their_sha256():
    import copy

    from unlearnkit.judges.crosstrain import recorded_corpus

    if not default_sources()["beavertails"].is_file():
        pytest.skip("the shared judge data is not here")
    meta = copy.deepcopy(_shipped())
    # Paths of another checkout and another working directory: this installation's files are used.
    meta["data"]["everyday"]["path"] = "/elsewhere/unlearnkit/assets/everyday_answers.jsonl"
    meta["data"]["pku"]["path"] = "some/other/dir/pku_saferlhf_5k.json"
    corpus = recorded_corpus(meta)
    assert len(corpus["train"]) == meta["train_items"]
    # The fallback is a file only when its content is the recorded one.
    meta["data"]["everyday"]["sha256"] = "0" * 64
    with pytest.raises(DataError, match="is not the everyday file this judge was trained on"):
        recorded_corpus(meta)


def test_shipped_judge_on_a_heldout_slice_agrees_with_its_recorded_figures():
    """40 held-out answers per set, scored now: each set's recorded accuracy lies in the slice's 95% interval."""
    from unlearnkit.judges.crosstrain import evaluate_encoder_judge

    if not default_sources()["beavertails"].is_file():
        pytest.skip("the shared judge data is not here")
    meta = _shipped()
    judge = ClassifierJudge()
    result = evaluate_encoder_judge(judge, limit=40, progress=False)
    for name, s in result["sets"].items():
        lo, hi = s["accuracy_ci95"]
        assert s["n"] == min(40, meta["heldout"]["sets"][name]["n"])
        assert lo <= meta["heldout"]["sets"][name]["accuracy"] <= hi, name
