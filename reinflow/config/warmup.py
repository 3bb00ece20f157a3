"""The ``warmup`` section: a warm start (supervised fine-tuning) before the first GRPO iteration.

Not to be confused with ``train.warmup_iterations`` (the learning-rate warm-up of GRPO): this
section teaches the policy the *form* of an agent episode (tool calls, reading their results, the
final answer) on demonstrations, so that GRPO's first rollouts already hold episodes that use the
tools. Defaults live here (``reinflow.config.experiment`` holds the other sections).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

DEMONSTRATION_SUFFIXES = (".jsonl", ".parquet")
RAY_UNSUPPORTED = ("the warm start (warmup.demonstrations / warmup.from_run) runs on the in-process trainer only: "
                   "set backbone: debug (the Ray backbone's workers have no supervised step yet)")
"""Why a config that warm-starts on ``backbone: ray`` is refused (preflight, and the warm start itself)."""


class WarmupConfig(BaseModel):
    """Supervised fine-tuning on demonstrations before iteration 1 (off unless a source is given)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    demonstrations: Path | None = Field(
        None,
        description="A JSONL (`.jsonl`) or Parquet (`.parquet`) file of conversations in the OpenAI chat format: "
        "one per row, `messages` (system, user, assistant with optional `tool_calls`, `tool` results) and `tools` "
        "(the function schemas offered). Relative paths are resolved against the project root. None: none.",
    )
    from_run: Path | None = Field(
        None,
        description="Rejection-sampling fine-tuning: an earlier run's folder (the successful episodes of all its "
        "`judged/iter_N.parquet`) or one judged Parquet file; its token ids must come from this run's model. "
        "Relative paths are resolved against the project root. None: none.",
    )
    epochs: int = Field(2, ge=1, le=1000, description="Passes over the demonstrations.")
    lr: float = Field(1e-5, gt=0, le=1.0, description="AdamW learning rate of the warm start (constant).")
    batch_size: int = Field(
        8, ge=1, le=100_000,
        description="Conversations (training samples) per optimizer step; each step is split into micro-batches "
        "of `train.micro_batch_tokens` padded tokens.",
    )
    max_conversations: int | None = Field(
        None, ge=1, le=10_000_000,
        description="Use at most this many usable conversations (the first ones read, demonstrations before "
        "`from_run` episodes). None: all.",
    )

    @model_validator(mode="after")
    def _known_suffix(self) -> WarmupConfig:
        if self.demonstrations is not None and self.demonstrations.suffix not in DEMONSTRATION_SUFFIXES:
            raise ValueError(f"demonstrations: '{self.demonstrations}' must end in .jsonl or .parquet")
        return self

    @property
    def enabled(self) -> bool:
        """Whether the run warm-starts (a demonstrations file or an earlier run is named)."""
        return self.demonstrations is not None or self.from_run is not None
