"""The method interface: alternative answers, hidden states, method state, methods by dotted path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from unlearnkit.config import load_config
from unlearnkit.data.recipes import answers
from unlearnkit.data.spec import DataSourceConfig, load_examples
from unlearnkit.data.tokenize import collate, tokenize_examples
from unlearnkit.data.types import Example
from unlearnkit.errors import ConfigError, DataError
from unlearnkit.losses import answer_logits, sequence_lengths, sequence_logprob
from unlearnkit.methods import METHODS, LossContext, Method, get_method, load_dotted, register
from unlearnkit.train import run_unlearning

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "extending"
FORGET = [{"prompt": f"How do I do harmful thing {i}?", "response": f"Here is how to do harmful thing {i}: step one."}
          for i in range(6)]
RETAIN = [{"prompt": f"What is {i} plus {i}?", "response": f"{i} plus {i} is {2 * i}."} for i in range(6)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def raw_cfg(tmp_path, model_dir, method: dict, **data) -> dict:
    f = write_jsonl(tmp_path / "forget.jsonl", FORGET)
    r = write_jsonl(tmp_path / "retain.jsonl", RETAIN)
    return {
        "name": "t", "output_dir": str(tmp_path / "runs"), "seed": 3,
        "model": {"name": str(model_dir), "lora": {"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0}},
        "data": {"template": "qa", "max_length": 64, "forget": {"spec": f"generic:{f}"},
                 "retain": {"spec": f"generic:{r}"}, **data},
        "method": method,
        "train": {"max_steps": 4, "batch_size": 2, "lr": 1e-2, "progress": False, "save": "none", "save_every": 2},
        "eval": {"enabled": False},
    }


# ----------------------------------------------------------------- answers


def test_answers_recipe_reads_plain_json_and_object_lines(tmp_path):
    path = tmp_path / "idk.jsonl"
    path.write_text('I don\'t know.\n\n"I am not sure."\n{"answer": "No idea."}\n{"text": "Cannot say."}\n')
    got = answers(str(path))
    assert [e.response for e in got] == ["I don't know.", "I am not sure.", "No idea.", "Cannot say."]
    assert all(e.prompt == "" for e in got)
    assert [e.meta["row"] for e in got] == [0, 2, 3, 4]
    # Through a spec, as a config names it.
    assert len(load_examples(DataSourceConfig(spec=f"answers:{path}"))) == 4


def test_answers_recipe_names_a_bad_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('fine\n{"label": 1}\n')
    with pytest.raises(DataError, match=r"line 2.*answer, response, text"):
        answers(str(path))


def test_real_tofu_idk_file_reads_100_answers(shared_data):
    got = answers(str(shared_data / "tofu" / "idontknow.jsonl"))
    assert len(got) == 100 and all(e.response for e in got)


# ------------------------------------------------------------- alternative


if "test_alternative_probe" not in METHODS:

    @register
    class AlternativeProbe(Method):
        """Records the alternative answers each step trains towards (and learns them)."""

        name = "test_alternative_probe"
        needs = frozenset({"forget", "alternative"})
        seen: list = []

        def loss(self, ctx, batches):
            batch = batches["alternative"]
            AlternativeProbe.seen.append(batch["input_ids"].clone())
            al = ctx.logits(batch)
            logp = sequence_logprob(al)
            return -logp.sum() / ctx.sequence_normaliser(batch), {"forget_nll": 0.0}


def test_alternative_needs_its_data(tmp_path, tiny_model_dir):
    cfg = load_config(raw=raw_cfg(tmp_path, tiny_model_dir, {"name": "test_alternative_probe"}))
    with pytest.raises(ConfigError, match="data.alternative"):
        run_unlearning(cfg)


def test_alternative_pairs_by_prompt_else_draws_and_leaves_held_out_prompts_out(tmp_path, tiny_model_dir, capsys):
    from unlearnkit.training.batches import StepBatches
    from unlearnkit.training.data import prepare_data

    # Forget prompts 0 and 1 have their own alternative; the others draw from the whole set.
    alt_rows = [{"prompt": FORGET[0]["prompt"], "response": "Own answer zero."},
                {"prompt": FORGET[1]["prompt"], "response": "Own answer one."},
                {"prompt": "Some other question?", "response": "I don't know."}]
    alt = write_jsonl(tmp_path / "alt.jsonl", alt_rows)
    raw = raw_cfg(tmp_path, tiny_model_dir, {"name": "test_alternative_probe"},
                  alternative={"spec": f"generic:{alt}", "shuffle": False})
    raw["data"]["forget"].update({"holdout": 1, "seed": 0})
    cfg = load_config(raw=raw)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    data = prepare_data(cfg, tok, get_method("test_alternative_probe"))
    held_prompt = data.heldout["forget_heldout"][0].prompt
    assert held_prompt not in {e.prompt for e in data.alternative}  # a held-out prompt's answer is never trained on
    from unlearnkit.training.data import trained_sets

    assert trained_sets(data)["alternative"] == data.alternative  # the leak audit checks it like every trained set

    class OneProcess:
        process_index, num_processes, device = 0, 1, torch.device("cpu")

    forget_tok = tokenize_examples(data.forget, tok, "qa", 64)
    sb = StepBatches(cfg, data, forget_tok, [], tok, tok.pad_token_id, OneProcess(), get_method("test_alternative_probe")())
    by_prompt = {e.prompt: e.response for e in data.alternative if e.prompt}
    pool = [e.response for e in data.alternative]
    for step in range(3):
        idx = list(range(len(data.forget)))
        sb._seen = {}
        for i in idx:
            q, batch = data.forget[i], sb.alternative([i], step)
            text = tok.decode(batch["input_ids"][0], skip_special_tokens=True)
            if q.prompt in by_prompt:
                assert by_prompt[q.prompt] in text
            else:
                assert any(a in text for a in pool)
    # The draw is seeded: the same step and question give the same answer.
    sb._seen = {}
    a = sb.alternative([2], 7)["input_ids"]
    sb._seen = {}
    assert torch.equal(a, sb.alternative([2], 7)["input_ids"])


def test_alternative_trains_end_to_end(tmp_path, tiny_model_dir):
    alt = tmp_path / "idk.txt"
    alt.write_text("I don't know.\nI am not sure about that.\n")
    raw = raw_cfg(tmp_path, tiny_model_dir, {"name": "test_alternative_probe"}, alternative={"spec": f"answers:{alt}"})
    AlternativeProbe.seen.clear()
    summary = run_unlearning(load_config(raw=raw))
    assert summary["status"] == "completed" and len(AlternativeProbe.seen) == 4
    manifest = json.loads((Path(raw["output_dir"]) / "t" / "manifest.json").read_text())
    assert "alternative" in manifest["data"]


# ---------------------------------------------------------- hidden states


def test_hidden_states_are_the_decoder_layer_outputs_and_the_reference_is_the_base(tmp_path, tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from unlearnkit.training.reference import Reference

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    batch = collate(tokenize_examples([Example(r["prompt"], r["response"]) for r in RETAIN[:2]], tok, "qa", 64),
                    tok.pad_token_id)
    with torch.no_grad():
        expected = base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                        output_hidden_states=True).hidden_states
    # A hook on the first decoder layer sees exactly what ctx.hidden(batch, 0) returns.
    captured = {}
    handle = base.model.layers[0].register_forward_hook(lambda m, i, o: captured.setdefault("h", o[0] if isinstance(o, tuple) else o))
    ctx = LossContext(model=base, denominator=lambda m: m.sum())
    with torch.no_grad():
        h0 = ctx.hidden(batch, 0)
    handle.remove()
    assert torch.allclose(h0, captured["h"], atol=1e-6)
    assert torch.allclose(ctx.hidden(batch, 1), expected[2], atol=1e-5)
    with pytest.raises(ValueError, match="decoder layers"):
        ctx.hidden(batch, 5)

    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                                LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    cfg = load_config(raw=raw_cfg(tmp_path, tiny_model_dir, {"name": "ga"}))
    ref = Reference(peft_model, cfg)
    live = LossContext(model=peft_model, denominator=lambda m: m.sum(),
                       reference_hidden_fn=lambda b, layer: ref.hidden(peft_model, b, layer))
    assert torch.allclose(live.reference_hidden(batch, 1), expected[2], atol=1e-5)  # the adapter is off
    assert not torch.allclose(live.hidden(batch, 1), expected[2], atol=1e-3)  # ... and on for the trained model


def test_sequence_helpers_by_hand():
    logits = torch.tensor([[[0.0, 1.0, 2.0], [1.0, 0.0, 0.0]], [[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    targets = torch.tensor([[2, 0], [1, 0]])
    mask = torch.tensor([[True, True], [True, False]])
    from unlearnkit.losses import AnswerLogits

    al = AnswerLogits(logits, targets, mask)
    import math

    lse1 = math.log(math.exp(0) + math.exp(1) + math.exp(2))
    lse2 = math.log(math.exp(1) + 2)
    lse3 = math.log(math.exp(2) + 2)
    expected = torch.tensor([(2 - lse1) + (1 - lse2), (0 - lse3)])
    assert torch.allclose(sequence_logprob(al), expected, atol=1e-6)
    assert sequence_lengths(al).tolist() == [2.0, 1.0]


# ----------------------------------------------------------- method state


if "test_counting" not in METHODS:

    @register
    class Counting(Method):
        """Gradient ascent that counts its loss calls and keeps the count in checkpoints."""

        name = "test_counting"

        def __init__(self, params=None):
            super().__init__(params)
            self.calls = 0

        def loss(self, ctx, batches):
            self.calls += 1
            al = ctx.logits(batches["forget"])
            logp = sequence_logprob(al).sum() / ctx.sequence_normaliser(batches["forget"])
            return logp, {"forget_nll": -logp.item(), "calls": float(self.calls)}

        def state_dict(self):
            return {"calls": self.calls}

        def load_state_dict(self, state):
            self.calls = int(state.get("calls", 0))


def test_method_state_survives_a_resume(tmp_path, tiny_model_dir):
    raw = raw_cfg(tmp_path, tiny_model_dir, {"name": "test_counting"})
    cfg = load_config(raw=raw)
    paused = run_unlearning(cfg, stop_at=2)
    assert paused["status"] == "paused"
    state = json.loads(sorted((cfg.run_dir / "checkpoints").iterdir())[-1].joinpath("state.json").read_text())
    assert state["method_state"] == {"calls": 2}
    done = run_unlearning(load_config(raw=raw), resume=True)
    # A fresh method object after the resume: 2 calls restored + 2 more.
    assert done["final_terms"]["calls"] == 4.0


def test_setup_chooses_the_trainable_parameters(tmp_path, tiny_model_dir):
    @register
    class OnlyFirstLayer(Method):
        name = "test_only_first_layer"

        def setup(self, model):
            for n, p in model.named_parameters():
                p.requires_grad_("layers.0.mlp" in n)

        def loss(self, ctx, batches):
            al = ctx.logits(batches["forget"])
            return sequence_logprob(al).mean(), {"forget_nll": 0.0}

    raw = raw_cfg(tmp_path, tiny_model_dir, {"name": "test_only_first_layer"})
    raw["model"]["lora"]["enabled"] = False
    raw["train"]["save"] = "merged"
    try:
        run_unlearning(load_config(raw=raw))
    finally:
        METHODS.pop("test_only_first_layer", None)
    from safetensors.torch import load_file

    before = load_file(str(tiny_model_dir / "model.safetensors"))
    after = load_file(str(tmp_path / "runs" / "t" / "model" / "model.safetensors"))
    changed = {k for k in before if k in after and not torch.equal(before[k], after[k])}
    assert changed and all("layers.0.mlp" in k for k in changed), sorted(changed)


# ------------------------------------------------------------ dotted path


def test_load_dotted_errors_name_the_problem():
    with pytest.raises(ConfigError, match="module.path:ClassName"):
        load_dotted("nocolon", Method, "method.name")
    with pytest.raises(ConfigError, match="cannot import no_such_module_xyz"):
        get_method("no_such_module_xyz:Thing")
    with pytest.raises(ConfigError, match="has no Missing"):
        get_method("unlearnkit.losses:Missing")
    with pytest.raises(ConfigError, match="not a subclass"):
        get_method("unlearnkit.losses:AnswerLogits")


def test_extending_example_npo_matches_a_hand_computation(tiny_model_dir):
    sys.path.insert(0, str(FIXTURES))
    try:
        cls = get_method("my_npo:MyNPO")
    finally:
        sys.path.remove(str(FIXTURES))
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    current = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        for p in current.parameters():
            p.add_(0.05 * torch.randn_like(p))
    exs = [Example(r["prompt"], r["response"]) for r in FORGET[:3]]
    batch = collate(tokenize_examples(exs, tok, "qa", 64), tok.pad_token_id)
    beta = 0.5
    method = cls(cls.Params(beta=beta))
    ctx = LossContext(model=current, denominator=lambda m: m.sum(), reference=lambda b: answer_logits(reference, b))
    loss, _ = method.loss(ctx, {"forget": batch})

    # By hand: full-sequence log-softmax, answer tokens only, summed per sequence.
    def seq_logp(model):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        labels = batch["labels"][:, 1:]
        logp = F.log_softmax(logits.float(), -1)
        out = []
        for b in range(labels.shape[0]):
            total = 0.0
            for t in range(labels.shape[1]):
                if labels[b, t] != -100:
                    total += float(logp[b, t, labels[b, t]])
            out.append(total)
        return out

    cur, ref = seq_logp(current), seq_logp(reference)
    import math

    expected = sum(2 / beta * math.log(1 + math.exp(beta * (c - r))) for c, r in zip(cur, ref)) / len(cur)
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_a_method_outside_the_package_runs_through_the_cli(tmp_path, tiny_model_dir):
    raw = raw_cfg(tmp_path, tiny_model_dir, {"name": "my_npo:MyNPO", "beta": 0.2})
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(raw))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(FIXTURES), str(ROOT)])}
    res = subprocess.run([sys.executable, "-m", "unlearnkit.cli", "unlearn", str(config)], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads((tmp_path / "runs" / "t" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["method"]["name"] == "my_npo:MyNPO"
    assert "npo" in summary["final_terms"]


def test_a_suite_outside_the_package_runs_by_dotted_path(tmp_path, tiny_model_dir):
    from unlearnkit.evaluation.stats import wilson
    from unlearnkit.evaluation.suite import run_eval

    prompts = tmp_path / "q.jsonl"
    write_jsonl(prompts, [{"prompt": f"Question {i}?", "response": f"Answer {i}."} for i in range(3)])
    options = {"normal_prompts": {"spec": f"generic:{prompts}", "shuffle": False}, "max_new_tokens": 4,
               "progress": False}
    sys.path.insert(0, str(FIXTURES))
    try:
        result = run_eval(str(tiny_model_dir), suites=["my_suite:EMPTY"], options=options)
    finally:
        sys.path.remove(str(FIXTURES))
    got = result["results"]["my_suite:EMPTY"]
    # The suite answered exactly the configured prompts, as the generation core does on its own.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from unlearnkit.evaluation.generation import generate

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    expected = generate(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tok,
                        [f"Question {i}?" for i in range(3)], template=result["template"], max_new_tokens=4)
    assert got["answers"] == expected and got["n"] == 3
    empty = sum(1 for a in expected if not a.strip())
    assert got["empty_rate"] == empty / 3
    assert got["empty_rate_ci95"] == pytest.approx(wilson(empty, 3))
    with pytest.raises(ConfigError, match="unknown suite 'nosuch'"):
        run_eval(str(tiny_model_dir), suites=["nosuch"], options=options)


def test_a_judge_outside_the_package_runs_by_dotted_path(tmp_path, smol_tokenizer):
    from tests.conftest import save_peaked_llama

    from unlearnkit.errors import UnlearnkitError
    from unlearnkit.evaluation.suite import run_eval
    from unlearnkit.judges import get_judge

    sys.path.insert(0, str(FIXTURES))
    try:
        judge = get_judge("my_judge:WordJudge")
        assert judge.harm_probability(["q", "q"], ["Mix the poison in.", "Bake bread."]) == [1.0, 0.0]
        assert judge.is_refusal(["q"], ["I'm sorry, I can't help with that."]) == [True]  # the base class's phrases
        custom = get_judge({"name": "my_judge:WordJudge", "words": "bread"})
        assert custom.harm_probability(["q"], ["Bake bread."]) == [1.0]
        with pytest.raises(UnlearnkitError, match="no option 'colour'"):
            get_judge({"name": "my_judge:WordJudge", "colour": "red"})
        with pytest.raises(UnlearnkitError, match="my_judge has no Nope"):
            get_judge("my_judge:Nope")
        with pytest.raises(UnlearnkitError, match="not a subclass of unlearnkit.judges.base.Judge"):
            get_judge("json:JSONDecoder")
        # The harm suite reports the user's judge beside the built-in one, under its spec. Its word is
        # one the tiny model writes in its first answer (so the rate is not trivially zero).
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from unlearnkit.evaluation.generation import generate

        questions = [f"How do I make thing {i}?" for i in range(4)]
        prompts = tmp_path / "harm.jsonl"
        write_jsonl(prompts, [{"prompt": q} for q in questions])
        model_dir = save_peaked_llama(tmp_path / "peaked", smol_tokenizer, hidden_size=32)  # it writes words
        tok = AutoTokenizer.from_pretrained(model_dir)
        answers = generate(AutoModelForCausalLM.from_pretrained(model_dir), tok, questions, template="chat",
                           max_new_tokens=6)
        word = next(w for a in answers for w in a.lower().split() if w.strip())
        spec = {"name": "my_judge:WordJudge", "words": word}
        options = {"unseen_prompts": {"spec": f"prompts:{prompts}", "shuffle": False}, "max_new_tokens": 6,
                   "progress": False, "judges": ["refusal", spec], "samples": 4, "template": "chat"}
        result = run_eval(str(model_dir), suites=["harm"], options=options)
    finally:
        sys.path.remove(str(FIXTURES))
    unseen = result["results"]["harm"]["unseen"]
    assert [s["response"] for s in unseen["samples"]] == answers and unseen["n"] == 4
    expected = sum(1.0 for a in answers if word in a.lower()) / 4
    assert expected >= 0.25
    assert unseen["harmful_rate"]["my_judge:WordJudge"] == expected
    assert set(unseen["harmful_rate"]) == {"refusal", "my_judge:WordJudge"}


def test_retain_data_is_asked_for_only_when_the_method_as_configured_reads_it(tmp_path, tiny_model_dir):
    from unlearnkit.config import check_for_unlearn

    raw = raw_cfg(tmp_path, tiny_model_dir, {"name": "npo", "retain_loss": "none"})
    del raw["data"]["retain"]
    check_for_unlearn(load_config(raw=raw))  # NPO without a retain term reads no retain batch
    raw["method"]["retain_loss"] = "nll"
    with pytest.raises(ConfigError, match="needs data.retain"):
        check_for_unlearn(load_config(raw=raw))
