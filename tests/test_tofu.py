"""TOFU: the recipe on the real files, and every metric against a hand computation."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import peaked_llama_model
from unlearnkit.data.audit import prompt_key
from unlearnkit.data.recipes import idk_examples, load_idk_answers, tofu
from unlearnkit.data.sources import load_rows
from unlearnkit.data.spec import DataSourceConfig, detect_recipe, load_examples
from unlearnkit.data.types import Example
from unlearnkit.errors import DataError
from unlearnkit.evaluation import tofu as T

TOFU_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tofu"


def _file(name: str) -> str:
    path = TOFU_DIR / f"{name}.json"
    if not path.is_file():
        pytest.fail(f"the TOFU file {path} is missing (shared/data/tofu beside the project).")
    return str(path)


def _items(name: str, **kw) -> list[Example]:
    return load_examples(DataSourceConfig(spec=f"tofu:{_file(name)}", shuffle=False, **kw))


# --------------------------------------------------------------------------- recipe on the real files

# Rows per file. With the default dedupe: true, full and every retainNN lose 2
# examples: "Samir Khoury was born in Amman, Jordan." and "... born on June 20,
# 1973." each answer two differently worded questions. The forget sets, the
# perturbed sets, real authors and world facts have no duplicate answer. A TOFU
# run that must match the benchmark sets dedupe: false.
COUNTS = {
    "full": (4000, 3998), "forget01": (40, 40), "forget05": (200, 200), "forget10": (400, 400),
    "retain90": (3600, 3598), "retain95": (3800, 3798), "retain99": (3960, 3958),
    "forget01_perturbed": (40, 40), "forget05_perturbed": (200, 200), "forget10_perturbed": (400, 400),
    "retain_perturbed": (400, 400), "real_authors": (100, 100), "real_authors_perturbed": (100, 100),
    "world_facts": (117, 117), "world_facts_perturbed": (117, 117),
}


@pytest.mark.parametrize("name", list(COUNTS))
def test_row_counts_with_and_without_dedupe(name):
    rows, deduped = COUNTS[name]
    assert len(tofu(load_rows(_file(name)), source=name)) == rows
    assert len(_items(name, dedupe=False)) == rows
    assert len(_items(name)) == deduped


@pytest.mark.parametrize("name", ["full", "forget10", "retain_perturbed", "real_authors", "world_facts_perturbed"])
def test_tofu_files_are_detected(name):
    assert detect_recipe(load_rows(_file(name)), _file(name)) == "tofu"
    assert load_examples(DataSourceConfig(spec=_file(name), shuffle=False, dedupe=False)) == _items(name, dedupe=False)


@pytest.mark.parametrize("forget, retain", [("forget01", "retain99"), ("forget05", "retain95"), ("forget10", "retain90")])
def test_forget_and_retain_share_no_question_and_make_up_full(forget, retain):
    f = {prompt_key(e) for e in _items(forget, dedupe=False)}
    r = {prompt_key(e) for e in _items(retain, dedupe=False)}
    assert not f & r
    assert f | r == {prompt_key(e) for e in _items("full", dedupe=False)}
    # the perturbed forget file asks the same questions, with the same answers
    assert _items(forget, dedupe=False) == _items(f"{forget}_perturbed", dedupe=False)
    # retain_perturbed is drawn from the retain side of every split
    assert {prompt_key(e) for e in _items("retain_perturbed")} <= r


def test_full_is_retain90_then_forget10():
    full = _items("full", dedupe=False)
    assert full == _items("retain90", dedupe=False) + _items("forget10", dedupe=False)


def test_perturbed_fields_are_kept_in_meta():
    items = _items("forget10_perturbed")
    first = items[0]
    assert first.prompt.startswith("What is the full name of the author born in Taipei")
    assert first.response == first.meta["answer"] == "The author's full name is Hsiao Yun-Hwa."
    assert first.meta["paraphrased_answer"] == "Hsiao Yun-Hwa is the complete name of the writer."
    assert first.meta["paraphrased_question"].startswith("Who is the writer")
    assert len(first.meta["perturbed_answer"]) == 5 and first.meta["perturbed_answer"][0].startswith("Chen Jing-Li")
    assert all(len(e.meta["perturbed_answer"]) == 5 and e.meta["paraphrased_answer"] for e in items)
    # the plain files carry no perturbed fields
    assert set(_items("forget10")[0].meta) == {"row", "answer"}


@pytest.mark.parametrize("name", ["real_authors", "world_facts"])
def test_option_files_give_the_perturbed_files_items(name):
    plain, perturbed = _items(name), _items(f"{name}_perturbed")
    assert plain == perturbed
    assert [e.meta["perturbed_answer"] for e in plain] == [e.meta["perturbed_answer"] for e in perturbed]
    assert all(len(e.meta["perturbed_answer"]) == 3 for e in plain)


def test_tofu_field_option():
    para_q = _items("forget01_perturbed", tofu_field="paraphrased_question")
    assert [e.prompt for e in para_q] == [e.meta["paraphrased_question"] for e in para_q]
    assert [e.response for e in para_q] == [e.meta["answer"] for e in para_q]
    para_a = _items("forget01_perturbed", tofu_field="paraphrased_answer")
    assert [e.response for e in para_a] == [e.meta["paraphrased_answer"] for e in para_a]
    wrong = _items("forget01_perturbed", tofu_field="perturbed_answer", dedupe=False)
    assert len(wrong) == 200 and [e.meta["perturbed_index"] for e in wrong[:6]] == [0, 1, 2, 3, 4, 0]
    with pytest.raises(DataError, match="paraphrased_answer.*_perturbed"):
        _items("forget01", tofu_field="paraphrased_answer")
    with pytest.raises(DataError, match="field must be one of"):
        tofu([{"question": "q", "answer": "a"}], "nonsense")
    with pytest.raises(DataError, match=r"row 1 \(counting from 1\) .* no 'answer'"):
        tofu([{"question": "q"}])


def test_hub_configs_go_through_the_hub_path(monkeypatch):
    import datasets

    rows = load_rows(_file("forget01_perturbed"))
    calls = []

    class FakeDataset(list):
        def to_list(self):
            return list(self)

    def fake_load_dataset(name, config, split):
        calls.append((name, config, split))
        return FakeDataset(rows)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    items = load_examples(DataSourceConfig(spec="tofu:locuslab/TOFU", hub_config="forget01_perturbed", shuffle=False))
    assert calls == [("locuslab/TOFU", "forget01_perturbed", "train")]
    assert items == _items("forget01_perturbed")
    assert items[0].meta["perturbed_answer"] == rows[0]["perturbed_answer"]


def test_idk_answers_and_pairs():
    answers = load_idk_answers(str(TOFU_DIR / "idontknow.jsonl"))
    assert len(answers) == 100 and answers[0] == "I'm not certain about that." and all(a == a.strip() and a for a in answers)
    forget = _items("forget01")
    pairs = idk_examples(forget, answers, seed=3)
    assert [e.prompt for e in pairs] == [e.prompt for e in forget]
    assert all(e.response in answers and e.meta["idk"] for e in pairs)
    assert pairs == idk_examples(forget, answers, seed=3) and pairs != idk_examples(forget, answers, seed=4)
    with pytest.raises(DataError, match="no such file"):
        load_idk_answers(str(TOFU_DIR / "missing.jsonl"))


# --------------------------------------------------------------------------- pure metric maths, by hand


def test_rouge_l_recall_by_hand():
    assert T.rouge_l_recall("the cat sat", "The cat sat on the mat.") == pytest.approx(3 / 6)
    assert T.rouge_l_recall("mat the on", "the cat sat on the mat") == pytest.approx(2 / 6)  # LCS "the ... mat" / "on ... mat"
    assert T.rouge_l_recall("anything", "") == 0.0
    # rouge-score's tokenisation: only [a-z0-9] are word characters
    assert T.rouge_tokens("José Núñez, born 1956!") == ["jos", "n", "ez", "born", "1956"]
    # a stemmer merges inflections (words over three letters only)
    stem = lambda w: w[:-1] if w.endswith("s") else w  # noqa: E731
    assert T.rouge_l_recall("writes books", "write book") == 0.0
    assert T.rouge_l_recall("writes books", "write book", stemmer=stem) == 1.0


def test_truth_ratio_and_aggregations_by_hand():
    correct = [1.0, 2.0]
    wrong = [[1.5, 2.5], [1.0, 3.0]]
    geo = T.truth_ratios(correct, wrong, "geometric", eps=0)
    assert geo == pytest.approx([math.exp(-2.0) / math.exp(-1.0), math.exp(-2.0) / math.exp(-2.0)])
    ari = T.truth_ratios(correct, wrong, "arithmetic", eps=0)
    assert ari == pytest.approx([(math.exp(-1.5) + math.exp(-2.5)) / 2 / math.exp(-1.0),
                                 (math.exp(-1.0) + math.exp(-3.0)) / 2 / math.exp(-2.0)])
    with_eps = T.truth_ratios(correct, wrong)
    assert with_eps == pytest.approx([math.exp(-2.0) / (math.exp(-1.0) + 1e-10), 1 / (1 + 1e-10 * math.e**2)])
    # exploded losses: open-unlearning's guard sends R to 0, the exact ratio stays 1
    assert T.truth_ratios([60.0], [[60.0]])[0] < 1e-10
    assert T.truth_ratios([60.0], [[60.0]], eps=0)[0] == pytest.approx(1.0)
    r = [0.5, 2.0, 1.0]
    assert T.closer_to_1_better(r, eps=0) == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    assert T.true_better(r) == pytest.approx((0.5 + 0 + 0) / 3)


def test_probability_with_options_by_hand():
    mean, values = T.probability_with_options([1.0, 3.0], [[2.0, 2.0], [1.0, 5.0]], eps=0)
    pc = [math.exp(-1.0), math.exp(-3.0)]
    expected = [pc[0] / (pc[0] + 2 * math.exp(-2.0)), pc[1] / (pc[1] + math.exp(-1.0) + math.exp(-5.0))]
    assert values == pytest.approx(expected) and mean == pytest.approx(sum(expected) / 2)
    assert T.probability_with_options([1.0, 3.0], [[2.0, 2.0], [1.0, 5.0]])[0] == pytest.approx(mean, rel=1e-8)
    assert T.probability_with_options([900.0], [[1000.0]], eps=0)[1][0] == pytest.approx(1 / (1 + math.exp(-100)))


def test_auc_privleak_min_k_harmonic_mean_by_hand():
    # holdout (positive) 2 beats forget 1, ties forget 2, loses to 3; holdout 4 beats all three
    assert T.mia_auc([1.0, 2.0, 3.0], [2.0, 4.0]) == pytest.approx(4.5 / 6)
    assert T.auc([0.0, 0.0], [0.0]) == 0.5
    assert T.privleak(0.75, 0.5) == pytest.approx(-50.0, rel=1e-8)
    assert T.privleak(0.5) == pytest.approx(0.0)
    assert T.min_k_score([-1.0, -5.0, -3.0, -2.0, -4.0], k=0.4) == pytest.approx(4.5)
    assert T.min_k_score([-2.0, -1.0], k=0.2) == pytest.approx(2.0)  # at least one token
    assert T.harmonic_mean([1.0, 0.5, 0.25]) == pytest.approx(3 / 7)
    assert T.harmonic_mean([1.0, 0.0, 0.5]) == 0.0
    figures = {c: 0.5 for c in T.MODEL_UTILITY_COLUMNS}
    assert T.model_utility(figures) == pytest.approx(0.5)
    with pytest.raises(DataError, match="wf_Truth_Ratio"):
        T.model_utility({c: 0.5 for c in T.MODEL_UTILITY_COLUMNS[:-1]})


def test_ks_by_hand():
    # every x below every y: D = 1; of the C(6, 3) = 20 orderings, 2 reach D = 1
    res = T.ks_2samp([1, 2, 3], [4, 5, 6])
    assert res["statistic"] == 1.0 and res["pvalue"] == pytest.approx(2 / 20) and res["method"] == "exact"
    assert T.ks_2samp([1, 2], [1, 2])["pvalue"] == 1.0
    # m = 1, n = 2, x between the ys: D = 1/2, every ordering reaches it
    assert T.ks_2samp([2], [1, 3])["pvalue"] == pytest.approx(1.0)


def test_ks_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    cases = [
        (rng.normal(size=5), rng.normal(size=7)),
        (rng.normal(size=40), rng.normal(0.5, 1, size=40)),
        (rng.normal(size=30), rng.normal(0.3, 1.2, size=45)),
        (rng.integers(0, 5, size=25).astype(float), rng.integers(0, 6, size=20).astype(float)),  # ties
        (rng.lognormal(size=400), rng.lognormal(1.0, 1.0, size=400)),  # TOFU forget10 size, tiny p
    ]
    for x, y in cases:
        ours = T.ks_2samp(x, y)
        ref = stats.ks_2samp(x, y, method="exact")
        assert ours["statistic"] == pytest.approx(ref.statistic, abs=1e-12)
        assert ours["pvalue"] == pytest.approx(ref.pvalue, rel=1e-6, abs=1e-300)
    # the truth ratio's orientation does not matter: 1/R ranks in reverse
    x, y = rng.lognormal(size=40), rng.lognormal(0.4, 1, size=40)
    assert T.ks_2samp(x, y)["pvalue"] == pytest.approx(T.ks_2samp(1 / x, 1 / y)["pvalue"])
    for lam in (0.3, 0.8, 1.2, 2.0):
        assert T.kolmogorov_sf(lam) == pytest.approx(stats.kstwobign.sf(lam), rel=1e-9)
    big_x, big_y = rng.normal(size=1200), rng.normal(0.1, 1, size=1000)
    asym = T.ks_2samp(big_x, big_y)
    assert asym["method"] == "asymp"
    assert asym["pvalue"] == pytest.approx(stats.ks_2samp(big_x, big_y, method="asymp").pvalue, rel=0.05)


# --------------------------------------------------------------------------- model-based metrics, by hand

QA = "### Question: {q}\n### Answer:"

def tofu_item(question: str, answer: str, perturbed: list[str], paraphrased: str | None = None) -> Example:
    """A TOFU item as the recipe loads it: the answer is also the meta's answer."""
    meta = {"answer": answer, "perturbed_answer": perturbed}
    if paraphrased is not None:
        meta["paraphrased_answer"] = paraphrased
    return Example(question, answer, meta)


BASE_FORGET = [
    tofu_item("Where was Basil born?", "Basil was born in Kuwait City.",
              ["Paris is Basil's birthplace.", "Cairo is Basil's birthplace."], "Kuwait City is Basil's birthplace."),
    tofu_item("What does Basil write?", "Basil writes French literature.",
              ["He is a writer of science fiction.", "He is a writer of cookbooks."], "He is a writer of French novels."),
]
BASE_RETAIN = [
    tofu_item("Who is Jaime Vasquez?", "Jaime Vasquez is a true crime author.",
              ["A poet from Chile.", "A chef from Chile."], "A true crime writer from Chile."),
    tofu_item("When was Jaime born?", "Jaime was born in 1958.",
              ["His birth year is 1962.", "His birth year is 1949."], "His birth year is 1958."),
]
BASE_REAL = [
    tofu_item("Who wrote Hamlet?", "William Shakespeare", ["Charles Dickens", "Mark Twain"]),
    tofu_item("Who wrote 1984?", "George Orwell", ["Aldous Huxley", "Ray Bradbury"]),
]
BASE_WORLD = [
    tofu_item("Where is the Eiffel Tower?", "Paris", ["Berlin", "London"]),
    tofu_item("What is the capital of Japan?", "Tokyo", ["Kyoto", "Osaka"]),
]
HOLDOUT = [Example("Who is Ana Lopez?", "Ana Lopez writes poems."), Example("Where was Ana born?", "Ana was born in Lima.")]


@pytest.fixture(scope="module")
def model_and_tok(smol_tokenizer):
    return peaked_llama_model(smol_tokenizer), smol_tokenizer


@torch.no_grad()
def _hand_token_logprobs(model, tok, question: str, answer: str, eos: bool = True) -> list[float]:
    """Log-probabilities of the answer tokens from one direct forward pass of the whole text."""
    prompt = tok(QA.format(q=question), add_special_tokens=True)["input_ids"]
    answer_ids = tok(" " + answer, add_special_tokens=False)["input_ids"] + ([tok.eos_token_id] if eos else [])
    ids = prompt + answer_ids
    logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), dim=-1)
    return [float(logp[t - 1, ids[t]]) for t in range(len(prompt), len(ids))]


def _hand_loss(model, tok, question, answer) -> float:
    lps = _hand_token_logprobs(model, tok, question, answer)
    return -sum(lps) / len(lps)


@torch.no_grad()
def _hand_greedy(model, tok, question: str, steps: int) -> str:
    ids = tok(QA.format(q=question), add_special_tokens=True)["input_ids"]
    new: list[int] = []
    for _ in range(steps):
        nxt = int(model(torch.tensor([ids + new])).logits[0, -1].argmax())
        if nxt == tok.eos_token_id:
            break
        new.append(nxt)
    return tok.decode(new, skip_special_tokens=True).strip()


def test_avg_answer_losses_match_direct_forward_passes(model_and_tok):
    model, tok = model_and_tok
    exs = [Example(e.prompt, w) for e in BASE_FORGET for w in [e.response, *e.meta["perturbed_answer"]]]
    ours = T.avg_answer_losses(model, tok, exs, "qa", batch_size=4)
    hand = [_hand_loss(model, tok, e.prompt, e.response) for e in exs]
    assert ours == pytest.approx(hand, rel=1e-5)
    # min-k leaves EOS out
    lps = _hand_token_logprobs(model, tok, exs[0].prompt, exs[0].response, eos=False)
    k = max(1, int(len(lps) * 0.4))
    assert T.mia_scores(model, tok, exs[:1], "qa", "min_k", 0.4)[0] == pytest.approx(-np.mean(sorted(lps)[:k]), rel=1e-5)


def _grounded(items, model, tok, steps):
    """The items with answers built on the model's own greedy answer g (answer "g as
    the record says", paraphrase g): ROUGE, truth ratios and hence model utility are
    then non-zero even for a random model, so the checks below check something."""
    out = []
    for e in items:
        g = _hand_greedy(model, tok, e.prompt, steps)
        assert T.rouge_tokens(g), "the greedy answer needs a word for ROUGE to be non-zero"
        meta = {**e.meta, "answer": f"{g} as the record says"}
        if "paraphrased_answer" in meta:
            meta["paraphrased_answer"] = g
        out.append(Example(e.prompt, meta["answer"], meta))
    return out


def test_tofu_metrics_match_hand_computation(model_and_tok):
    model, tok = model_and_tok
    steps = 6
    FORGET, RETAIN, REAL, WORLD = (_grounded(s, model, tok, steps) for s in (BASE_FORGET, BASE_RETAIN, BASE_REAL, BASE_WORLD))
    retain_ratios = [1e6, 2e6]  # far above any ratio of this model: D = 1, p = 2 / C(4, 2)
    out = T.tofu_metrics(
        model, tok, {"forget": FORGET, "retain": RETAIN, "real_authors": REAL, "world_facts": WORLD}, "qa",
        retain_truth_ratios=retain_ratios, holdout=HOLDOUT, retain_mia_auc=0.6, mia_attack="loss",
        max_new_tokens=steps, batch_size=1,
    )
    L = lambda e, a: _hand_loss(model, tok, e.prompt, a)  # noqa: E731
    P = lambda e, a: math.exp(-L(e, a))  # noqa: E731

    def ratios(items, correct_key):
        rs = []
        for e in items:
            wrong = math.exp(-np.mean([L(e, w) for w in e.meta["perturbed_answer"]]))  # geometric mean
            rs.append(wrong / (P(e, e.meta[correct_key]) + 1e-10))
        return rs

    def rouge(items):
        return np.mean([T.rouge_l_recall(_hand_greedy(model, tok, e.prompt, steps), e.meta["answer"]) for e in items])

    fr = ratios(FORGET, "paraphrased_answer")
    assert out["per_item"]["forget_truth_ratio"] == pytest.approx(fr, rel=1e-4)
    assert out["forget_truth_ratio"] == pytest.approx(np.mean([min(r, 1 / r) for r in fr]), rel=1e-4)
    assert out["forget_Q_A_Prob"] == pytest.approx(np.mean([P(e, e.meta["answer"]) for e in FORGET]), rel=1e-4)
    assert out["forget_Q_A_PARA_Prob"] == pytest.approx(np.mean([P(e, e.meta["paraphrased_answer"]) for e in FORGET]), rel=1e-4)
    assert out["forget_Q_A_PERT_Prob"] == pytest.approx(
        np.mean([np.mean([P(e, w) for w in e.meta["perturbed_answer"]]) for e in FORGET]), rel=1e-4)
    assert out["forget_Q_A_ROUGE"] == pytest.approx(rouge(FORGET))
    assert out["forget_quality"] == pytest.approx(2 / 6) and out["forget_ks_statistic"] == 1.0

    expected = {
        "retain_Q_A_Prob": np.mean([P(e, e.meta["answer"]) for e in RETAIN]),
        "retain_Truth_Ratio": np.mean([max(0.0, 1 - r) for r in ratios(RETAIN, "paraphrased_answer")]),
        "retain_Q_A_ROUGE": rouge(RETAIN),
    }
    for prefix, items in (("ra", REAL), ("wf", WORLD)):
        probs = []
        for e in items:
            pc = P(e, e.meta["answer"])
            probs.append(pc / (pc + sum(P(e, w) for w in e.meta["perturbed_answer"]) + 1e-10))
        expected[f"{prefix}_Q_A_Prob_normalised"] = np.mean(probs)
        expected[f"{prefix}_Truth_Ratio"] = np.mean([max(0.0, 1 - r) for r in ratios(items, "answer")])
        expected[f"{prefix}_Q_A_ROUGE"] = rouge(items)
        expected[f"{prefix}_Q_A_Prob"] = np.mean([P(e, e.meta["answer"]) for e in items])
    for key, value in expected.items():
        assert out[key] == pytest.approx(value, rel=1e-4, abs=1e-12), key
    nine = [expected[c] for c in T.MODEL_UTILITY_COLUMNS]
    assert min(nine) > 0 and 0 < out["forget_Q_A_ROUGE"] < 1
    hm = len(nine) / sum(1 / v for v in nine)
    assert out["model_utility"] == pytest.approx(hm, rel=1e-4, abs=1e-12)

    forget_losses = [L(e, e.meta["answer"]) for e in FORGET]
    holdout_losses = [L(e, e.response) for e in HOLDOUT]
    pairs = [(1.0 if h > f else 0.5 if h == f else 0.0) for f in forget_losses for h in holdout_losses]
    auc = sum(pairs) / len(pairs)
    assert out["mia_auc"] == pytest.approx(auc)
    assert out["privleak"] == pytest.approx(((1 - auc) - 0.4) / 0.4 * 100, rel=1e-6)


def test_tofu_metrics_partial_sets_and_errors(model_and_tok):
    model, tok = model_and_tok
    out = T.tofu_metrics(model, tok, {"forget": BASE_FORGET}, "qa", max_new_tokens=2)
    assert out["model_utility"] is None and out["forget_quality"] is None and out["privleak"] is None
    assert "retain_Q_A_Prob" not in out and len(out["per_item"]["forget_truth_ratio"]) == 2
    with pytest.raises(DataError, match="no perturbed answers"):
        T.tofu_metrics(model, tok, {"real_authors": [Example("q?", "a")]}, "qa", max_new_tokens=2)
    with pytest.raises(DataError, match="unknown TOFU set"):
        T.tofu_metrics(model, tok, {"holdout": HOLDOUT}, "qa")
