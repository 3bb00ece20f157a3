"""The data sources of the experiment config's ``data.source`` (a section of ``reinflow.config.experiment``):
the Hugging Face hub, local files, reasoning-gym. Their defaults live here, like every config default."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from reinflow.config.section import Section


class HubSource(Section):
    """A dataset on the Hugging Face hub (or any path `datasets.load_dataset` accepts)."""

    type: Literal["hub"] = Field("hub", description="The discriminator of this choice.")
    name: str = Field(description="Dataset id on the hub, e.g. `openai/gsm8k`, or a local dataset folder.")
    subset: str | None = Field(None, description="Dataset config name, e.g. `main` for GSM8K.")
    question_field: str = Field("question", description="Column holding the task text.")
    answer_field: str = Field("answer", description="Column holding the reference answer.")


class LocalSource(Section):
    """Local JSONL or Parquet files, one per split."""

    type: Literal["local"] = Field("local", description="The discriminator of this choice.")
    files: dict[str, Path] = Field(
        description="Split name → JSONL (`.jsonl`) or Parquet (`.parquet`) file; relative paths are "
        "resolved against the project root."
    )
    question_field: str = Field("question", description="Field holding the task text.")
    answer_field: str = Field("answer", description="Field holding the reference answer.")

    @model_validator(mode="after")
    def _known_suffixes(self) -> LocalSource:
        for split, path in self.files.items():
            if path.suffix not in (".jsonl", ".parquet"):
                raise ValueError(f"files.{split}: '{path}' must end in .jsonl or .parquet")
        return self


class ReasoningGymSource(Section):
    """Procedural tasks from `reasoning-gym` (offline), e.g. `basic_arithmetic`, `gsm_symbolic`."""

    type: Literal["reasoning_gym"] = Field("reasoning_gym", description="The discriminator of this choice.")
    name: str = Field(description="A reasoning-gym dataset name, e.g. `basic_arithmetic`.")
    sizes: dict[str, Annotated[int, Field(ge=1, le=10_000_000)]] = Field(
        description="Split name → number of tasks to generate, e.g. `{train: 512, test: 64}`."
    )
    seed: int = Field(0, ge=0, description="Generator seed; each split gets its own seed derived from it.")
    options: dict[str, Any] = Field(
        default_factory=dict, description="Extra keyword arguments for the reasoning-gym generator."
    )
