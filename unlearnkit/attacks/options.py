"""The options of the attack evaluation; unknown keys are rejected."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from unlearnkit.data.spec import DataSourceConfig

SHARED = "../shared/data"
ATTACKS: tuple[str, ...] = ("quantise", "relearn", "prompts")


class AttackOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    attacks: list[Literal["quantise", "relearn", "prompts"]] = Field(default_factory=lambda: list(ATTACKS))
    # The forget data: its held-out part (or, without a holdout, all of it) is
    # split by prompt into the attacker's relearning slice and the scored items.
    # Taken from the run config when one is given.
    forget: DataSourceConfig | None = None
    template: Literal["auto", "chat", "qa", "raw"] = "auto"
    max_length: int = Field(512, ge=8)
    batch_size: int = Field(8, ge=1)
    seed: int = 0
    progress: bool = True
    score_limit: int | None = Field(None, ge=1)  # cap on the scored forget items

    # quantisation
    bits: list[int] = Field(default_factory=lambda: [8, 4])
    group_size: int = Field(128, ge=1)
    include_embeddings: bool = False

    # relearning
    relearn_examples: int = Field(20, ge=1)  # held-out forget examples the attacker trains on
    relearn_steps: list[int] = Field(default_factory=lambda: [5, 10, 25])
    relearn_modes: list[Literal["lora", "full"]] = Field(default_factory=lambda: ["lora", "full"])
    relearn_data: list[Literal["forget", "benign"]] = Field(default_factory=lambda: ["forget", "benign"])
    full_lrs: list[float] = Field(default_factory=lambda: [1e-5, 3e-5, 1e-4])
    lora_lrs: list[float] = Field(default_factory=lambda: [1e-4, 3e-4, 1e-3])
    relearn_batch_size: int = Field(4, ge=1)
    # Benign, unrelated text for the benign relearning (as many tokens as the forget slice).
    benign: DataSourceConfig = Field(default_factory=lambda: DataSourceConfig(
        spec=f"text:{SHARED}/retain/c4_demo.json", mode="chunks", chunk_tokens=96, shuffle=True, seed=1))

    # prompt attacks (harmful track) and their judges
    prompt_attacks: list[str] = Field(default_factory=lambda: ["prefill", "roleplay_fiction", "roleplay_persona",
                                                               "french", "no_template"])
    prompt_limit: int | None = Field(50, ge=1)  # requests asked per attack
    # Requests to rewrite: None = the scored held-out forget prompts.
    attack_prompts: DataSourceConfig | None = None
    generate_quantised: bool = True  # the harmful rate of the quantised models too
    max_new_tokens: int = Field(64, ge=1)
    judges: list[str | dict[str, Any]] | None = None

    @field_validator("bits")
    @classmethod
    def _bits(cls, v: list[int]) -> list[int]:
        for b in v:
            if not 2 <= b <= 16:
                raise ValueError(f"bits {b} is outside 2..16")
        return v

    @field_validator("relearn_steps")
    @classmethod
    def _steps(cls, v: list[int]) -> list[int]:
        if not v or any(s < 1 for s in v):
            raise ValueError("relearn_steps must be positive whole numbers")
        return sorted(set(v))

    @field_validator("full_lrs", "lora_lrs")
    @classmethod
    def _lrs(cls, v: list[float]) -> list[float]:
        if not v or any(not 0 < x <= 1 for x in v):
            raise ValueError("learning rates must be in (0, 1]")
        return v

    @field_validator("prompt_attacks")
    @classmethod
    def _prompt_attacks(cls, v: list[str]) -> list[str]:
        from unlearnkit.attacks.prompts import PROMPT_ATTACKS

        for name in v:
            if name not in PROMPT_ATTACKS:
                raise ValueError(f"unknown prompt attack {name!r}; choose from {', '.join(PROMPT_ATTACKS)}")
        return v
