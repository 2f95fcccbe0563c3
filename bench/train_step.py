"""Benchmark one training step per method: unlearnkit's step against the published reference loop's.

For every method and every mode (LoRA, full-parameter) it times ``--steps``
training steps (after one warm-up step) of forward + backward + gradient
clipping + AdamW, on the same real forget and retain examples, done two ways:

- ``ours``: the library's own step. The method's loss (``get_method(name)()``)
  through a :class:`~unlearnkit.methods.LossContext`, logits asked only at the
  positions that predict answer tokens (``logits_to_keep``), batches padded to
  their own longest member (``collate``), random-mismatch rows drawn as the
  trainer draws them (each forget question its own ``num_random`` answers), and
  the library's :class:`~unlearnkit.train.Reference` for KL terms: under LoRA
  the same weights with the adapter disabled, in full mode a frozen deep copy.
- ``reference``: what the published loop (Yao et al.'s llm_unlearn code, used
  by arXiv 2405.15152) does. (a) KL against a second full model, even under
  LoRA; (b) full-vocabulary logits at every position; (c) the KL pass calls
  both models with the collator's labels and averages the KL over every
  position of the padded batch, padding included; (d) every batch padded by
  ``DataCollatorForLanguageModeling(tokenizer, mlm=False)`` to its longest
  member; (e) one set of K random answers drawn per step and shared by every
  forget question of the batch. The forget, random and retain-NLL terms are the
  library's formulas on those logits, masked to answer tokens.
- ``reference-fixedpad``: an extra row, not the reference: the same as
  ``reference`` but every batch then widened to a fixed ``--max-length``. The
  published loop does not do this with OPT's tokenizer (it has no model max
  length, so ``padding="max_length"`` pads nothing); it shows what fixed
  padding would cost. Not in the default cases.

What is and is not identical between the ways: on the same examples the
reference's forget NLL, random NLL, retain NLL and its KL masked to answer
tokens equal the library's values (each reference case checks this after
training, untimed, on its warm-up examples: ``loss_check``). The loss the
reference backpropagates uses the KL over every position instead, which is a
different number (it is zero at the first step, where both models agree). The
random rows differ between the ways by design, (e), so the random NLL of a
timed step differs; ``ga`` has neither term and its losses are equal in every
case. The reference's own batch order (an unbucketed loader) is not copied:
both ways see the library's length-bucketed batches, which pads less than the
published loop would.

Throughput is real (non-pad) tokens of the model's input batches per second,
the same count the trainer logs. Peak memory is, on CUDA,
``torch.cuda.max_memory_allocated`` from just before the model is built; on the
CPU, the rise of the kernel's resident-set high-water mark (VmHWM, reset with
``/proc/self/clear_refs``) over the resident size before the model is built.
Either way it holds weights, the second model, gradients, optimizer state and
activations. Every case runs in its own fresh subprocess so peaks do not mix.

Examples::

    python bench/train_step.py --shape tiny --methods ga,llm_unlearn --max-length 128
    python bench/train_step.py --model smollm2-135m-instruct --methods ga,llm_unlearn \\
        --steps 3 --batch-size 2 --max-length 256 --threads 1 --out smollm2.json
    python bench/train_step.py --shape opt-1.3b --device cuda --methods ga,llm_unlearn --out opt-1.3b.json  # GPU
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data"

# Randomly initialised OPT shapes (hidden size, layers, heads); the FFN is 4x hidden.
SHAPES = {
    "tiny": (64, 2, 4),
    "opt-1.3b": (2048, 24, 32),
    "opt-2.7b": (2560, 32, 32),
}
CASES = ("ours-lora", "ours-full", "reference-lora", "reference-full",
         "reference-fixedpad-lora", "reference-fixedpad-full")
DEFAULT_CASES = CASES[:4]
CASE_TEXT = {
    "ours-lora": "LoRA; KL reference = same weights, adapter disabled; answer-only logits; padded to the longest",
    "ours-full": "full-parameter; KL reference = frozen deep copy; answer-only logits; padded to the longest",
    "reference-lora": "published loop, LoRA: second full model for KL; every-position logits and KL; "
                      "LM-collator padding; shared random set",
    "reference-full": "published loop, full-parameter: as reference-lora (the second model is the frozen copy)",
    "reference-fixedpad-lora": "EXTRA, not the reference: reference-lora widened to --max-length",
    "reference-fixedpad-full": "EXTRA, not the reference: reference-full widened to --max-length",
}
RESULT_PREFIX = "BENCH-RESULT "


# --------------------------------------------------------------------------- memory


def _status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_hwm() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


# --------------------------------------------------------------------------- one case (child process)


def _build_model(spec: dict, tokenizer, dtype, device):
    import torch

    if spec["shape"]:
        from transformers import AutoModelForCausalLM, OPTConfig

        from unlearnkit.data.tokenize import pad_id_of

        hidden, layers, heads = SHAPES[spec["shape"]]
        config = OPTConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            ffn_dim=4 * hidden,
            word_embed_proj_dim=hidden,
            max_position_embeddings=2048,
            # Dropout off so that the two ways give the same loss values (a check);
            # it is a small cost, and the same in every case.
            dropout=0.0,
            attention_dropout=0.0,
            pad_token_id=pad_id_of(tokenizer),
            bos_token_id=tokenizer.bos_token_id if tokenizer.bos_token_id is not None else 0,
            eos_token_id=tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0,
        )
        torch.manual_seed(0)
        with torch.device(device):  # initialise directly on the device (no CPU detour for 2.7b)
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        return model
    from unlearnkit.models import ModelConfig, load_model

    model, _ = load_model(
        ModelConfig(name=spec["model"], dtype=spec["dtype"], device=device), for_training=True
    )
    return model


def _frozen_copy(model):
    frozen = copy.deepcopy(model)
    frozen.eval()
    for p in frozen.parameters():
        p.requires_grad_(False)
    return frozen


# --------------------------------------------------------------------------- batches


def shared_random_examples(questions, pool: list[str], k: int, rng: random.Random) -> list:
    """The published loop's random-mismatch rows: ``k`` answers drawn once per
    step (without replacement) and paired with EVERY forget question of the batch.

    Rows are question-major: the rows of question i are ``i*k .. i*k + k - 1``.
    """
    from unlearnkit.data.types import Example

    answers = rng.sample(pool, k)
    return [Example(q.prompt, a) for q in questions for a in answers]


def step_examples(spec: dict, tokenizer, method_cls, method) -> list[dict]:
    """The tokenised examples of every step (warm-up first), for both ways.

    The forget and retain examples of a step are the same in every case (the
    library's length-bucketed ``BatchStream`` picks them); the random-mismatch
    rows differ by design: ``random_ours`` as the trainer draws them,
    ``random_reference`` as the published loop does (one shared set of K).
    """
    from unlearnkit.data.spec import DataSourceConfig, load_examples
    from unlearnkit.data.tokenize import BatchStream, tokenize_examples
    from unlearnkit.training.batches import mismatched_examples

    data_dir = Path(spec["data_dir"])
    n_steps = spec["steps"] + 1
    bs = spec["batch_size"]
    need = max(64, n_steps * bs * 2)
    forget = load_examples(
        DataSourceConfig(spec=f"pku_saferlhf:{data_dir / 'pku_saferlhf' / 'pku_saferlhf_5k.json'}", subset="unsafe",
                         limit=need, seed=0),
        tokenizer,
    )
    retain = load_examples(
        DataSourceConfig(spec=f"truthfulqa:{data_dir / 'truthfulqa' / 'TruthfulQA.csv'}", answers="best", limit=need,
                         seed=0),
        tokenizer,
    )
    template, max_length = "qa", spec["max_length"]
    forget_tok = tokenize_examples(forget, tokenizer, template, max_length)
    retain_tok = tokenize_examples(retain, tokenizer, template, max_length)
    if getattr(method_cls, "random_pool", "random") == "forget":
        pool = [e.response for e in forget]
    else:
        pool = [e.response for e in retain if e.prompt.strip() and e.response.strip()]
    forget_stream = BatchStream([len(t) for t in forget_tok], bs, 42)
    retain_stream = BatchStream([len(t) for t in retain_tok], bs, 43)
    needs = method.batch_needs
    steps = []
    for step in range(n_steps):
        idx = next(forget_stream)
        items: dict[str, list] = {}
        if "forget" in needs:
            items["forget"] = [forget_tok[i] for i in idx]
        if "retain" in needs:
            items["retain"] = [retain_tok[i] for i in next(retain_stream)]
        if "random" in needs:
            questions = [forget[i] for i in idx]
            rng = random.Random(f"42:random:{step}:0")
            ours = mismatched_examples(questions, pool, method.num_random, lambda j, q: rng)
            shared = shared_random_examples(questions, pool, method.num_random,
                                            random.Random(f"42:reference-random:{step}"))
            items["random_ours"] = tokenize_examples(ours, tokenizer, template, max_length)
            items["random_reference"] = tokenize_examples(shared, tokenizer, template, max_length)
        steps.append(items)
    return steps


def library_batch(items, pad_id: int) -> dict:
    """The library's batch: padded to its own longest member by ``collate``."""
    from unlearnkit.data.tokenize import collate

    return collate(items, pad_id)


def reference_batch(items, tokenizer, fixed_length: int | None = None) -> dict:
    """The published loop's batch: padded by ``DataCollatorForLanguageModeling(mlm=False)``.

    ``input_ids``, ``attention_mask`` and ``lm_labels`` are the collator's own
    output (longest member, the tokenizer's padding side, ``lm_labels`` = the
    input ids with every pad-id token set to -100). ``labels`` adds the
    library's answer mask on the same layout, so that the library's loss
    functions can read the reference's logits. With ``fixed_length`` the batch
    is then widened to that length (the ``reference-fixedpad`` rows only).
    """
    import torch
    from transformers import DataCollatorForLanguageModeling

    from unlearnkit.data.tokenize import IGNORE_INDEX, collate, pad_id_of

    collator = DataCollatorForLanguageModeling(tokenizer=tokenizer, mlm=False)
    out = collator([{"input_ids": list(it.input_ids)} for it in items])
    batch = {
        "input_ids": out["input_ids"],
        "attention_mask": out["attention_mask"],
        "lm_labels": out["labels"],
        "labels": collate(items, pad_id_of(tokenizer), padding_side=tokenizer.padding_side)["labels"],
    }
    if fixed_length is not None:
        extra = fixed_length - batch["input_ids"].shape[1]
        if extra > 0:
            rows = batch["input_ids"].shape[0]
            fill = {"input_ids": pad_id_of(tokenizer), "attention_mask": 0, "lm_labels": IGNORE_INDEX,
                    "labels": IGNORE_INDEX}
            left = tokenizer.padding_side == "left"
            for key, value in fill.items():
                pad = torch.full((rows, extra), value, dtype=torch.long)
                batch[key] = torch.cat([pad, batch[key]] if left else [batch[key], pad], 1)
    return batch


# --------------------------------------------------------------------------- the two ways' losses


def every_position_logits(model, batch: dict, lm_labels: bool = False):
    """Logits at EVERY position, full vocabulary, as the published loop asks for them.

    With ``lm_labels`` the collator's labels are passed too, as the loop's KL
    pass does, so transformers also computes its own language-modelling loss.
    """
    kwargs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    if lm_labels:
        kwargs["labels"] = batch["lm_labels"]
    return model(**kwargs).logits


def answer_view(logits, labels):
    """Every-position logits seen as the library's AnswerLogits (answer tokens masked in).

    Positions 0..T-2 predict tokens 1..T-1. The library's loss functions then
    take the log-softmax at all T-1 positions (as the loop's cross-entropy does)
    and keep only answer tokens, so their values equal the library's own.
    """
    from unlearnkit.data.tokenize import IGNORE_INDEX
    from unlearnkit.losses import AnswerLogits

    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    return AnswerLogits(logits=logits[:, :-1].float(), targets=targets.masked_fill(~mask, 0), mask=mask)


def kl_every_position(reference_logits, current_logits):
    """KL(reference || current) averaged over all B*T positions, padding included.

    The published loop averages over every position of the padded batch (and
    over the last one, which predicts nothing). It writes the term as the cross
    entropy -sum p log(q + 1e-12), which is this KL plus the entropy of the
    frozen model's distribution: a constant, so the gradient is the same.
    """
    import torch

    from unlearnkit.losses import kl_reference_current

    every = torch.ones(current_logits.shape[:2], dtype=torch.bool, device=current_logits.device)
    return kl_reference_current(reference_logits, current_logits, every)


REFERENCE_METHODS = ("ga", "gradient_difference", "llm_unlearn")


def reference_way_loss(method, model, second_model, batches: dict, comparable: bool = False):
    """One loss of the published loop (Yao et al.'s llm_unlearn) for ``method``.

    ``batches`` come from :func:`reference_batch` (``random`` is the shared
    set). Every model call returns full-vocabulary logits at every position.
    The forget, random and retain-NLL terms are the library's formulas on those
    logits, masked to answer tokens, so their values equal the library's step
    on the same examples. The KL term is the loop's: ``second_model`` (a full
    frozen model, even under LoRA) against the trained one, both called with
    the collator's labels, averaged over every position, padding included.

    Returns ``(loss, terms)``; the loss is the one to backpropagate. With
    ``comparable`` the terms also hold ``retain_kl`` (the same logits, masked
    to answer tokens as the library masks them) and ``loss_as_library`` (the
    total with that KL), for the equality check; it is left out of timed steps.
    """
    import torch

    from unlearnkit.losses import kl_reference_current, mean_nll

    name, p = method.name, method.params
    if name not in REFERENCE_METHODS:
        raise ValueError(f"the published loop has no counterpart for {name!r}; it covers {REFERENCE_METHODS}")

    def nll(batch):
        return mean_nll(answer_view(every_position_logits(model, batch), batch["labels"]))

    forget_nll = nll(batches["forget"])
    terms = {"forget_nll": forget_nll.item()}
    if name == "ga":
        total = -forget_nll
        return total, ({**terms, "loss_as_library": total.item()} if comparable else terms)
    if name == "gradient_difference":
        retain_nll = nll(batches["retain"])
        terms["retain_nll"] = retain_nll.item()
        total = -p.forget_weight * forget_nll + p.retain_weight * retain_nll
        return total, ({**terms, "loss_as_library": total.item()} if comparable else terms)
    total = -p.forget_weight * forget_nll
    if p.random_weight > 0:
        random_nll = nll(batches["random"])
        terms["random_nll"] = random_nll.item()
        total = total + p.random_weight * random_nll
    retain = batches["retain"]
    current = every_position_logits(model, retain, lm_labels=True)
    with torch.no_grad():
        frozen = every_position_logits(second_model, retain, lm_labels=True)
    kl_all = kl_every_position(frozen, current)
    terms["retain_kl_every_position"] = kl_all.item()
    loss = total + p.retain_weight * kl_all
    if comparable:
        with torch.no_grad():
            cur, ref = answer_view(current, retain["labels"]), answer_view(frozen, retain["labels"])
            kl_answers = kl_reference_current(ref.logits, cur.logits, cur.mask)
        terms["retain_kl"] = kl_answers.item()
        terms["loss_as_library"] = (total + p.retain_weight * kl_answers).item()
    return loss, terms


def library_step_loss(method, model, reference_fn, batches: dict):
    """The library's own loss on ``batches`` (as the trainer computes it, one process)."""
    from unlearnkit.methods import LossContext

    ctx = LossContext(model=model, denominator=lambda mask: mask.sum().float(), reference=reference_fn)
    return method.loss(ctx, batches)


def loss_check(method, model, library_reference_fn, second_model, items: dict, tokenizer) -> dict:
    """Both ways on the same examples (no gradient): the terms that must be equal.

    ``items`` are one step's tokenised examples; the random rows are the shared
    set, batched by each way's own collation.
    """
    import torch

    from unlearnkit.data.tokenize import pad_id_of

    kinds = {k: v for k, v in items.items() if k in ("forget", "retain")}
    if "random_reference" in items:
        kinds["random"] = items["random_reference"]
    pad_id = pad_id_of(tokenizer)
    with torch.no_grad():
        lib_loss, lib = library_step_loss(method, model, library_reference_fn,
                                          {k: library_batch(v, pad_id) for k, v in kinds.items()})
        _, ref = reference_way_loss(method, model, second_model,
                                    {k: reference_batch(v, tokenizer) for k, v in kinds.items()}, comparable=True)
    lib = {**lib, "loss": float(lib_loss)}
    ref = {**ref, "loss": ref["loss_as_library"]}
    shared = [k for k in lib if k in ref]
    return {
        "library": lib,
        "reference": ref,
        "max_abs_diff": max(abs(lib[k] - ref[k]) for k in shared),
        "compared": shared,
    }


# --------------------------------------------------------------------------- one case (child process)


def run_case(spec: dict) -> dict:
    import torch

    torch.set_num_threads(spec["threads"])
    from unlearnkit.config import RunConfig
    from unlearnkit.data.tokenize import pad_id_of
    from unlearnkit.losses import answer_logits
    from unlearnkit.methods import get_method
    from unlearnkit.models import LoraConfig, apply_lora, load_tokenizer, resolve_dtype
    from unlearnkit.train import Reference

    device = spec["device"]
    cuda = device == "cuda"
    dtype = resolve_dtype(spec["dtype"], device)
    impl, mode = spec["case"].rsplit("-", 1)
    lora = mode == "lora"
    method_cls = get_method(spec["method"])
    method = method_cls()
    if impl != "ours" and method.name not in REFERENCE_METHODS:
        raise ValueError(f"no published-loop counterpart for {method.name!r} (only {', '.join(REFERENCE_METHODS)})")
    negates = bool(getattr(method_cls, "negates", False))
    # As the trainer: a reference model for KL terms, or for a full-parameter negation.
    wants_reference = method_cls.needs_reference or (negates and not lora)

    tokenizer = load_tokenizer(spec["tokenizer"])
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    pad_id = pad_id_of(tokenizer)
    steps = step_examples(spec, tokenizer, method_cls, method)
    torch.manual_seed(0)
    batches = []
    for s in steps:
        if impl == "ours":
            kinds = {("random" if k == "random_ours" else k): v for k, v in s.items() if k != "random_reference"}
            batches.append({k: library_batch(v, pad_id) for k, v in kinds.items()})
        else:
            kinds = {("random" if k == "random_reference" else k): v for k, v in s.items() if k != "random_ours"}
            fixed = spec["max_length"] if impl == "reference-fixedpad" else None
            batches.append({k: reference_batch(v, tokenizer, fixed) for k, v in kinds.items()})

    # ---- memory baseline: everything above (imports, data) is not counted
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_bytes = torch.cuda.memory_allocated()
        hwm_reset = True
    else:
        hwm_reset = _reset_hwm()
        base_bytes = (_status_kib("VmRSS") or 0) * 1024

    model = _build_model(spec, tokenizer, dtype, device)
    total_params = sum(p.numel() for p in model.parameters())
    second_model = None
    if impl != "ours" and wants_reference:
        second_model = _frozen_copy(model)  # the published loop's second full model, even under LoRA
    if lora:
        torch.manual_seed(1)
        model = apply_lora(model, LoraConfig(enabled=True, r=spec["lora_r"], alpha=2.0 * spec["lora_r"], dropout=0.0,
                                             target_modules=spec["lora_targets"]))
    if spec["gradient_checkpointing"]:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if lora:
            model.enable_input_require_grads()
    model.train()
    ours_ref = Reference(model, RunConfig()) if impl == "ours" and wants_reference else None
    if impl == "ours":
        def step_loss(b):
            return library_step_loss(method, model, (lambda x: ours_ref(model, x)) if ours_ref else None, b)
    else:
        def step_loss(b):
            return reference_way_loss(method, model, second_model, b)
    params = [p for p in model.parameters() if p.requires_grad]
    trainable = sum(p.numel() for p in params)
    optimizer = torch.optim.AdamW(params, lr=1e-5)

    losses, times, real_tokens, positions = [], [], [], []
    for cpu_batches in batches:
        b = {k: {n: t.to(device) for n, t in v.items()} for k, v in cpu_batches.items()}
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss, terms = step_loss(b)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss_value = float(loss.item())
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        losses.append({"loss": loss_value, **terms})
        real_tokens.append(sum(int(v["attention_mask"].sum()) for v in cpu_batches.values()))
        positions.append(sum(int(v["input_ids"].numel()) for v in cpu_batches.values()))

    if cuda:
        peak = torch.cuda.max_memory_allocated() - base_bytes
    else:
        peak = ((_status_kib("VmHWM") or 0) * 1024) - base_bytes

    check = None
    if impl != "ours":
        # After training (the model has moved, so the KL is not trivially zero):
        # the library's step and the reference way on the warm-up step's examples.
        if wants_reference and lora:
            lib_ref = Reference(model, RunConfig())  # the library's LoRA anchor: adapter disabled

            def lib_ref_fn(x):
                return lib_ref(model, x)
        elif wants_reference:
            def lib_ref_fn(x):  # what the library's Reference does with its frozen copy
                with torch.no_grad():
                    return answer_logits(second_model, x)
        else:
            lib_ref_fn = None
        check = loss_check(method, model, lib_ref_fn, second_model, steps[0], tokenizer)

    timed = times[1:]  # the first step is the warm-up
    seconds = sum(timed)
    tokens = sum(real_tokens[1:])
    return {
        "method": spec["method"],
        "case": spec["case"],
        "steps": len(timed),
        "seconds": seconds,
        "seconds_per_step": seconds / max(len(timed), 1),
        "median_seconds_per_step": statistics.median(timed) if timed else None,
        "step_seconds": timed,
        "warmup_seconds": times[0],
        "real_tokens_per_step": tokens / max(len(timed), 1),
        "positions_per_step": sum(positions[1:]) / max(len(timed), 1),
        "tokens_per_second": tokens / seconds if seconds > 0 else None,
        "peak_bytes": peak,
        "peak_mib": peak / 2**20,
        "hwm_reset": hwm_reset,
        "params": total_params,
        "trainable_params": trainable,
        "second_model_copy": second_model is not None or (impl == "ours" and wants_reference and not lora),
        "warmup_loss": losses[0],
        "losses": losses,
        "loss_check": check,
    }


# --------------------------------------------------------------------------- driver (parent process)


def machine() -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    out = {"cpu": cpu, "cpu_count": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__}
    try:
        import transformers

        out["transformers"] = transformers.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
    return out


def _run_child(spec: dict, timeout: float) -> dict:
    env = dict(os.environ)
    threads = str(spec["threads"])
    env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(ROOT), env.get("PYTHONPATH", "")] if p)
    try:
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--_case", json.dumps(spec)],
                              capture_output=True, text=True, env=env, timeout=timeout, cwd=str(ROOT))
    except subprocess.TimeoutExpired:
        return {"method": spec["method"], "case": spec["case"], "error": f"timed out after {timeout:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"method": spec["method"], "case": spec["case"], "error": f"exit {proc.returncode}: " + " | ".join(tail)}


def _ratio(a, b):
    return a / b if a is not None and b not in (None, 0) else None


def ratios(results: list[dict]) -> dict:
    """Ratios against the faithful reference of the same run (and the extra fixed-pad rows, apart)."""
    by = {(r["method"], r["case"]): r for r in results if "error" not in r}
    out = {}
    for method in dict.fromkeys(r["method"] for r in results):
        get = lambda case, key: by.get((method, case), {}).get(key)  # noqa: E731
        q = {}
        for mode in ("lora", "full"):
            ours, ref, fixed = f"ours-{mode}", f"reference-{mode}", f"reference-fixedpad-{mode}"
            q[f"{mode}_throughput_ours_vs_reference"] = _ratio(get(ours, "tokens_per_second"),
                                                               get(ref, "tokens_per_second"))
            q[f"{mode}_median_step_speedup_vs_reference"] = _ratio(get(ref, "median_seconds_per_step"),
                                                                   get(ours, "median_seconds_per_step"))
            q[f"{mode}_peak_ours_vs_reference"] = _ratio(get(ours, "peak_bytes"), get(ref, "peak_bytes"))
            q[f"{mode}_throughput_ours_vs_fixedpad_extra"] = _ratio(get(ours, "tokens_per_second"),
                                                                    get(fixed, "tokens_per_second"))
            q[f"{mode}_peak_ours_vs_fixedpad_extra"] = _ratio(get(ours, "peak_bytes"), get(fixed, "peak_bytes"))
        q["lora_peak_vs_full_peak_ours"] = _ratio(get("ours-lora", "peak_bytes"), get("ours-full", "peak_bytes"))
        q["lora_ours_vs_full_reference_throughput"] = _ratio(get("ours-lora", "tokens_per_second"),
                                                             get("reference-full", "tokens_per_second"))
        q["lora_ours_vs_full_reference_peak"] = _ratio(get("ours-lora", "peak_bytes"),
                                                       get("reference-full", "peak_bytes"))
        checks = [r["loss_check"]["max_abs_diff"] for r in by.values()
                  if r["method"] == method and r.get("loss_check")]
        q["loss_check_max_abs_diff"] = max(checks) if checks else None
        out[method] = q
    return out


def _f(x, fmt="{:.2f}"):
    return "n/a" if x is None else fmt.format(x)


def _x(x):
    return "n/a" if x is None else f"{x:.2f}x"


def markdown(results: list[dict], rat: dict) -> str:
    lines = [
        "| method | case | real tokens/step | positions/step | median s/step | tokens/s | peak MiB | warm-up loss "
        "| loss check, max abs diff |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['method']} | {r['case']} | error: {r['error']} |  |  |  |  |  |  |")
            continue
        check = r.get("loss_check")
        lines.append(
            f"| {r['method']} | {r['case']} | {r['real_tokens_per_step']:.0f} | {r['positions_per_step']:.0f} | "
            f"{_f(r.get('median_seconds_per_step'))} | {_f(r['tokens_per_second'], '{:.1f}')} | {r['peak_mib']:.0f} | "
            f"{r['warmup_loss']['loss']:.4f} | {'-' if not check else format(check['max_abs_diff'], '.1e')} |"
        )
    lines += [
        "",
        "| method | mode | tokens/s, ours / reference | median step time, reference / ours "
        "| peak memory, ours / reference |",
        "|---|---|---:|---:|---:|",
    ]
    for method, q in rat.items():
        for mode in ("lora", "full"):
            lines.append(f"| {method} | {mode} | {_x(q[f'{mode}_throughput_ours_vs_reference'])} | "
                         f"{_x(q[f'{mode}_median_step_speedup_vs_reference'])} | "
                         f"{_x(q[f'{mode}_peak_ours_vs_reference'])} |")
    lines += [
        "",
        "| method | LoRA peak / full peak, ours | ours-lora / reference-full: tokens/s, peak "
        "| EXTRA fixed-pad rows: tokens/s ours / fixedpad, LoRA; full |",
        "|---|---:|---:|---:|",
    ]
    for method, q in rat.items():
        lines.append(
            f"| {method} | {_x(q['lora_peak_vs_full_peak_ours'])} | "
            f"{_x(q['lora_ours_vs_full_reference_throughput'])}, {_x(q['lora_ours_vs_full_reference_peak'])} | "
            f"{_x(q['lora_throughput_ours_vs_fixedpad_extra'])}; {_x(q['full_throughput_ours_vs_fixedpad_extra'])} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--model", default=None, help="a model spec for unlearnkit.models.load_model (default smollm2-135m-instruct)")
    src.add_argument("--shape", choices=sorted(SHAPES), default=None, help="a randomly initialised OPT of this shape")
    ap.add_argument("--tokenizer", default="smollm2-135m-instruct", help="tokenizer for --shape (default SmolLM2's)")
    ap.add_argument("--methods", default="ga,llm_unlearn",
                    help="ours cases: any method; reference cases: " + ",".join(REFERENCE_METHODS))
    ap.add_argument("--cases", default=",".join(DEFAULT_CASES),
                    help="a subset of " + ",".join(CASES) + " (the fixedpad rows are extras, not the reference)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per case (after one warm-up step)")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when available")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                    help="default: bfloat16 on a GPU with bf16, else float32 (as the trainer's 'auto')")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads in each case")
    ap.add_argument("--gradient-checkpointing", choices=["auto", "on", "off"], default="auto",
                    help="auto: on for cuda, off on the CPU (as the trainer); the same in every case")
    ap.add_argument("--lora-r", type=int, default=8)
    ap.add_argument("--lora-targets", default=None, help="comma list, or all-linear (default: the library's per-architecture targets)")
    ap.add_argument("--data-dir", default=str(DEFAULT_DATA))
    ap.add_argument("--case-timeout", type=float, default=1800.0)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--_case", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args._case:
        result = run_case(json.loads(args._case))
        print(RESULT_PREFIX + json.dumps(result), flush=True)
        return 0

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda, but torch sees no CUDA GPU")
    from unlearnkit.methods import get_method

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        get_method(m)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    bad = [c for c in cases if c not in CASES]
    if bad:
        ap.error(f"unknown case(s) {bad}; choose from {CASES}")
    model = None if args.shape else (args.model or "smollm2-135m-instruct")
    dtype = args.dtype or ("bfloat16" if device == "cuda" and torch.cuda.is_bf16_supported() else "float32")
    gc = args.gradient_checkpointing == "on" or (args.gradient_checkpointing == "auto" and device == "cuda")
    targets = None
    if args.lora_targets:
        targets = "all-linear" if args.lora_targets == "all-linear" else args.lora_targets.split(",")
    base = {
        "model": model, "shape": args.shape, "tokenizer": model or args.tokenizer, "steps": args.steps,
        "batch_size": args.batch_size, "max_length": args.max_length, "device": device, "dtype": dtype,
        "threads": args.threads, "gradient_checkpointing": gc, "lora_r": args.lora_r, "lora_targets": targets,
        "data_dir": args.data_dir,
    }
    what = f"shape {args.shape} (random OPT)" if args.shape else model
    print(f"# train-step benchmark: {what}, {device} {dtype}, batch {args.batch_size}, max_length {args.max_length}, "
          f"{args.steps} timed steps, {args.threads} thread(s), gradient checkpointing {'on' if gc else 'off'}",
          file=sys.stderr, flush=True)
    results = []
    started = time.time()
    for method in methods:
        for case in cases:
            if not case.startswith("ours") and method not in REFERENCE_METHODS:
                print(f"  {method:20s} {case:15s} skipped: the published loop has no counterpart", file=sys.stderr)
                continue
            t0 = time.time()
            r = _run_child({**base, "method": method, "case": case}, args.case_timeout)
            results.append(r)
            if "error" in r:
                print(f"  {method:20s} {case:15s} ERROR {r['error']}", file=sys.stderr, flush=True)
            else:
                print(f"  {method:20s} {case:15s} {_f(r['tokens_per_second'], '{:8.1f}')} tok/s  "
                      f"{r['peak_mib']:8.0f} MiB  ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
    rat = ratios(results)
    table = markdown(results, rat)
    print(table)
    if args.out:
        payload = {
            "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]) if argv is None else " ".join(argv),
            "settings": base,
            "cases": {c: CASE_TEXT[c] for c in cases},
            "machine": machine(),
            "wall_seconds": round(time.time() - started, 1),
            "results": results,
            "ratios": rat,
            "markdown": table,
        }
        Path(args.out).write_text(json.dumps(payload, indent=2))
        print(f"wrote {args.out}", file=sys.stderr)
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
