"""The training loop shared by every unlearning method.

One loop on ``accelerate``: the same code runs on a CPU, a GPU, or several
processes (``accelerate launch``). It guarantees what the reference code does
not: the step limit is exact, every forget example is seen (shuffled, reshuffled
each epoch), the early stop on the forget loss fires, a non-finite loss stops
the run with a checkpoint, and ``--resume`` continues the very same run.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch

from unlearnkit.config import RunConfig, dump_config
from unlearnkit.data.audit import audit, check_audit, prompt_key, write_sets
from unlearnkit.data.spec import DataSourceConfig, describe, load_examples, parse_spec, split_holdout
from unlearnkit.data.tokenize import (IGNORE_INDEX, BatchStream, TokenizedExample, collate, pad_id_of, tokenize_example,
                                     tokenize_set)
from unlearnkit.data.types import Example
from unlearnkit.errors import ConfigError, RunInterrupted, TrainingError
from unlearnkit.losses import AnswerLogits, answer_logits
from unlearnkit.methods import LossContext, Method, get_method
from unlearnkit.models import describe_source, is_peft, load_model, save_model
from unlearnkit.rundir import (
    MARKER,
    TMP_TAG,
    atomic_write_json,
    atomic_write_text,
    check_outputs,
    leftovers,
    manifest,
    read_marker,
    remove_leftovers,
    remove_stale_tmp_inside,
    save_figure,
    swap_in,
    temp_sibling,
    write_marker,
)

# Keys of the config that may change between a run and its resumption.
RESUMABLE_CHANGES = {("train", "max_steps"), ("train", "epochs"), ("train", "save_every"), ("train", "progress"),
                     ("train", "keep_checkpoints"), ("train", "report_to"), ("train", "push_to_hub"),
                     ("train", "hub_repo_id"), ("train", "hub_private")}


@dataclass
class TrainData:
    forget: list[Example]
    retain: list[Example]
    random_pool: list[str]
    heldout: dict[str, list[Example]] = field(default_factory=dict)
    descriptions: dict[str, dict] = field(default_factory=dict)
    audit: dict = field(default_factory=dict)


def _paired_safe(forget_cfg: DataSourceConfig, heldout: list[Example], tokenizer) -> list[Example]:
    """Safe answers to the held-out forget prompts (PKU-SafeRLHF), for selectivity.

    Every safe answer whose normalised prompt is a held-out prompt, from the
    whole file (deduplicated), so they come from the same held-out prompt groups.
    """
    keys = {prompt_key(e) for e in heldout}
    safe_cfg = forget_cfg.model_copy(update={"subset": "safe", "limit": None, "shuffle": False, "holdout": 0})
    return [e for e in load_examples(safe_cfg, tokenizer) if prompt_key(e) in keys]


def trained_sets(data: "TrainData") -> dict[str, list]:
    """Every set a run trains on, by name (what the leak audit checks held-out sets against)."""
    sets: dict[str, list] = {"forget": data.forget}
    if data.retain:
        sets["retain"] = data.retain
    if data.random_pool:
        sets["random_pool"] = [Example("", r) for r in data.random_pool]
    return sets


def prepare_data(cfg: RunConfig, tokenizer, method: type[Method]) -> TrainData:
    d = cfg.data
    if d.forget is None:
        raise ConfigError("data.forget is required: the examples to unlearn.")
    forget_all = load_examples(d.forget, tokenizer)
    forget, forget_held = split_holdout(forget_all, d.forget.holdout, d.forget.seed)
    data = TrainData(forget=list(forget), retain=[], random_pool=[])
    data.descriptions["forget"] = describe(forget)
    if forget_held:
        data.heldout["forget_heldout"] = list(forget_held)
        data.descriptions["forget_heldout"] = describe(forget_held)
        if d.forget.spec.startswith("pku_saferlhf:") or any("safe" in e.meta for e in forget_held[:1]):
            safe = _paired_safe(d.forget, forget_held, tokenizer)
            if safe:
                data.heldout["safe_heldout"] = safe
    sources = d.retain_sources
    if "retain" in method.needs and not sources:
        raise ConfigError(f"method {method.name} needs data.retain (normal data to keep).")
    for i, source in enumerate(sources):
        retain_all = load_examples(source, tokenizer)
        retain, retain_held = split_holdout(retain_all, source.holdout, source.seed)
        data.retain.extend(retain)
        # Each source is named by its recipe (retain_truthfulqa, retain_text).
        key = f"retain_{parse_spec(source.spec)[0] or i}"
        if key in data.descriptions:  # two sources of one recipe (two text corpora): number the later one
            key = f"{key}_{i}"
        data.descriptions[key] = describe(retain)
        if retain_held:
            data.heldout[f"{key}_heldout"] = list(retain_held)
            data.descriptions[f"{key}_heldout"] = describe(retain_held)
    if "random" in method.needs:
        if method.random_pool == "forget":
            data.random_pool = [e.response for e in data.forget]
        else:
            source = data.retain
            if d.random is not None:
                # The pool's held-out part is measured, never drawn as an answer.
                source, random_held = split_holdout(load_examples(d.random, tokenizer), d.random.holdout, d.random.seed)
                data.descriptions["random"] = describe(source)
                if random_held:
                    key = f"random_{parse_spec(d.random.spec)[0] or 'pool'}_heldout"
                    data.heldout[key] = list(random_held)
                    data.descriptions[key] = describe(random_held)
            # Answers to questions only: a raw text chunk is not an answer.
            data.random_pool = [e.response for e in source if e.prompt.strip() and e.response.strip()]
        if len(data.random_pool) < 2:
            raise ConfigError("the random-answer pool needs at least two non-empty answers (data.random or data.retain).")
    for name, ds in cfg.eval.nll.items():
        data.heldout[name] = list(load_examples(ds, tokenizer))
        data.descriptions[f"eval.{name}"] = describe(data.heldout[name])
    # The leak audit: no held-out set may share a prompt or response with a trained one.
    data.audit = audit(trained_sets(data), data.heldout)
    check_audit(data.audit, d.allow_overlap)
    return data


class Reference:
    """The original model, for KL terms.

    With LoRA it is the same weights with the adapter disabled (no second copy);
    in full-parameter mode a frozen deep copy made before training, optionally in
    another dtype or on another device. It always runs in eval mode without
    gradient, so its outputs never move.
    """

    def __init__(self, model, cfg: RunConfig, for_negation: bool = False):
        self.lora = is_peft(model)
        self.frozen = None
        # The original weights for stage 2 when the frozen copy is kept in a lower
        # precision than the trained weights (reference_dtype: bfloat16 with float32
        # weights): a copy in the weights' own dtype on the CPU, so that negation
        # computes from the true original (scale 0 returns it bit for bit).
        self.original: dict[str, torch.Tensor] | None = None
        if not self.lora:
            ref_dtype = None if cfg.train.reference_dtype == "same" else getattr(torch, cfg.train.reference_dtype)
            if for_negation and ref_dtype is not None and any(
                t.is_floating_point() and torch.finfo(ref_dtype).eps > torch.finfo(t.dtype).eps
                for t in model.state_dict().values()
            ):
                self.original = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            frozen = copy.deepcopy(model)
            if cfg.train.reference_dtype != "same":
                frozen = frozen.to(getattr(torch, cfg.train.reference_dtype))
            if cfg.train.reference_device:
                frozen = frozen.to(cfg.train.reference_device)
            frozen.eval()
            for p in frozen.parameters():
                p.requires_grad_(False)
            self.frozen = frozen

    def shard(self, acc) -> None:
        """Under FSDP, shard the frozen copy like the trained model (no full copy per process)."""
        from accelerate.utils import DistributedType

        if self.frozen is None or acc.distributed_type != DistributedType.FSDP:
            return
        self.frozen = acc.prepare_model(self.frozen, evaluation_mode=False)
        self.frozen.eval()

    def __call__(self, live_model, batch: dict) -> AnswerLogits:
        with torch.no_grad():
            if self.frozen is not None:
                device = next(self.frozen.parameters()).device
                moved = {k: v.to(device) for k, v in batch.items()}
                out = answer_logits(self.frozen, moved)
                target_device = batch["input_ids"].device
                return AnswerLogits(out.logits.to(target_device), out.targets.to(target_device), out.mask.to(target_device))
            was_training = live_model.training
            live_model.eval()  # no dropout in the anchor
            try:
                with live_model.disable_adapter():
                    return answer_logits(live_model, batch)
            finally:
                live_model.train(was_training)


def trainable_state(model) -> dict[str, torch.Tensor]:
    """Trainable parameters by name, one entry per shared storage (tied weights)."""
    seen: set[int] = set()
    out = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        ptr = p.data_ptr()
        if ptr in seen:
            continue
        seen.add(ptr)
        out[name] = p.detach().contiguous().cpu()
    return out


def _config_diff(a: dict, b: dict, prefix=()) -> list[tuple]:
    diffs = []
    for key in sorted(set(a) | set(b)):
        path = (*prefix, key)
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            diffs.extend(_config_diff(va, vb, path))
        elif va != vb:
            diffs.append(path)
    return diffs


class Trainer:
    def __init__(self, cfg: RunConfig, resume: bool = False, overwrite: bool = False, stop_at: int | None = None):
        self.cfg = cfg
        # Pause after this many steps with a checkpoint (the schedule still
        # targets max_steps), so that --resume continues the same run.
        self.stop_at = stop_at
        self.resume = resume
        self.overwrite = overwrite
        # The folder the run is finally found in, and the one it writes while it
        # runs (a temporary sibling for a fresh run, the run folder on --resume).
        self.final_dir = cfg.run_dir
        self.run_dir = cfg.run_dir
        self.method_cls = get_method(cfg.method["name"])
        self.method = self.method_cls(cfg.method_params())
        check_forget_stop(cfg)

    # ----------------------------------------------------------------- set-up
    def _accelerator(self):
        from accelerate import Accelerator

        mp = self.cfg.train.mixed_precision
        if mp == "auto":
            mp = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
        cpu = self.cfg.model.device == "cpu" or not torch.cuda.is_available()
        from unlearnkit import trackers

        acc = Accelerator(mixed_precision=mp, cpu=cpu, **trackers.accelerator_kwargs(self.cfg.train.report_to, self.run_dir))
        _warn_if_not_sharded(acc)
        from accelerate.utils import DistributedType

        if acc.distributed_type == DistributedType.DEEPSPEED and self.cfg.train.grad_accum > 1:
            # accelerate's DeepSpeed backward also steps the engine after every micro-batch
            # unless its own accumulation drives it; ours would step ga times per step.
            raise ConfigError("train.grad_accum > 1 is not supported under DeepSpeed; use grad_accum: 1 "
                              "(and a larger batch_size), or DDP / FSDP.")
        return acc

    def _inputs(self) -> list[tuple[str, Path]]:
        """Every local file or folder the run reads: the model and each data source."""
        cfg = self.cfg
        out: list[tuple[str, Path]] = []
        model_path = Path(cfg.model.name).expanduser()
        if model_path.exists():
            out.append(("input model", model_path))
        sources = {"data.forget": cfg.data.forget, "data.random": cfg.data.random}
        sources.update({f"data.retain[{i}]": ds for i, ds in enumerate(cfg.data.retain_sources)})
        sources.update({f"eval.nll.{k}": ds for k, ds in cfg.eval.nll.items()})
        for key, ds in sources.items():
            if ds is None:
                continue
            location = Path(parse_spec(ds.spec)[1]).expanduser()
            if location.exists():
                out.append((f"data file of {key}", location))
        return out

    def _check_run_dir(self) -> None:
        """Decide where the run writes, before anything is loaded or written.

        A fresh run (and ``--overwrite``) builds in a temporary sibling folder and
        swaps it in at the end; ``--resume`` continues in the existing run folder.
        """
        from unlearnkit.config import check_for_unlearn

        check_for_unlearn(self.cfg)  # data.forget and the method's data, before any folder is touched
        from unlearnkit.outputs import preflight

        preflight(self.cfg)  # trackers installed, hub reachable when the run will push
        final = self.final_dir
        out_root = final.parent
        if out_root.exists() and not out_root.is_dir():
            raise TrainingError(f"output_dir {out_root} is a file, not a folder; set output_dir to a folder.")
        if final.exists() and not final.is_dir():
            raise TrainingError(f"the run folder {final} is a file, not a folder; choose another name (--set name=...).")
        hint = "choose another output_dir or name (--set name=...)."
        check_outputs([("run folder", final), ("temporary run folder", temp_sibling(final))], self._inputs(), hint)
        self.adopt = None
        if self.resume:
            if not final.exists():
                # A fresh run killed after a checkpoint left its temporary folder: continue that one.
                self.adopt = resumable_leftover(final)
                if self.adopt is None:
                    raise TrainingError(f"--resume: there is no run folder {final} to resume (and no checkpoint of an "
                                        "interrupted run beside it); start the run without --resume.")
                self.run_dir = self.adopt
            marker = read_marker(self.run_dir)
            legacy = (self.run_dir / "config.yaml").is_file() and (self.run_dir / "manifest.json").is_file()
            if marker is None and not legacy:
                raise TrainingError(f"--resume: {self.run_dir} was not made by unlearnkit (it has no {MARKER}); "
                                    "there is nothing to resume in it.")
            if marker is not None and marker.get("kind") != "run":
                raise TrainingError(f"--resume: {self.run_dir} holds an unlearnkit {marker.get('kind')} output, not a run.")
            done = (self.run_dir / "summary.json").exists()
            if not self.checkpoints() and not done:
                raise TrainingError(f"--resume: {self.run_dir} has no checkpoint to resume from.")
            saved = self.run_dir / "config.yaml"
            if saved.exists():
                import yaml

                old = yaml.safe_load(saved.read_text())
                new = self.cfg.model_dump(mode="json")
                diffs = [d for d in _config_diff(old, new) if d[:2] not in RESUMABLE_CHANGES]
                if diffs:
                    keys = ", ".join(".".join(map(str, d)) for d in diffs)
                    raise TrainingError(f"--resume: the config differs from the run's saved config in {keys}; resume with the same config.")
            return
        if final.exists() and any(final.iterdir()):
            marker = read_marker(final)
            if marker is None:
                raise TrainingError(
                    f"{final} already exists and is not an unlearnkit run folder (it has no {MARKER}); unlearnkit "
                    "never writes into or replaces a folder it did not create: move it away or choose another name "
                    "(--set name=...) or output_dir."
                )
            if marker.get("kind") != "run":
                raise TrainingError(f"{final} holds an unlearnkit {marker.get('kind')} output, not a run; choose another name.")
            done = (final / "summary.json").exists()
            if (done or _checkpoints_of(final)) and not self.overwrite:
                raise TrainingError(
                    f"run folder {final} already holds a run; use --resume to continue it, "
                    "--overwrite to replace it (once the new run has finished), or another name (--set name=...)."
                )
        self.run_dir = temp_sibling(final)

    def _prepare_folder(self) -> None:
        """Main process: clean what killed runs left, then create (or adopt) the folder to write."""
        final = self.final_dir
        if self.resume:
            if self.adopt is not None:
                os.rename(self.adopt, final)
                print(f"Continuing the interrupted run left in {self.adopt.name}; it is now {final}.", flush=True)
                self.run_dir = final
            remove_leftovers(final)
            remove_stale_tmp_inside(final)
            if read_marker(final) is None:
                write_marker(final, "run", name=self.cfg.name)
            return
        remove_leftovers(final, keep=self.run_dir)
        shutil.rmtree(self.run_dir, ignore_errors=True)
        self.run_dir.mkdir(parents=True)
        write_marker(self.run_dir, "run", name=self.cfg.name)

    def _finish_folder(self, ok: bool) -> str | None:
        """Main process, fresh runs: swap the finished folder in, or decide what an unfinished one leaves.

        Returns a sentence for the user when the run did not finish.
        """
        final, work = self.final_dir, self.run_dir
        if self.resume or work == final or not work.exists():
            return None
        if ok:
            swap_in(work, final)
            self.run_dir = final
            return None
        ckpts = _checkpoints_of(work)
        if ckpts and not final.exists():
            # Resumable: keep it as the run folder (it has no summary.json, so it does not look finished).
            swap_in(work, final)
            self.run_dir = final
            return f"the run stopped after its checkpoint {ckpts[-1].name} in {final}; continue it with --resume."
        shutil.rmtree(work, ignore_errors=True)
        if final.exists():
            return f"nothing of this run was kept; the earlier run in {final} is unchanged."
        return "the run stopped before its first checkpoint, so nothing was kept; run it again to start over."

    def checkpoints(self) -> list[Path]:
        return _checkpoints_of(self.run_dir)

    # ------------------------------------------------------------------- run
    def run(self) -> dict:
        cfg = self.cfg
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        self._check_run_dir()
        acc = self._accelerator()
        self.acc = acc
        if acc.is_main_process:
            self._prepare_folder()
        acc.wait_for_everyone()
        if self.adopt is not None:
            self.run_dir = self.final_dir  # every process: the main one has moved the folder there
        from unlearnkit import trackers

        try:
            result = self._run()
        except BaseException as exc:
            trackers.finish(acc, self.cfg)
            note = self._finish_folder(ok=False) if acc.is_main_process else None
            if isinstance(exc, KeyboardInterrupt):
                raise RunInterrupted(f"interrupted; {note or _resume_note(self)}") from None
            if note:
                print(f"note: {note}", flush=True)
            raise
        trackers.finish(acc, self.cfg)
        if acc.is_main_process:
            self._finish_folder(ok=True)
            from unlearnkit.outputs import publish

            publish(self.cfg, result)
        acc.wait_for_everyone()
        return result

    def _run(self) -> dict:
        cfg, acc = self.cfg, self.acc
        main = acc.is_main_process
        _seed_everything(cfg.seed)

        model, tokenizer = load_model(cfg.model, for_training=True)
        self.tokenizer = tokenizer
        self.pad_id = pad_id_of(tokenizer)
        data = prepare_data(cfg, tokenizer, self.method_cls)
        self.data = data
        # Over-long examples follow data.truncation: never a prompt cut to a fragment, every cut counted.
        self.truncation: dict[str, dict] = {}

        def tok(what: str, exs: list[Example]) -> tuple[list[Example], list[TokenizedExample]]:
            kept, toks, report = tokenize_set(exs, tokenizer, cfg.data.template, cfg.data.max_length,
                                              truncation=cfg.data.truncation, add_eos=self.method.add_eos, what=what)
            self.truncation[what.removeprefix("data.")] = report.as_dict()
            line = report.sentence(what)
            if line and main:
                print(line, flush=True)
            return kept, toks

        data.forget, self.forget_tok = tok("data.forget", data.forget)
        data.retain, self.retain_tok = tok("data.retain", data.retain) if data.retain else ([], [])
        if cfg.train.epochs is not None:
            # Epochs become an exact step count before the schedule is built; the
            # saved config.yaml records it (epochs: null), so a reload is the same run.
            per_epoch = math.ceil(len(self.forget_tok) / (cfg.train.batch_size * acc.num_processes))
            steps = max(1, math.ceil(cfg.train.epochs * per_epoch / cfg.train.grad_accum))
            if main:
                print(f"train.epochs={cfg.train.epochs:g}: {per_epoch} batches per epoch -> max_steps={steps}", flush=True)
            cfg.train = cfg.train.model_copy(update={"max_steps": steps, "epochs": None})

        if main:
            atomic_write_text(self.run_dir / "config.yaml", dump_config(cfg))
            if not self.resume or not (self.run_dir / "manifest.json").exists():
                atomic_write_json(
                    self.run_dir / "manifest.json",
                    manifest(cfg.seed, f"{cfg.model.name} ({describe_source(cfg.model.name)})", data.descriptions,
                             {"method": cfg.method, "world_size": acc.num_processes, "truncation": self.truncation,
                              "overlap_audit": {"allow_overlap": cfg.data.allow_overlap, **data.audit},
                              "data_files": write_sets(self.run_dir / "data", {**trained_sets(data), **data.heldout})}),
                )

        from unlearnkit import trackers

        trackers.start(acc, cfg)
        if resolve_gradient_checkpointing(cfg.train.gradient_checkpointing, self.method, acc.device.type):
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if is_peft(model):
                model.enable_input_require_grads()

        # Negating methods in full-parameter mode need the original weights too.
        wants_reference = self.method_cls.needs_reference or (self.method_cls.negates and not is_peft(model))
        reference = Reference(model, cfg, for_negation=self.method_cls.negates) if wants_reference else None
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise TrainingError("the model has no trainable parameters.")
        optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        from transformers import get_scheduler

        scheduler = get_scheduler(
            cfg.train.scheduler, optimizer, num_warmup_steps=cfg.train.warmup_steps, num_training_steps=cfg.train.max_steps
        )
        model, optimizer = acc.prepare(model, optimizer)
        if reference is not None:
            reference.shard(acc)
        self.model, self.optimizer, self.scheduler, self.reference = model, optimizer, scheduler, reference

        world = acc.num_processes
        global_batch = cfg.train.batch_size * world
        self.forget_stream = BatchStream([len(t) for t in self.forget_tok], global_batch, cfg.seed)
        self.retain_stream = (
            BatchStream([len(t) for t in self.retain_tok], global_batch, cfg.seed + 1) if self.retain_tok else None
        )
        start_step = 0
        summary_prev = None
        if self.resume:
            start_step, summary_prev = self._load_checkpoint()

        before = self._evaluate("before") if cfg.eval.enabled and start_step == 0 else (summary_prev or {}).get("eval_before")
        result = self._loop(start_step, before)
        return result

    # ----------------------------------------------------------------- batches
    def _local(self, indices: list[int]) -> list[int]:
        # Each process takes its share of the global batch.
        return indices[self.acc.process_index :: self.acc.num_processes]

    def _batch(self, items: list[TokenizedExample], filler: TokenizedExample | None = None) -> dict:
        """A padded batch on the device.

        A process whose share of a global batch is empty (the last, short batch
        of an epoch: 5 examples, batch 2, 2 processes) gets ``filler`` with every
        label masked: it adds no answer token and no gradient, but it runs the
        same forward and backward passes, so the gradient all-reduce still meets
        every process.
        """
        if not items and filler is not None:
            items = [TokenizedExample(list(filler.input_ids), [IGNORE_INDEX] * len(filler.input_ids))]
        return {k: v.to(self.acc.device) for k, v in collate(items, self.pad_id).items()}

    def _random_batch(self, forget_idx: list[int], step: int, micro: int) -> dict:
        """Forget questions, each paired with ``num_random`` answers that are not its own.

        The answers drawn for a question depend on the step and the question (and
        how often it already came up in this step), not on how the step is split
        into micro-batches or processes: every split trains on the same pairs.
        """
        cfg = self.cfg
        if micro == 0 or not hasattr(self, "_random_seen"):
            self._random_seen: dict[int, int] = {}
        pool = self.data.random_pool
        examples = []
        for i in forget_idx:
            occurrence = self._random_seen.get(i, 0)
            self._random_seen[i] = occurrence + 1
            rng = random.Random(f"{cfg.seed}:random:{step}:{i}:{occurrence}")
            own = self.data.forget[i].response
            for _ in range(self.method.num_random):
                for _attempt in range(16):
                    answer = pool[rng.randrange(len(pool))]
                    if answer != own:
                        break
                examples.append(Example(self.data.forget[i].prompt, answer))
        # The forget prompt fits (the set was tokenised under data.truncation); a long drawn answer loses its tail.
        tok = lambda e: tokenize_example(e, self.tokenizer, cfg.data.template, cfg.data.max_length,  # noqa: E731
                                         truncation="answer_first")
        local = [tok(examples[j]) for j in self._local(list(range(len(examples))))]
        return self._batch(local, filler=None if local else tok(examples[0]))

    def _denominator(self, mask: torch.Tensor) -> torch.Tensor:
        # For batches without an attached normaliser (not built by the loop).
        count = mask.sum().to(torch.float32)
        if self.acc.num_processes == 1:
            return count
        total = self.acc.reduce(count.detach().clone(), reduction="sum")
        return total / self.acc.num_processes

    def _step_batches(self, step: int, micro: int) -> dict[str, dict]:
        needs = self.method.batch_needs
        forget_idx = next(self.forget_stream)
        batches = {}
        if "forget" in needs:
            items = [self.forget_tok[i] for i in self._local(forget_idx)]
            if not self.method.forget_eos_is_target:
                items = [_without_final_eos(t, self.tokenizer.eos_token_id) for t in items]
            batches["forget"] = self._batch(items, filler=self.forget_tok[forget_idx[0]])
        if "retain" in needs:
            retain_idx = next(self.retain_stream)
            batches["retain"] = self._batch([self.retain_tok[i] for i in self._local(retain_idx)],
                                            filler=self.retain_tok[retain_idx[0]])
        if "random" in needs:
            batches["random"] = self._random_batch(forget_idx, step, micro)
        return batches

    def _attach_normalisers(self, micro_batches: list[dict[str, dict]]) -> None:
        """Give each batch the normaliser of its kind over the whole optimizer step.

        The answer tokens of each kind (forget, retain, random) are counted over
        every micro-batch and every process; each part divides by that count over
        ``micro-batches x processes`` (see :mod:`unlearnkit.losses`).
        """
        kinds = sorted({k for batches in micro_batches for k in batches})
        if not kinds:
            return
        counts = [float(sum(int((b[k]["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in micro_batches)) for k in kinds]
        world = self.acc.num_processes
        local = torch.tensor(counts, dtype=torch.float64 if self.acc.device.type == "cpu" else torch.float32,
                             device=self.acc.device)
        total = self.acc.reduce(local, reduction="sum") if world > 1 else local
        parts = len(micro_batches) * world
        for batches in micro_batches:
            for j, k in enumerate(kinds):
                batches[k]["normaliser"] = (total[j] / parts).to(torch.float32)

    def _global_stats(self, ctx_args: dict, micro_batches: list[dict[str, dict]]) -> dict[str, float]:
        """The step-wide values of the method's hinge / clamp statistics (one pass without gradient)."""
        sums: dict[str, float] = {}
        with torch.no_grad():
            for batches in micro_batches:
                with self.acc.autocast():
                    stats = self.method.global_stats(LossContext(**ctx_args), batches)
                for k, v in stats.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
        parts = len(micro_batches) * self.acc.num_processes
        return {k: _sum_across(self.acc, v) / parts for k, v in sorted(sums.items())}

    def _forward_backward(self, step: int, micro_batches: list[dict[str, dict]]):
        """Every micro-batch's loss and backward pass; returns (finite, loss, terms).

        Whether a loss is finite is agreed by all processes BEFORE its backward
        pass, so a NaN on one process stops every process at the same point
        (none is left waiting in a gradient all-reduce).
        """
        acc, model = self.acc, self.model
        ga = len(micro_batches)
        unwrapped = acc.unwrap_model(model)
        ctx_args = dict(model=model, denominator=self._denominator,
                        reference=(lambda b: self.reference(unwrapped, b)) if self.reference else None, step=step)
        self._attach_normalisers(micro_batches)
        extras: dict = {}
        if self.method.needs_global_stats and ga * acc.num_processes > 1:
            extras["global"] = self._global_stats(ctx_args, micro_batches)
        terms_acc: dict[str, float] = {}
        total_loss = 0.0
        for micro, batches in enumerate(micro_batches):
            ctx = LossContext(**ctx_args, extras=extras)
            sync = acc.no_sync(model) if (micro < ga - 1 and acc.num_processes > 1) else nullcontext()
            with sync:
                with acc.autocast():
                    loss, terms = self.method.loss(ctx, batches)
                if not _all_true(acc, bool(torch.isfinite(loss.detach()).all())):
                    return False, float(loss.item()), dict(terms)
                acc.backward(loss / ga)
            total_loss += float(loss.item()) / ga
            for k, v in terms.items():
                terms_acc[k] = terms_acc.get(k, 0.0) + v / ga
        return True, total_loss, terms_acc

    # -------------------------------------------------------------------- loop
    def _loop(self, start_step: int, before: dict | None) -> dict:
        cfg, acc, model = self.cfg, self.acc, self.model
        main = acc.is_main_process
        log_path = self.run_dir / "log.jsonl"
        ga = cfg.train.grad_accum
        model.train()
        from tqdm.auto import tqdm

        from unlearnkit import trackers
        from unlearnkit.console import show_progress

        bar = tqdm(
            total=cfg.train.max_steps, initial=start_step, desc=f"{self.method_cls.name}", unit="step",
            disable=not (main and show_progress(cfg.train.progress)), dynamic_ncols=True,
        )
        status, reason = "completed", f"reached max_steps={cfg.train.max_steps}"
        step = start_step
        t0 = time.time()
        tokens_seen = 0
        last_terms: dict[str, float] = {}
        while step < cfg.train.max_steps:
            micro_batches = [self._step_batches(step, micro) for micro in range(ga)]
            for batches in micro_batches:
                # Tokens of the rows that carry answer labels (a process's masked filler row is not data).
                tokens_seen += sum(int(b["attention_mask"][(b["labels"] != IGNORE_INDEX).any(dim=1)].sum())
                                   for b in batches.values())
            finite, total_loss, terms_acc = self._forward_backward(step, micro_batches)
            if not finite:
                self.optimizer.zero_grad(set_to_none=True)
                status, reason = "stopped", f"non-finite loss ({total_loss}) at step {step + 1}; the update was not applied"
                last_terms = terms_acc
                if main:
                    _append_jsonl(log_path, {"step": step + 1, "loss": total_loss, **terms_acc, "event": "non-finite loss"})
                break
            grad_norm = None
            if cfg.train.max_grad_norm:
                grad_norm = float(acc.clip_grad_norm_(model.parameters(), cfg.train.max_grad_norm))
            lr_used = float(self.optimizer.param_groups[0]["lr"])  # the rate of this update, not the next one's
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            step += 1
            terms_acc = {k: _mean_across(acc, v) for k, v in terms_acc.items()}
            last_terms = terms_acc
            record = {"step": step, "loss": _mean_across(acc, total_loss), **terms_acc,
                      "lr": lr_used, "grad_norm": grad_norm,
                      "elapsed_s": round(time.time() - t0, 3)}
            if main and step % cfg.train.log_every == 0:
                _append_jsonl(log_path, record)
            if step % cfg.train.log_every == 0:
                trackers.log_step(acc, cfg, record)
            bar.update(1)
            bar.set_postfix({k: f"{v:.3f}" for k, v in terms_acc.items()})
            forget_loss = terms_acc.get(self.method_cls.forget_term)
            if cfg.train.max_forget_loss is not None and forget_loss is not None and forget_loss >= cfg.train.max_forget_loss:
                status = "stopped"
                reason = f"forget loss {forget_loss:.4f} reached max_forget_loss={cfg.train.max_forget_loss} at step {step}"
                break
            if cfg.train.save_every and step % cfg.train.save_every == 0 and step < cfg.train.max_steps:
                self._save_checkpoint(step, before)
            if self.stop_at is not None and step >= self.stop_at and step < cfg.train.max_steps:
                status, reason = "paused", f"paused at step {step} of {cfg.train.max_steps}; continue with --resume"
                break
        bar.close()
        elapsed = time.time() - t0
        # A checkpoint of where the run ended, so that it can be inspected or resumed.
        self._save_checkpoint(step, before)
        if status == "paused":
            bar.write(reason)
            return {"status": status, "reason": reason, "steps": step}
        final_model = acc.unwrap_model(model)
        if self.method_cls.negates and main:
            # Keep the trained (e.g. harmful) model, then build the unlearned one from it.
            harmful_dir = self.run_dir / ("harmful_adapter" if is_peft(final_model) else "harmful")
            save_model(final_model, self.tokenizer, harmful_dir, merge=False)
        # A run stopped by a non-finite loss is kept as it was, not negated.
        if self.method_cls.negates and not reason.startswith("non-finite"):
            final_model = self.method.finalize(final_model, self.reference)
            final_model.eval()
            self.model = final_model
        after = self._evaluate("after") if cfg.eval.enabled else None
        summary = {
            "name": cfg.name,
            "method": cfg.method,
            "status": status,
            "reason": reason,
            "steps": step,
            "max_steps": cfg.train.max_steps,
            "world_size": acc.num_processes,
            "final_terms": last_terms,
            "train_seconds": round(elapsed, 2),
            "tokens_per_second": round(tokens_seen * acc.num_processes / max(elapsed, 1e-9), 1),
            "eval_before": before,
            "eval_after": after,
            "eval_change": _relative_change(before, after, cfg.seed),
            "truncation": self.truncation,
            "model_path": None,
        }
        if main:
            if cfg.train.save != "none":
                as_adapter = cfg.train.save == "adapter" and is_peft(final_model)
                out = self.run_dir / ("adapter" if as_adapter else "model")
                save_model(final_model, self.tokenizer, out, merge=not as_adapter)
                summary["model_path"] = str(self.final_dir / out.name)
            atomic_write_json(self.run_dir / "summary.json", summary)
            try:
                plot_losses(log_path, self.run_dir / "loss_curves.png")
            except Exception as exc:  # a plot must never lose a finished run
                print(f"warning: could not draw loss curves: {exc}")
            from unlearnkit.outputs import write_run_outputs

            write_run_outputs(self.run_dir)  # model cards, report.html
        trackers.log_summary(acc, cfg, summary)
        acc.wait_for_everyone()
        return summary

    # ------------------------------------------------------------ evaluation
    def _evaluate(self, when: str) -> dict | None:
        if not self.data.heldout:
            return None
        from unlearnkit.evaluation.likelihood import answer_nll

        result = None
        if self.acc.is_main_process:
            from tqdm.auto import tqdm

            from unlearnkit.console import show_progress

            model = self.acc.unwrap_model(self.model)
            result = {}
            bar = tqdm(total=sum(len(e) for e in self.data.heldout.values()), desc=f"held-out NLL ({when})",
                       unit="example", disable=not show_progress(self.cfg.train.progress), leave=False)
            for name, examples in self.data.heldout.items():
                r = answer_nll(model, self.tokenizer, examples, self.cfg.data.template, max_length=self.cfg.data.max_length,
                               batch_size=self.cfg.eval.batch_size)
                result[name] = {"mean_nll": r["mean_nll"], "perplexity": math.exp(min(r["mean_nll"], 50.0)),
                                "tokens": r["tokens"], "examples": len(examples),
                                # Per example, for the bootstrap interval of the change.
                                "per_example_nll": [round(v, 6) for v in r["per_example"]],
                                "per_example_tokens": r["per_example_tokens"]}
                bar.update(len(examples))
            bar.close()
            print(f"[{when}] " + ", ".join(f"{k}: nll {v['mean_nll']:.4f}" for k, v in result.items()), flush=True)
        self.model.train()
        return result

    # ----------------------------------------------------------- checkpoints
    def _save_checkpoint(self, step: int, before: dict | None) -> None:
        acc = self.acc
        acc.wait_for_everyone()
        if not acc.is_main_process:
            return
        from safetensors.torch import save_file

        root = self.run_dir / "checkpoints"
        final = root / f"step-{step:06d}"
        tmp = root / f".step-{step:06d}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file(trainable_state(acc.unwrap_model(self.model)), str(tmp / "trainable.safetensors"))
        # No pickle: tensors in safetensors, everything else in JSON.
        opt_tensors, opt_meta = optimizer_to_files(self.optimizer.state_dict())
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        atomic_write_json(tmp / "optimizer.json", opt_meta)
        atomic_write_json(tmp / "scheduler.json", _jsonable(self.scheduler.state_dict(), "scheduler state"))
        rng_tensors, rng_meta = rng_to_files(capture_rng())
        save_file(rng_tensors, str(tmp / "rng.safetensors"))
        atomic_write_json(tmp / "rng.json", rng_meta)
        state = {"step": step, "forget_stream": self.forget_stream.state(),
                 "retain_stream": self.retain_stream.state() if self.retain_stream else None,
                 "eval_before": before}
        atomic_write_json(tmp / "state.json", state)
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        for old in self.checkpoints()[: -self.cfg.train.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)

    def _align_schedule(self, step: int) -> None:
        """The learning rate of the next step from the schedule this config builds.

        The same max_steps gives back exactly the saved rate. A larger max_steps
        (``--resume --set train.max_steps=N``) continues on the schedule that now
        ends at N, instead of the finished schedule's last rate (0 for linear).
        """
        sched = self.scheduler
        lambdas = getattr(sched, "lr_lambdas", None)
        if not lambdas:
            return
        sched.last_epoch = step
        values = [base * fn(step) for fn, base in zip(lambdas, sched.base_lrs)]
        old = [g["lr"] for g in self.optimizer.param_groups]
        for group, value in zip(self.optimizer.param_groups, values):
            group["lr"] = value
        sched._last_lr = list(values)
        if any(not math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-15) for a, b in zip(old, values)):
            print(f"--resume: the {self.cfg.train.scheduler} schedule now ends at max_steps={self.cfg.train.max_steps}; "
                  f"step {step + 1} uses lr {values[0]:.3g} (the checkpoint had {old[0]:.3g}).", flush=True)

    def _load_checkpoint(self) -> tuple[int, dict]:
        from safetensors.torch import load_file

        ckpts = self.checkpoints()
        if not ckpts:
            raise TrainingError(f"--resume: no checkpoint in {self.run_dir / 'checkpoints'}.")
        ckpt = ckpts[-1]
        state = json.loads((ckpt / "state.json").read_text())
        unwrapped = self.acc.unwrap_model(self.model)
        weights = load_file(str(ckpt / "trainable.safetensors"))
        missing = [n for n in weights if n not in dict(unwrapped.named_parameters())]
        if missing:
            raise TrainingError(f"--resume: checkpoint {ckpt} does not fit this model (unknown parameter {missing[0]}).")
        with torch.no_grad():
            params = dict(unwrapped.named_parameters())
            for name, value in weights.items():
                params[name].copy_(value.to(params[name].device, params[name].dtype))
        optimizer_state, scheduler_state, rng = read_checkpoint_states(ckpt)
        self.optimizer.load_state_dict(optimizer_state)
        self.scheduler.load_state_dict(scheduler_state)
        self._align_schedule(int(state["step"]))
        restore_rng(rng)
        self.forget_stream.load_state(state["forget_stream"])
        if self.retain_stream and state.get("retain_stream"):
            self.retain_stream.load_state(state["retain_stream"])
        step = int(state["step"])
        log_path = self.run_dir / "log.jsonl"
        if self.acc.is_main_process and log_path.exists():
            # Drop log lines written after the checkpoint: they will be written again.
            kept = [line for line in log_path.read_text().splitlines() if line and json.loads(line).get("step", 0) <= step]
            atomic_write_text(log_path, "".join(k + "\n" for k in kept))
        print(f"Resuming {self.run_dir} from step {step}", flush=True)
        return step, state


# --------------------------------------------------------------------------- checkpoint states, without pickle


def _jsonable(value, what: str):
    """``value`` with tuples as lists, checked to survive JSON (a checkpoint holds no pickle)."""
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as exc:
        raise TrainingError(f"cannot save the {what} as JSON ({exc}).") from None


def optimizer_to_files(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimizer state dict as safetensors tensors plus a JSON description."""
    tensors: dict[str, torch.Tensor] = {}
    state_meta: dict[str, dict] = {}
    for pid, pstate in state_dict["state"].items():
        entry = {}
        for key, value in pstate.items():
            if torch.is_tensor(value):
                name = f"state.{pid}.{key}"
                tensors[name] = value.detach().contiguous().cpu()
                entry[key] = {"tensor": name}
            else:
                entry[key] = {"value": value}
        state_meta[str(pid)] = entry
    meta = {"state": state_meta, "param_groups": _jsonable(state_dict["param_groups"], "optimizer's parameter groups")}
    return tensors, _jsonable(meta, "optimizer state")


def optimizer_from_files(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state = {}
    for pid, entry in meta["state"].items():
        state[int(pid)] = {k: (tensors[v["tensor"]] if "tensor" in v else v["value"]) for k, v in entry.items()}
    return {"state": state, "param_groups": meta["param_groups"]}


def capture_rng() -> dict:
    """Every random state the loop draws from: torch (CPU and each CUDA device), Python, NumPy."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "cuda": [], "numpy": None}
    if torch.cuda.is_available():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    try:
        import numpy as np

        state["numpy"] = np.random.get_state()
    except ImportError:
        pass
    return state


def rng_to_files(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """RNG states as uint8/int64 tensors (safetensors) and JSON."""
    tensors = {"torch": state["torch"].to(torch.uint8).contiguous()}
    for i, cuda_state in enumerate(state.get("cuda") or []):
        tensors[f"cuda.{i}"] = cuda_state.to(torch.uint8).contiguous()
    version, internal, gauss = state["python"]
    meta = {"python": {"version": version, "state": list(internal), "gauss_next": gauss},
            "cuda_devices": len(state.get("cuda") or []), "numpy": None}
    if state.get("numpy") is not None:
        kind, keys, pos, has_gauss, cached = state["numpy"]
        import numpy as np

        tensors["numpy.keys"] = torch.from_numpy(np.asarray(keys, dtype=np.int64).copy())
        meta["numpy"] = {"kind": kind, "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}
    return tensors, meta


def rng_from_files(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    py = meta["python"]
    state = {"torch": tensors["torch"].to(torch.uint8), "python": (py["version"], tuple(py["state"]), py["gauss_next"]),
             "cuda": [tensors[f"cuda.{i}"].to(torch.uint8) for i in range(int(meta.get("cuda_devices", 0)))],
             "numpy": None}
    if meta.get("numpy") is not None:
        import numpy as np

        n = meta["numpy"]
        state["numpy"] = (n["kind"], tensors["numpy.keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                          n["cached_gaussian"])
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    cuda_states = state.get("cuda") or []
    if cuda_states:
        if torch.cuda.is_available() and torch.cuda.device_count() == len(cuda_states):
            torch.cuda.set_rng_state_all(cuda_states)
        else:
            print(f"warning: the checkpoint holds the random state of {len(cuda_states)} CUDA device(s) and this "
                  f"machine has {torch.cuda.device_count() if torch.cuda.is_available() else 0}; the GPU random "
                  "numbers (dropout) will differ from an uninterrupted run.", flush=True)
    if state.get("numpy") is not None:
        try:
            import numpy as np

            np.random.set_state(state["numpy"])
        except ImportError:
            pass


def _safe_torch_load(path: Path):
    """A legacy ``.pt`` state: tensors and plain values only (torch refuses anything that would run code)."""
    import pickle

    if not path.is_file():
        raise TrainingError(f"--resume: the checkpoint {path.parent} is incomplete ({path.name} is missing).")
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise TrainingError(
            f"--resume: {path} is a pickle that holds more than tensors and plain values, so it is not loaded "
            f"(unpickling it could run code): {reason}. Start the run again without --resume."
        ) from None


def read_checkpoint_states(ckpt: Path) -> tuple[dict, dict, dict]:
    """(optimizer, scheduler, rng) states of a checkpoint, from safetensors and JSON.

    A checkpoint of an older unlearnkit (``*.pt`` files) is read with torch's
    ``weights_only`` loader, which refuses any pickle that would run code.
    """
    from safetensors.torch import load_file

    if (ckpt / "optimizer.safetensors").is_file():
        optimizer_state = optimizer_from_files(load_file(str(ckpt / "optimizer.safetensors")),
                                               json.loads((ckpt / "optimizer.json").read_text()))
    else:
        optimizer_state = _safe_torch_load(ckpt / "optimizer.pt")
    if (ckpt / "scheduler.json").is_file():
        scheduler_state = json.loads((ckpt / "scheduler.json").read_text())
    else:
        scheduler_state = _safe_torch_load(ckpt / "scheduler.pt")
    if (ckpt / "rng.safetensors").is_file():
        rng = rng_from_files(load_file(str(ckpt / "rng.safetensors")), json.loads((ckpt / "rng.json").read_text()))
    else:
        legacy = _safe_torch_load(ckpt / "rng.pt")
        if not isinstance(legacy, dict) or "torch" not in legacy or "python" not in legacy:
            raise TrainingError(f"--resume: {ckpt / 'rng.pt'} does not hold the random state of a checkpoint.")
        rng = {"torch": legacy["torch"], "python": tuple(legacy["python"]), "cuda": [], "numpy": None}
    return optimizer_state, scheduler_state, rng


def resumable_leftover(run_dir: Path) -> Path | None:
    """The temporary folder of a killed fresh run of ``run_dir`` that holds a checkpoint (the latest), if any."""
    candidates = [p for p in leftovers(run_dir) if TMP_TAG in p.name and _checkpoints_of(p)]
    return max(candidates, key=lambda p: _checkpoints_of(p)[-1].name) if candidates else None


def _checkpoints_of(folder: Path) -> list[Path]:
    root = Path(folder) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-"))


def _resume_note(trainer: "Trainer") -> str:
    ckpts = _checkpoints_of(trainer.run_dir)
    if ckpts:
        return f"continue it with --resume from its checkpoint {ckpts[-1].name}."
    return "no checkpoint was written, so nothing can be resumed."


def _warn_if_not_sharded(acc) -> None:
    """accelerate runs FSDP only on accelerators: say so when an FSDP launch falls back on the CPU."""
    import os

    from accelerate.utils import DistributedType

    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and acc.distributed_type != DistributedType.FSDP:
        if acc.is_main_process:
            print(f"warning: an FSDP launch runs as {acc.distributed_type.value} here (accelerate shards only on GPUs and "
                  "other accelerators; on the CPU every process holds the whole model). See docs/training.md.", flush=True)


def _without_final_eos(item: TokenizedExample, eos_id: int | None) -> TokenizedExample:
    """The example with its closing EOS kept as input but masked out of the labels."""
    if eos_id is None or not item.labels or item.labels[-1] != eos_id:
        return item
    return TokenizedExample(item.input_ids, [*item.labels[:-1], IGNORE_INDEX])


def resolve_gradient_checkpointing(setting, method: Method, device_type: str) -> bool:
    """Whether a run checkpoints its layers.

    ``auto``: on under CUDA (memory is what a GPU lacks), off on the CPU, and
    off wherever the method's loss cannot run with checkpointed layers (SKU's
    ``anchor_negated`` flips the adapter inside the forward, and the recomputed
    forward of the backward pass would not see it). ``true`` with such a method
    is refused with the key named.
    """
    if setting is True:
        if not method.supports_gradient_checkpointing:
            raise ConfigError(
                f"train.gradient_checkpointing: true cannot be used with method {method.name} as configured "
                "(divergence anchor_negated recomputes the negated forward wrongly); set it to auto or false."
            )
        return True
    if setting is False:
        return False
    return device_type == "cuda" and method.supports_gradient_checkpointing


def check_forget_stop(cfg: RunConfig, where: str = "") -> None:
    """``train.max_forget_loss`` is a ceiling on a RISING forget NLL; refuse it where the NLL falls."""
    method = get_method(cfg.method["name"])
    if cfg.train.max_forget_loss is not None and method.forget_loss_falls:
        raise ConfigError(
            f"invalid config{where}: train.max_forget_loss: method {method.name} lowers the forget NLL "
            "(it learns data.forget), so a ceiling on it would stop the run at its first step; remove "
            "train.max_forget_loss (it guards the gradient-ascent methods) or use max_steps / epochs."
        )


def _all_true(acc, flag: bool) -> bool:
    if acc.num_processes == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=acc.device)
    return bool(acc.reduce(t, reduction="sum").item() == acc.num_processes)


def _sum_across(acc, value: float) -> float:
    if acc.num_processes == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64 if acc.device.type == "cpu" else torch.float32, device=acc.device)
    return float(acc.reduce(t, reduction="sum").item())


def _mean_across(acc, value: float) -> float:
    if acc.num_processes == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64 if acc.device.type == "cpu" else torch.float32, device=acc.device)
    return float(acc.reduce(t, reduction="mean").item())


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % (2**32))
    except ImportError:
        pass


def _append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")


def _relative_change(before: dict | None, after: dict | None, seed: int = 0) -> dict | None:
    """Relative change of each held-out set's answer NLL and perplexity, with 95% intervals.

    The interval is a paired bootstrap over the set's examples (token-weighted,
    as the mean NLL is), seeded; a change whose interval includes 0 is marked
    "no measurable change".
    """
    from unlearnkit.evaluation.stats import relative_change

    if not before or not after:
        return None
    out = {}
    for name, b in before.items():
        if name in after and b["mean_nll"]:
            a = after[name]
            row = {"nll_change": (a["mean_nll"] - b["mean_nll"]) / b["mean_nll"],
                   "perplexity_change": (a["perplexity"] - b["perplexity"]) / b["perplexity"]}
            per_b, per_a = b.get("per_example_nll"), a.get("per_example_nll")
            if per_b and per_a and len(per_b) == len(per_a):
                weights = b.get("per_example_tokens")
                nll = relative_change(per_b, per_a, weights, seed=seed)
                ppl = relative_change(per_b, per_a, weights, exp=True, seed=seed)
                row.update({"n": nll["n"], "nll_change_ci95": nll["ci95"], "nll_verdict": nll["verdict"],
                            "perplexity_change_ci95": ppl["ci95"], "perplexity_verdict": ppl["verdict"]})
            out[name] = row
    return out


def plot_losses(log_path: Path, out_png: Path) -> Path | None:
    if not log_path.exists():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "event" not in r]
    if not rows:
        return None
    keys = [k for k in rows[0] if k not in ("step", "lr", "grad_norm", "elapsed_s")]
    fig, axes = plt.subplots(len(keys), 1, figsize=(7, 2.2 * len(keys)), sharex=True, squeeze=False)
    steps = [r["step"] for r in rows]
    for ax, key in zip(axes[:, 0], keys):
        ax.plot(steps, [r.get(key) for r in rows], lw=1.2)
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("step")
    fig.tight_layout()
    return save_figure(fig, out_png)


def run_unlearning(cfg: RunConfig, resume: bool = False, overwrite: bool = False, stop_at: int | None = None) -> dict:
    return Trainer(cfg, resume=resume, overwrite=overwrite, stop_at=stop_at).run()
