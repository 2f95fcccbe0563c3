"""``finetune``: plain finetuning, the first stage of the copyright track.

*Machine Unlearning in Large Language Models* (arXiv 2405.15152) first makes
OPT memorise a book with LoRA finetuning, then unlearns it. This method is that
finetuning: it MINIMISES the answer NLL of ``data.forget``. For this method
``data.forget`` holds the text to learn (usually the book, as ``text`` chunks):
the same text a later unlearning stage forgets, so one data section serves both
stages.

A book does not end after each chunk, so by default no end-of-sequence token is
appended to the training examples (``add_eos: false``); otherwise the model
learns to stop at chunk boundaries and its continuations of the book are cut
short. Set ``add_eos: true`` to finetune on prompt/answer pairs.
"""

from __future__ import annotations

from pydantic import Field

from unlearnkit.losses import mean_nll
from unlearnkit.methods.registry import register
from unlearnkit.methods.base import LossContext, Method, MethodParams


class FinetuneParams(MethodParams):
    add_eos: bool = Field(False, description="append the end-of-sequence token to each training example")


@register
class Finetune(Method):
    """Minimise the answer NLL of ``data.forget`` (the text to learn)."""

    name = "finetune"
    Params = FinetuneParams
    needs = frozenset({"forget"})
    forget_loss_falls = True

    @property
    def add_eos(self) -> bool:
        return bool(self.params.add_eos)

    def loss(self, ctx: LossContext, batches):
        return learn_forget(ctx, batches)


def learn_forget(ctx: LossContext, batches):
    """The answer NLL of the forget batch, to be minimised (finetuning, and task_vector's first phase)."""
    al = ctx.logits(batches["forget"])
    nll = mean_nll(al, ctx.normaliser(batches["forget"], al.mask))
    return nll, {"forget_nll": nll.item()}
