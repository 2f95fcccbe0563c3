"""The training loop shared by every unlearning method.

One loop on ``accelerate``: the same code runs on a CPU, a GPU, or several
processes (``accelerate launch``). It guarantees what the reference code does
not: the step limit is exact, every forget example is seen (shuffled, reshuffled
each epoch), the early stop on the forget loss fires, a non-finite loss stops
the run with a checkpoint, and ``--resume`` continues the very same run.

The loop names no method: a method declares the batches it reads
(:mod:`unlearnkit.training.batches`), may choose its trainable parameters in
``setup``, computes its loss from a :class:`~unlearnkit.methods.LossContext`,
and builds the unlearned model in ``finish``.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext

import torch

from unlearnkit import trackers
from unlearnkit.config import RunConfig, dump_config
from unlearnkit.console import show_progress
from unlearnkit.data.audit import write_sets
from unlearnkit.data.tokenize import IGNORE_INDEX, pad_id_of, tokenize_set
from unlearnkit.data.types import Example
from unlearnkit.errors import RunInterrupted, TrainingError
from unlearnkit.methods import LossContext, get_method
from unlearnkit.methods.base import FinishContext
from unlearnkit.models import describe_source, is_peft, load_model, save_model
from unlearnkit.rundir import atomic_write_json, atomic_write_text, manifest
from unlearnkit.training.batches import StepBatches
from unlearnkit.training.checkpoint import checkpoints_of, load_checkpoint, resume_note, save_checkpoint
from unlearnkit.training.control import (
    all_true,
    check_forget_stop,
    make_accelerator,
    mean_across,
    resolve_gradient_checkpointing,
    seed_everything,
    sum_across,
)
from unlearnkit.training.data import prepare_data, trained_sets
from unlearnkit.training.folder import RunFolder
from unlearnkit.reports.plots import plot_losses
from unlearnkit.training.records import append_jsonl, heldout_change
from unlearnkit.training.reference import Reference


class Trainer:
    def __init__(self, cfg: RunConfig, resume: bool = False, overwrite: bool = False, stop_at: int | None = None):
        self.cfg = cfg
        # Pause after this many steps with a checkpoint (the schedule still
        # targets max_steps), so that --resume continues the same run.
        self.stop_at = stop_at
        self.resume = resume
        self.folder = RunFolder(cfg, resume=resume, overwrite=overwrite)
        self.method_cls = get_method(cfg.method["name"])
        self.method = self.method_cls(cfg.method_params())
        check_forget_stop(cfg)

    @property
    def run_dir(self):
        """The folder the run writes now (a temporary sibling of the run folder while a fresh run runs)."""
        return self.folder.run_dir

    @property
    def final_dir(self):
        return self.folder.final_dir

    def checkpoints(self):
        return checkpoints_of(self.run_dir)

    # ------------------------------------------------------------------- run
    def run(self) -> dict:
        cfg = self.cfg
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        self.folder.check()
        acc = self.acc = make_accelerator(cfg, self.run_dir)
        if acc.is_main_process:
            self.folder.prepare()
        acc.wait_for_everyone()
        if self.folder.adopt is not None:
            self.folder.run_dir = self.final_dir  # every process: the main one has moved the folder there
        try:
            result = self._run()
        except BaseException as exc:
            trackers.finish(acc, cfg)
            note = self.folder.finish(ok=False) if acc.is_main_process else None
            if isinstance(exc, KeyboardInterrupt):
                raise RunInterrupted(f"interrupted; {note or resume_note(self.run_dir)}") from None
            if note:
                print(f"note: {note}", flush=True)
            raise
        trackers.finish(acc, cfg)
        if acc.is_main_process:
            self.folder.finish(ok=True)
            from unlearnkit.outputs import publish

            publish(cfg, result)
        acc.wait_for_everyone()
        return result

    def _run(self) -> dict:
        cfg, acc = self.cfg, self.acc
        main = acc.is_main_process
        seed_everything(cfg.seed)
        model, tokenizer = load_model(cfg.model, for_training=True)
        self.tokenizer = tokenizer
        self.data = data = prepare_data(cfg, tokenizer, self.method)
        forget_tok, retain_tok = self._tokenize(data)
        self._fix_step_count(len(forget_tok))
        if main:
            self._write_start_records(data)
        trackers.start(acc, cfg)
        self.method.setup(model)
        if resolve_gradient_checkpointing(cfg.train.gradient_checkpointing, self.method, acc.device.type):
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if is_peft(model):
                model.enable_input_require_grads()
        wants = self.method.wants_reference(is_peft(model))
        reference = Reference(model, cfg, for_negation=self.method_cls.negates) if wants else None
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise TrainingError("the model has no trainable parameters.")
        optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        from transformers import get_scheduler

        scheduler = get_scheduler(cfg.train.scheduler, optimizer, num_warmup_steps=cfg.train.warmup_steps,
                                  num_training_steps=cfg.train.max_steps)
        model, optimizer = acc.prepare(model, optimizer)
        if reference is not None:
            reference.shard(acc)
        self.model, self.optimizer, self.scheduler, self.reference = model, optimizer, scheduler, reference
        self.batches = StepBatches(cfg, data, forget_tok, retain_tok, tokenizer, pad_id_of(tokenizer), acc, self.method)
        start_step, saved = load_checkpoint(self) if self.resume else (0, None)
        fresh = cfg.eval.enabled and start_step == 0
        before = self._evaluate("before") if fresh else (saved or {}).get("eval_before")
        return self._loop(start_step, before)

    def _tokenize(self, data):
        """Tokenise forget and retain under data.truncation: never a prompt cut to a fragment, every cut counted."""
        cfg = self.cfg
        self.truncation: dict[str, dict] = {}

        def tok(what: str, exs: list[Example]):
            kept, toks, report = tokenize_set(exs, self.tokenizer, cfg.data.template, cfg.data.max_length,
                                              truncation=cfg.data.truncation, add_eos=self.method.add_eos, what=what)
            self.truncation[what.removeprefix("data.")] = report.as_dict()
            line = report.sentence(what)
            if line and self.acc.is_main_process:
                print(line, flush=True)
            return kept, toks

        data.forget, forget_tok = tok("data.forget", data.forget)
        data.retain, retain_tok = tok("data.retain", data.retain) if data.retain else ([], [])
        return forget_tok, retain_tok

    def _fix_step_count(self, n_forget: int) -> None:
        """Epochs become an exact step count before the schedule is built.

        The saved config.yaml records it (epochs: null), so a reload is the same run.
        """
        cfg, acc = self.cfg, self.acc
        if cfg.train.epochs is None:
            return
        per_epoch = math.ceil(n_forget / (cfg.train.batch_size * acc.num_processes))
        steps = max(1, math.ceil(cfg.train.epochs * per_epoch / cfg.train.grad_accum))
        if acc.is_main_process:
            print(f"train.epochs={cfg.train.epochs:g}: {per_epoch} batches per epoch -> max_steps={steps}", flush=True)
        cfg.train = cfg.train.model_copy(update={"max_steps": steps, "epochs": None})

    def _write_start_records(self, data) -> None:
        cfg = self.cfg
        atomic_write_text(self.run_dir / "config.yaml", dump_config(cfg))
        if self.resume and (self.run_dir / "manifest.json").exists():
            return
        extra = {"method": cfg.method, "world_size": self.acc.num_processes, "truncation": self.truncation,
                 "overlap_audit": {"allow_overlap": cfg.data.allow_overlap, **data.audit},
                 "data_files": write_sets(self.run_dir / "data", {**trained_sets(data), **data.heldout})}
        atomic_write_json(self.run_dir / "manifest.json",
                          manifest(cfg.seed, f"{cfg.model.name} ({describe_source(cfg.model.name)})",
                                   data.descriptions, extra))

    # ------------------------------------------------------------------ step
    def _context(self, step: int, extras: dict | None = None) -> LossContext:
        unwrapped = self.acc.unwrap_model(self.model)
        ref = self.reference
        return LossContext(model=self.model, denominator=self.batches.denominator, step=step, extras=extras or {},
                           reference=(lambda b: ref(unwrapped, b)) if ref else None,
                           reference_hidden_fn=(lambda b, layer: ref.hidden(unwrapped, b, layer)) if ref else None)

    def _global_stats(self, step: int, micro_batches: list[dict[str, dict]]) -> dict[str, float]:
        """The step-wide values of the method's hinge / clamp statistics (one pass without gradient)."""
        sums: dict[str, float] = {}
        with torch.no_grad():
            for batches in micro_batches:
                with self.acc.autocast():
                    stats = self.method.global_stats(self._context(step), batches)
                for k, v in stats.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
        parts = len(micro_batches) * self.acc.num_processes
        return {k: sum_across(self.acc, v) / parts for k, v in sorted(sums.items())}

    def _forward_backward(self, step: int, micro_batches: list[dict[str, dict]]):
        """Every micro-batch's loss and backward pass; returns (finite, loss, terms).

        Whether a loss is finite is agreed by all processes BEFORE its backward
        pass, so a NaN on one process stops every process at the same point
        (none is left waiting in a gradient all-reduce).
        """
        acc, model = self.acc, self.model
        ga = len(micro_batches)
        self.batches.attach_normalisers(micro_batches)
        extras: dict = {}
        if self.method.needs_global_stats and ga * acc.num_processes > 1:
            extras["global"] = self._global_stats(step, micro_batches)
        terms_acc: dict[str, float] = {}
        total_loss = 0.0
        for micro, batches in enumerate(micro_batches):
            ctx = self._context(step, extras)
            sync = acc.no_sync(model) if (micro < ga - 1 and acc.num_processes > 1) else nullcontext()
            with sync:
                with acc.autocast():
                    loss, terms = self.method.loss(ctx, batches)
                if not all_true(acc, bool(torch.isfinite(loss.detach()).all())):
                    return False, float(loss.item()), dict(terms)
                acc.backward(loss / ga)
            total_loss += float(loss.item()) / ga
            for k, v in terms.items():
                terms_acc[k] = terms_acc.get(k, 0.0) + v / ga
        return True, total_loss, terms_acc

    def _apply_update(self) -> tuple[float | None, float]:
        """Clip, step the optimizer and the schedule; returns (gradient norm, the rate this update used)."""
        grad_norm = None
        if self.cfg.train.max_grad_norm:
            grad_norm = float(self.acc.clip_grad_norm_(self.model.parameters(), self.cfg.train.max_grad_norm))
        lr_used = float(self.optimizer.param_groups[0]["lr"])  # the rate of this update, not the next one's
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm, lr_used

    # ------------------------------------------------------------------ loop
    def _loop(self, start_step: int, before: dict | None) -> dict:
        cfg, acc, model = self.cfg, self.acc, self.model
        main = acc.is_main_process
        log_path = self.run_dir / "log.jsonl"
        model.train()
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.train.max_steps, initial=start_step, desc=self.method_cls.name, unit="step",
                   disable=not (main and show_progress(cfg.train.progress)), dynamic_ncols=True)
        status, reason = "completed", f"reached max_steps={cfg.train.max_steps}"
        step, t0, tokens_seen, last_terms = start_step, time.time(), 0, {}
        while step < cfg.train.max_steps:
            micro_batches = [self.batches.step(step, micro) for micro in range(cfg.train.grad_accum)]
            # Tokens of the rows that carry answer labels (a process's masked filler row is not data).
            tokens_seen += sum(int(b["attention_mask"][(b["labels"] != IGNORE_INDEX).any(dim=1)].sum())
                               for batches in micro_batches for b in batches.values())
            finite, total_loss, terms = self._forward_backward(step, micro_batches)
            if not finite:
                self.optimizer.zero_grad(set_to_none=True)
                status, reason = "stopped", f"non-finite loss ({total_loss}) at step {step + 1}; the update was not applied"
                last_terms = terms
                if main:
                    append_jsonl(log_path, {"step": step + 1, "loss": total_loss, **terms, "event": "non-finite loss"})
                break
            grad_norm, lr_used = self._apply_update()
            step += 1
            last_terms = terms = {k: mean_across(acc, v) for k, v in terms.items()}
            if step % cfg.train.log_every == 0:
                record = {"step": step, "loss": mean_across(acc, total_loss), **terms, "lr": lr_used,
                          "grad_norm": grad_norm, "elapsed_s": round(time.time() - t0, 3)}
                if main:
                    append_jsonl(log_path, record)
                trackers.log_step(acc, cfg, record)
            bar.update(1)
            bar.set_postfix({k: f"{v:.3f}" for k, v in terms.items()})
            forget_loss = terms.get(self.method_cls.forget_term)
            if cfg.train.max_forget_loss is not None and forget_loss is not None and forget_loss >= cfg.train.max_forget_loss:
                status = "stopped"
                reason = f"forget loss {forget_loss:.4f} reached max_forget_loss={cfg.train.max_forget_loss} at step {step}"
                break
            if cfg.train.save_every and step % cfg.train.save_every == 0 and step < cfg.train.max_steps:
                save_checkpoint(self, step, before)
            if self.stop_at is not None and self.stop_at <= step < cfg.train.max_steps:
                status, reason = "paused", f"paused at step {step} of {cfg.train.max_steps}; continue with --resume"
                break
        bar.close()
        elapsed = time.time() - t0
        # A checkpoint of where the run ended, so that it can be inspected or resumed.
        save_checkpoint(self, step, before)
        if status == "paused":
            bar.write(reason)
            return {"status": status, "reason": reason, "steps": step}
        trained = acc.unwrap_model(model)
        final_model = self.method.finish(trained, self.reference, FinishContext(
            run_dir=self.run_dir, tokenizer=self.tokenizer, main=main, failed=reason.startswith("non-finite")))
        if final_model is not trained:
            final_model.eval()
            self.model = final_model
        after = self._evaluate("after") if cfg.eval.enabled else None
        summary = {
            "name": cfg.name, "method": cfg.method, "status": status, "reason": reason,
            "steps": step, "max_steps": cfg.train.max_steps, "world_size": acc.num_processes,
            "final_terms": last_terms, "train_seconds": round(elapsed, 2),
            "tokens_per_second": round(tokens_seen * acc.num_processes / max(elapsed, 1e-9), 1),
            "eval_before": before, "eval_after": after, "eval_change": heldout_change(before, after, cfg.seed),
            "truncation": self.truncation, "model_path": None,
        }
        if main:
            self._save_outputs(final_model, summary, log_path)
        trackers.log_summary(acc, cfg, summary)
        acc.wait_for_everyone()
        return summary

    def _save_outputs(self, final_model, summary: dict, log_path) -> None:
        cfg = self.cfg
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

    # ------------------------------------------------------------ evaluation
    def _evaluate(self, when: str) -> dict | None:
        """Answer NLL of every held-out set (main process), with per-example values for the bootstrap."""
        if not self.data.heldout:
            return None
        from unlearnkit.evaluation.likelihood import answer_nll

        result = None
        if self.acc.is_main_process:
            from tqdm.auto import tqdm

            model = self.acc.unwrap_model(self.model)
            result = {}
            bar = tqdm(total=sum(len(e) for e in self.data.heldout.values()), desc=f"held-out NLL ({when})",
                       unit="example", disable=not show_progress(self.cfg.train.progress), leave=False)
            for name, examples in self.data.heldout.items():
                r = answer_nll(model, self.tokenizer, examples, self.cfg.data.template, max_length=self.cfg.data.max_length,
                               batch_size=self.cfg.eval.batch_size)
                result[name] = {"mean_nll": r["mean_nll"], "perplexity": math.exp(min(r["mean_nll"], 50.0)),
                                "tokens": r["tokens"], "examples": len(examples),
                                "per_example_nll": [round(v, 6) for v in r["per_example"]],
                                "per_example_tokens": r["per_example_tokens"]}
                bar.update(len(examples))
            bar.close()
            print(f"[{when}] " + ", ".join(f"{k}: nll {v['mean_nll']:.4f}" for k, v in result.items()), flush=True)
        self.model.train()
        return result


def run_unlearning(cfg: RunConfig, resume: bool = False, overwrite: bool = False, stop_at: int | None = None) -> dict:
    return Trainer(cfg, resume=resume, overwrite=overwrite, stop_at=stop_at).run()
