"""The options of an evaluation (``EvalOptions``), kept apart from the suites so that configs can name them."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from unlearnkit.data.spec import DataSourceConfig
from unlearnkit.paths import default_spec

_TQA = "truthfulqa/truthful_qa"
def _tofu(name: str, **kw) -> DataSourceConfig:
    """A TOFU set: tofu/NAME.json under UNLEARNKIT_DATA, else config NAME of locuslab/TOFU on the hub."""
    fields = default_spec("tofu", f"tofu/{name}.json", "locuslab/TOFU", hub_config=name)
    return DataSourceConfig(**fields, shuffle=False, dedupe=False, **kw)


class TofuOptions(BaseModel):
    """Options of the ``tofu`` suite (``options.tofu`` in an eval config); unknown keys are rejected."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    forget: DataSourceConfig = Field(default_factory=lambda: _tofu("forget01_perturbed"))
    retain: DataSourceConfig | None = Field(default_factory=lambda: _tofu("retain_perturbed"))
    real_authors: DataSourceConfig | None = Field(default_factory=lambda: _tofu("real_authors_perturbed"))
    world_facts: DataSourceConfig | None = Field(default_factory=lambda: _tofu("world_facts_perturbed"))
    # Questions the model never saw, for the membership-inference AUC (TOFU's holdoutNN on the hub).
    holdout: DataSourceConfig | None = None
    # The retain model's eval.json (this suite's), or in an experiment the name of the eval stage that wrote it.
    reference: str | None = None
    # This model IS the retain model: forget quality 1 and privacy leak 0 by definition.
    is_reference: bool = False
    limit: int | None = Field(None, ge=1)  # items per set (TOFU's own evaluation scores 300)
    max_new_tokens: int = Field(200, ge=1)  # greedy answers for ROUGE (the benchmark's 200)
    mia_attack: Literal["min_k", "loss"] = "min_k"
    mia_k: float = Field(0.4, gt=0, le=1)
    perturbed_mean: Literal["geometric", "arithmetic"] = "geometric"
    eps: float = Field(1e-10, ge=0)
    bootstrap_seed: int = 0




EVAL_FORMAT = "unlearnkit-eval/1"
BORDERLINE_HELDOUT = Path(__file__).resolve().parents[1] / "assets" / "borderline_heldout.txt"


def _src(spec: str, **kw) -> DataSourceConfig:
    return DataSourceConfig(spec=spec, **kw)


def _default(recipe: str, relative: str, hub: str | None = None, hub_options: dict | None = None, **kw):
    """A default data set: under UNLEARNKIT_DATA, else its hub copy (unlearnkit.paths), else None."""
    fields = default_spec(recipe, relative, hub, **(hub_options or {}))
    return DataSourceConfig(**fields, **kw) if fields is not None else None


class EvalOptions(BaseModel):
    """Everything an evaluation can be told; unknown keys are rejected."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # "auto": the run's training template, else the tokenizer's chat template
    # when it has one, else the papers' "qa" format.
    template: Literal["auto", "chat", "qa", "raw"] = "auto"
    max_new_tokens: int = Field(64, ge=1)
    batch_size: int = Field(8, ge=1)
    max_length: int = Field(512, ge=8)  # likelihood metrics: tokens per scored item
    do_sample: bool = False
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int = 0
    # Caps on the number of items per set; ``limit`` caps every set at once
    # (the CLI's --limit). None: no cap.
    limit: int | None = Field(None, ge=1)
    harm_limit: int | None = Field(50, ge=1)
    normal_limit: int | None = Field(50, ge=1)
    truthfulqa_limit: int | None = Field(None, ge=1)
    perplexity_limit: int | None = Field(100, ge=1)
    memorisation_limit: int | None = Field(50, ge=1)
    samples: int = Field(3, ge=0)  # example generations kept per set in eval.json
    progress: bool = True
    # Judge specs for the harm suite (see unlearnkit.evaluation.judges.get_judge).
    # None: "refusal" and "classifier" (the shipped judge; "refusal" alone if it is missing).
    judges: list[str | dict[str, Any]] | None = None

    forget_prompts: DataSourceConfig | None = None
    unseen_prompts: DataSourceConfig | None = Field(
        default_factory=lambda: _default("prompts", "harmful_prompts/advbench_harmful_behaviors.csv", "walledai/AdvBench", shuffle=False)
    )
    # The 60 TruthfulQA questions the example configs hold out of training.
    normal_prompts: DataSourceConfig | None = Field(
        default_factory=lambda: _default("truthfulqa", "truthfulqa/TruthfulQA.csv", _TQA, {"hub_config": "generation", "hub_split": "validation"},
                         holdout=60, seed=0)
    )
    truthfulqa: DataSourceConfig | None = Field(
        default_factory=lambda: _default("truthfulqa_mc", "truthfulqa/TruthfulQA.csv", _TQA,
                         {"hub_config": "multiple_choice", "hub_split": "validation"}, shuffle=False)
    )
    perplexity_texts: DataSourceConfig | None = Field(
        default_factory=lambda: _default("text", "retain/c4_demo.json", "Salesforce/wikitext",
                         {"hub_config": "wikitext-2-raw-v1", "hub_split": "test"}, mode="chunks", chunk_tokens=256,
                         shuffle=False)
    )
    memorisation_pairs: DataSourceConfig | None = Field(
        default_factory=lambda: _default(
            "text", "books/dorothy_and_the_wizard_in_oz.txt", None, None,
            # Shuffled (seeded): pairs from across the book, not its title pages.
            mode="pairs", prompt_tokens=32, continuation_tokens=32, shuffle=True, seed=0,
        )
    )
    memorisation_template: Literal["raw", "qa", "chat"] = "raw"
    overrefusal_prompts: DataSourceConfig | None = Field(
        default_factory=lambda: _src(f"prompts:{BORDERLINE_HELDOUT}", shuffle=False))
    overrefusal_limit: int | None = Field(None, ge=1)
    # Options of the attack suite (unlearnkit.attacks.AttackOptions; docs/robustness.md).
    attack: dict[str, Any] = Field(default_factory=dict)
    # The TOFU benchmark's sets and settings (unlearnkit.evaluation.tofu_suite, docs/tofu.md).
    tofu: TofuOptions = Field(default_factory=TofuOptions)

    def cap(self, per_set: int | None) -> int | None:
        caps = [c for c in (per_set, self.limit) if c is not None]
        return min(caps) if caps else None
