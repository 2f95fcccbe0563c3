"""Benchmark one training step per method: unlearnkit's way against the reference code's way.

For every method and every mode (LoRA, full-parameter) it times ``--steps``
training steps (after one warm-up step) of forward + backward + gradient
clipping + AdamW, on the same real batches, done two ways:

- ``ours``: the library's own step. The method's loss (``get_method(name)()``)
  through a :class:`~unlearnkit.methods.LossContext`, logits asked only at the
  positions that predict answer tokens (``logits_to_keep``), batches padded to
  their own longest member (``collate``, length-bucketed ``BatchStream``), and
  the library's :class:`~unlearnkit.train.Reference` for KL terms: under LoRA
  the same weights with the adapter disabled, in full mode a frozen deep copy.
- ``reference``: the way the papers' reference code does it. (a) KL against a
  second full copy of the model, even under LoRA; (b) full-vocabulary logits at
  every position (the model is called without ``logits_to_keep`` and the same
  losses are computed from all positions, masked to answer tokens, so the loss
  values are identical); (c) every batch padded to a fixed ``--max-length``.
  ``reference-full`` differs from ``ours-full`` by (b) and (c) only (both keep a
  frozen copy).

Throughput is real (non-pad) tokens of the model's input batches per second,
the same count the trainer logs. Peak memory is, on CUDA,
``torch.cuda.max_memory_allocated`` from just before the model is built; on the
CPU, the rise of the kernel's resident-set high-water mark (VmHWM, reset with
``/proc/self/clear_refs``) over the resident size before the model is built.
Either way it holds weights, the frozen copy, gradients, optimizer state and
activations. Every case runs in its own fresh subprocess so peaks do not mix.

Examples::

    python bench/train_step.py --shape tiny --methods ga,llm_unlearn --max-length 128
    python bench/train_step.py --model smollm2-135m-instruct --methods ga,llm_unlearn \\
        --steps 2 --batch-size 2 --max-length 256 --threads 1 --out smollm2.json
    python bench/train_step.py --shape opt-1.3b --device cuda --out opt-1.3b.json   # needs a GPU
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import json
import os
import platform
import random
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
CASES = ("ours-lora", "ours-full", "reference-lora", "reference-full")
CASE_TEXT = {
    "ours-lora": "LoRA; KL reference = same weights, adapter disabled; answer-only logits; dynamic padding",
    "ours-full": "full-parameter; KL reference = frozen deep copy; answer-only logits; dynamic padding",
    "reference-lora": "LoRA; KL against a second full model copy; logits at every position; padded to max_length",
    "reference-full": "full-parameter; frozen copy for KL; logits at every position; padded to max_length",
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


def _step_batches(spec: dict, tokenizer, method_cls, method):
    """The examples of every step (warm-up first), the same in every case."""
    from unlearnkit.data.spec import DataSourceConfig, load_examples
    from unlearnkit.data.tokenize import BatchStream, tokenize_example, tokenize_examples
    from unlearnkit.data.types import Example

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
    steps = []
    for step in range(n_steps):
        idx = next(forget_stream)
        items: dict[str, list] = {}
        if "forget" in method_cls.needs:
            items["forget"] = [forget_tok[i] for i in idx]
        if "retain" in method_cls.needs:
            items["retain"] = [retain_tok[i] for i in next(retain_stream)]
        if "random" in method_cls.needs:
            # As the trainer builds it: each forget question with num_random answers not its own.
            rng = random.Random(f"42:random:{step}:0")
            rows = []
            for i in idx:
                own = forget[i].response
                for _ in range(method.num_random):
                    for _attempt in range(16):
                        answer = pool[rng.randrange(len(pool))]
                        if answer != own:
                            break
                    rows.append(tokenize_example(Example(forget[i].prompt, answer), tokenizer, template, max_length))
            items["random"] = rows
        steps.append(items)
    return steps


def _collate(items, pad_id: int, fixed_length: int | None, device):
    import torch

    from unlearnkit.data.tokenize import IGNORE_INDEX, collate

    batch = collate(items, pad_id)
    if fixed_length is not None:
        extra = fixed_length - batch["input_ids"].shape[1]
        if extra > 0:
            rows = batch["input_ids"].shape[0]
            batch = {
                "input_ids": torch.cat([batch["input_ids"], torch.full((rows, extra), pad_id, dtype=torch.long)], 1),
                "attention_mask": torch.cat([batch["attention_mask"], torch.zeros((rows, extra), dtype=torch.long)], 1),
                "labels": torch.cat([batch["labels"], torch.full((rows, extra), IGNORE_INDEX, dtype=torch.long)], 1),
            }
    return {k: v.to(device) for k, v in batch.items()}


def _full_position_logits(model, batch):
    """The reference code's way: the model's logits at EVERY position, float32.

    Returned as an AnswerLogits over all T-1 predicting positions, with the mask
    on answer tokens, so the library's own loss functions compute the very same
    values, but pay for the vocabulary projection and the (log-)softmax at every
    prompt and padding position, as the reference code does.
    """
    from unlearnkit.data.tokenize import IGNORE_INDEX
    from unlearnkit.losses import AnswerLogits

    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    logits = logits[:, :-1].float()
    targets = batch["labels"][:, 1:]
    mask = targets != IGNORE_INDEX
    return AnswerLogits(logits=logits, targets=targets.masked_fill(~mask, 0), mask=mask)


def run_case(spec: dict) -> dict:
    import torch

    torch.set_num_threads(spec["threads"])
    from unlearnkit.config import RunConfig
    from unlearnkit.data.tokenize import pad_id_of
    from unlearnkit.methods import LossContext, get_method
    from unlearnkit.models import LoraConfig, apply_lora, load_tokenizer, resolve_dtype
    from unlearnkit.train import Reference

    device = spec["device"]
    cuda = device == "cuda"
    dtype = resolve_dtype(spec["dtype"], device)
    impl, mode = spec["case"].split("-")
    lora = mode == "lora"
    method_cls = get_method(spec["method"])
    method = method_cls()
    negates = bool(getattr(method_cls, "negates", False))
    # As the trainer: a reference model for KL terms, or for a full-parameter negation.
    wants_reference = method_cls.needs_reference or (negates and not lora)

    tokenizer = load_tokenizer(spec["tokenizer"])
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    pad_id = pad_id_of(tokenizer)
    steps = _step_batches(spec, tokenizer, method_cls, method)
    fixed = spec["max_length"] if impl == "reference" else None
    torch.manual_seed(0)
    batches = [{k: _collate(v, pad_id, fixed, "cpu") for k, v in s.items()} for s in steps]

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
    reference_copy = None
    if impl == "reference" and wants_reference:
        reference_copy = _frozen_copy(model)  # (a): a second full copy, even under LoRA
    if lora:
        torch.manual_seed(1)
        model = apply_lora(model, LoraConfig(enabled=True, r=spec["lora_r"], alpha=2.0 * spec["lora_r"], dropout=0.0,
                                             target_modules=spec["lora_targets"]))
    if spec["gradient_checkpointing"]:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if lora:
            model.enable_input_require_grads()
    model.train()
    if impl == "ours":
        ours_ref = Reference(model, RunConfig()) if wants_reference else None
        ctx_cls = LossContext
        reference_fn = (lambda b: ours_ref(model, b)) if ours_ref is not None else None
    else:
        class FullLogitsContext(LossContext):
            def logits(self, batch):
                return _full_position_logits(self.model, batch)

        ctx_cls = FullLogitsContext

        def reference_fn(b):
            with torch.no_grad():
                return _full_position_logits(reference_copy, b)

        if reference_copy is None:
            reference_fn = None
    params = [p for p in model.parameters() if p.requires_grad]
    trainable = sum(p.numel() for p in params)
    optimizer = torch.optim.AdamW(params, lr=1e-5)

    def denominator(mask):
        return mask.sum().to(torch.float32)

    losses, times, real_tokens, positions = [], [], [], []
    for step, cpu_batches in enumerate(batches):
        b = {k: {n: t.to(device) for n, t in v.items()} for k, v in cpu_batches.items()}
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        ctx = ctx_cls(model=model, denominator=denominator, reference=reference_fn, step=step)
        loss, terms = method.loss(ctx, b)
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
    timed = times[1:]  # the first step is the warm-up
    seconds = sum(timed)
    tokens = sum(real_tokens[1:])
    return {
        "method": spec["method"],
        "case": spec["case"],
        "steps": len(timed),
        "seconds": seconds,
        "seconds_per_step": seconds / max(len(timed), 1),
        "warmup_seconds": times[0],
        "real_tokens_per_step": tokens / max(len(timed), 1),
        "positions_per_step": sum(positions[1:]) / max(len(timed), 1),
        "tokens_per_second": tokens / seconds if seconds > 0 else None,
        "peak_bytes": peak,
        "peak_mib": peak / 2**20,
        "hwm_reset": hwm_reset,
        "params": total_params,
        "trainable_params": trainable,
        "second_model_copy": reference_copy is not None or (impl == "ours" and wants_reference and not lora),
        "warmup_loss": losses[0],
        "losses": losses,
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
    by = {(r["method"], r["case"]): r for r in results if "error" not in r}
    out = {}
    for method in dict.fromkeys(r["method"] for r in results):
        get = lambda case, key: by.get((method, case), {}).get(key)  # noqa: E731
        out[method] = {
            "lora_throughput_ours_vs_reference": _ratio(get("ours-lora", "tokens_per_second"),
                                                        get("reference-lora", "tokens_per_second")),
            "lora_peak_vs_full_peak_ours": _ratio(get("ours-lora", "peak_bytes"), get("ours-full", "peak_bytes")),
            "full_throughput_ours_vs_reference": _ratio(get("ours-full", "tokens_per_second"),
                                                        get("reference-full", "tokens_per_second")),
            "lora_peak_ours_vs_reference": _ratio(get("ours-lora", "peak_bytes"), get("reference-lora", "peak_bytes")),
            "full_peak_ours_vs_reference": _ratio(get("ours-full", "peak_bytes"), get("reference-full", "peak_bytes")),
        }
        w = [r["warmup_loss"]["loss"] for c in CASES if (r := by.get((method, c)))]
        out[method]["warmup_loss_max_abs_diff"] = (max(w) - min(w)) if w else None
    return out


def _f(x, fmt="{:.2f}"):
    return "n/a" if x is None else fmt.format(x)


def _x(x):
    return "n/a" if x is None else f"{x:.2f}x"


def markdown(results: list[dict], rat: dict) -> str:
    lines = [
        "| method | case | real tokens/step | positions/step | s/step | tokens/s | peak MiB | warm-up loss |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['method']} | {r['case']} | error: {r['error']} |  |  |  |  |  |")
            continue
        lines.append(
            f"| {r['method']} | {r['case']} | {r['real_tokens_per_step']:.0f} | {r['positions_per_step']:.0f} | "
            f"{r['seconds_per_step']:.2f} | {_f(r['tokens_per_second'], '{:.1f}')} | {r['peak_mib']:.0f} | "
            f"{r['warmup_loss']['loss']:.4f} |"
        )
    lines += [
        "",
        "| method | LoRA throughput, ours / reference (target >= 1.5) | LoRA peak / full peak, ours (target <= 0.5) "
        "| full throughput, ours / reference | LoRA peak, ours / reference | full peak, ours / reference |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for method, q in rat.items():
        t1, m1 = q["lora_throughput_ours_vs_reference"], q["lora_peak_vs_full_peak_ours"]
        ok1 = "" if t1 is None else (" (met)" if t1 >= 1.5 else " (NOT met)")
        ok2 = "" if m1 is None else (" (met)" if m1 <= 0.5 else " (NOT met)")
        lines.append(
            f"| {method} | {_x(t1)}{ok1} | {_x(m1)}{ok2} | {_x(q['full_throughput_ours_vs_reference'])} | "
            f"{_x(q['lora_peak_ours_vs_reference'])} | {_x(q['full_peak_ours_vs_reference'])} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--model", default=None, help="a model spec for unlearnkit.models.load_model (default smollm2-135m-instruct)")
    src.add_argument("--shape", choices=sorted(SHAPES), default=None, help="a randomly initialised OPT of this shape")
    ap.add_argument("--tokenizer", default="smollm2-135m-instruct", help="tokenizer for --shape (default SmolLM2's)")
    ap.add_argument("--methods", default="ga,gradient_difference,llm_unlearn,sku")
    ap.add_argument("--cases", default=",".join(CASES), help="a subset of " + ",".join(CASES))
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
