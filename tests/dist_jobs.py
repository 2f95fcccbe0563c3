"""Training jobs run in one process or under ``accelerate launch`` (2 gloo processes).

Usage: ``python tests/dist_jobs.py JOBS.json`` where the file holds a list of
``{"config": {...raw run config...}, "grads_at": STEP or null, "out": PATH}``.
Each job runs through :class:`unlearnkit.train.Trainer`; with ``grads_at`` the
gradients about to be applied at that step (after the all-reduce, before
clipping-free AdamW) are written by process 0 to ``out`` (safetensors), with
the run's summary beside it (``out + ".json"``).

Importing this module also registers ``test_nan_on_rank1``: gradient ascent
whose loss is NaN on process 1 only, from its second step on; and
``test_sequence_mean``: a mean over sequences (not tokens) of the answers'
log-probabilities, exact only through the step-wide sequence normaliser.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from unlearnkit.losses import mean_nll  # noqa: E402
from unlearnkit.methods import METHODS, Method, register  # noqa: E402


if "test_nan_on_rank1" not in METHODS:

    @register
    class NaNOnRank1(Method):
        """Gradient ascent whose loss is NaN on process 1 from the second step on."""

        name = "test_nan_on_rank1"

        def loss(self, ctx, batches):
            import torch.distributed as dist

            batch = batches["forget"]
            al = ctx.logits(batch)
            nll = mean_nll(al, ctx.normaliser(batch, al.mask))
            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
            if rank == 1 and ctx.step >= 1:
                nll = nll * float("nan")
            return -nll, {"forget_nll": nll.item()}


if "test_sequence_mean" not in METHODS:

    @register
    class SequenceMean(Method):
        """Gradient ascent on the mean over SEQUENCES of each answer's log-probability (a per-sequence mean)."""

        name = "test_sequence_mean"

        def loss(self, ctx, batches):
            from unlearnkit.losses import sequence_logprob

            batch = batches["forget"]
            logp = sequence_logprob(ctx.logits(batch))
            mean_logp = logp.sum() / ctx.sequence_normaliser(batch)
            return mean_logp, {"forget_nll": -mean_logp.item()}


def run_job(job: dict) -> dict:
    """Run one job; return its summary (and write the gradients it was asked for)."""
    from unlearnkit.config import load_config
    from unlearnkit.train import Trainer

    cfg = load_config(raw=job["config"])
    trainer = Trainer(cfg)
    grads_at = job.get("grads_at")
    captured: dict[str, torch.Tensor] = {}
    original_loop = trainer._loop

    def loop(start, before):
        optimizer = trainer.optimizer
        original_step = optimizer.step
        calls = {"n": 0}

        def step(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == grads_at:
                model = trainer.acc.unwrap_model(trainer.model)
                for name, p in model.named_parameters():
                    if p.grad is not None:
                        captured[name] = p.grad.detach().float().cpu().clone()
            return original_step(*args, **kwargs)

        optimizer.step = step
        return original_loop(start, before)

    trainer._loop = loop
    summary = trainer.run()
    if trainer.acc.is_main_process and job.get("out"):
        out = Path(job["out"])
        out.parent.mkdir(parents=True, exist_ok=True)
        if grads_at:
            from safetensors.torch import save_file

            save_file(captured, str(out))
        frozen = getattr(trainer.reference, "frozen", None) if trainer.reference is not None else None
        summary = {**summary, "model_wrapper": type(trainer.model).__name__,
                   "reference_wrapper": type(frozen).__name__ if frozen is not None else None}
        Path(str(out) + ".json").write_text(json.dumps(summary, default=str))
    return {"summary": summary, "grads": captured}


def main(path: str) -> None:
    jobs = json.loads(Path(path).read_text())
    for job in jobs:
        run_job(job)


if __name__ == "__main__":
    main(sys.argv[1])
