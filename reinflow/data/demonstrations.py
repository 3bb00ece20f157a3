"""The warm start's training conversations: a demonstrations file, or an earlier run's successes.

- **A demonstrations file** (``warmup.demonstrations``): JSONL or Parquet, one OpenAI-format
  conversation per row (``reinflow.rollout.openai_chat``), each rendered into token samples exactly
  as the rollout would have produced it (``reinflow.rollout.demonstration``).
- **An earlier run** (``warmup.from_run``, rejection-sampling fine-tuning): the episodes of its
  ``judged/iter_N.parquet`` files that succeeded (``status`` ok, ``is_success`` true), whose
  samples already hold the token ids and loss masks the policy generated.

A row that cannot be used is skipped and counted by reason, like a broken data row (the first
few are kept as examples); a source with no usable row at all raises :class:`DemonstrationsError`,
one line naming it.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from reinflow.config import RolloutConfig
from reinflow.data.sources import DataSourceError, iter_file_rows
from reinflow.errors import ReinflowError, one_line
from reinflow.rollout.chat_format import ChatTemplate
from reinflow.rollout.demonstration import TOO_LONG, render_demonstration
from reinflow.rollout.openai_chat import BAD_FORMAT, BadDemonstration
from reinflow.rollout.trajectory import Sample

EXAMPLES_KEPT = 5
"""Skipped rows reported with their reason and detail (the rest are only counted)."""
NOT_SUCCESSFUL = "not_successful"
"""An earlier run's episode that failed, was excluded or did not succeed (not a demonstration)."""
_ITERATION = re.compile(r"^iter_(\d+)\.parquet$")


class DemonstrationsError(ReinflowError):
    """A demonstrations source that cannot be read or holds no usable conversation."""


@dataclass
class DemonstrationSet:
    """The usable conversations of one source, as samples, and what was skipped."""

    source: str
    conversations: list[list[Sample]] = field(default_factory=list)
    """The samples of each conversation (episode) used; one may give several samples."""
    read: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def skip(self, row: int, reason: str, detail: str) -> None:
        """Count a row that is not used."""
        self.skipped[reason] += 1
        if len(self.examples) < EXAMPLES_KEPT and reason != NOT_SUCCESSFUL:
            self.examples.append(f"row {row}: {reason}: {detail}")

    def summary(self) -> str:
        """One line: rows read, conversations used, skipped rows by reason."""
        reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(self.skipped.items()))
        skipped = f" ({sum(self.skipped.values())} skipped: {reasons})" if self.skipped else ""
        return f"{self.source}: {self.read} rows read, {len(self.conversations)} conversations used{skipped}"

    def require_some(self) -> DemonstrationSet:
        """This set, or a one-line :class:`DemonstrationsError` when nothing in it is usable."""
        if not self.conversations:
            first = f"; first: {self.examples[0]}" if self.examples else ""
            raise DemonstrationsError(f"no usable demonstration in {self.summary()}{first}")
        return self


def load_demonstrations(path: Path, template: ChatTemplate, rollout: RolloutConfig) -> DemonstrationSet:
    """Every usable conversation of a JSONL or Parquet demonstrations file, rendered for ``template``."""
    found = DemonstrationSet(str(path))
    try:
        rows = iter_file_rows(path)
        for raw in rows:
            found.read += 1
            if raw.fields is None:
                found.skip(raw.index, str(raw.unreadable), raw.detail)
                continue
            try:
                samples = render_demonstration(raw.fields, template, rollout)
            except BadDemonstration as bad:
                found.skip(raw.index, bad.reason, bad.detail)
                continue
            found.conversations.append(samples)
    except DataSourceError as error:
        raise DemonstrationsError(f"demonstrations: {error}") from None
    return found.require_some()


def load_run_successes(path: Path, max_model_len: int) -> DemonstrationSet:
    """The successful episodes of an earlier run's folder (all its ``judged/iter_N.parquet``) or of
    one judged file, as samples (rejection-sampling fine-tuning)."""
    files = judged_files(path)
    found = DemonstrationSet(str(path))
    for file in files:
        try:
            table = pq.read_table(file, columns=["status", "is_success", "samples"])
        except (pa.ArrowInvalid, OSError, KeyError) as error:
            raise DemonstrationsError(f"warmup.from_run: cannot read judged episodes {file}: {one_line(error)}") from None
        _add_successes(found, table.to_pylist(), max_model_len)
    return found.require_some()


def judged_files(path: Path) -> list[Path]:
    """``path`` itself when it is a file, else its ``judged/iter_N.parquet`` files by iteration."""
    if path.is_file():
        return [path]
    files = [p for p in (path / "judged").glob("iter_*.parquet") if _ITERATION.match(p.name)]
    if not files:
        raise DemonstrationsError(f"warmup.from_run: {path} is neither a judged Parquet file nor a run folder "
                                  "with judged/iter_N.parquet files")
    return sorted(files, key=lambda p: int(_ITERATION.match(p.name).group(1)))


def _add_successes(found: DemonstrationSet, rows: Iterable[dict[str, Any]], max_model_len: int) -> None:
    for row in rows:
        index = found.read
        found.read += 1
        if row["status"] != "ok" or row["is_success"] is not True:
            found.skip(index, NOT_SUCCESSFUL, "not a successful episode")
            continue
        samples = [_episode_sample(sample) for sample in row["samples"] or []]
        problem = _sample_problem(samples, max_model_len)
        if problem is not None:
            found.skip(index, *problem)
            continue
        found.conversations.append(samples)


def _episode_sample(sample: dict[str, Any]) -> Sample:
    return Sample(token_ids=list(sample["token_ids"]), loss_mask=[int(flag) for flag in sample["loss_mask"]],
                  logprobs=[0.0] * len(sample["token_ids"]))


def _sample_problem(samples: list[Sample], max_model_len: int) -> tuple[str, str] | None:
    """``(reason, detail)`` when an episode's samples cannot train, else None."""
    if not any(sample.num_trained_tokens for sample in samples):
        return "no_assistant_turn", "the episode has no generated token"
    for sample in samples:
        if len(sample.loss_mask) != len(sample.token_ids) or (sample.loss_mask and sample.loss_mask[0]):
            return BAD_FORMAT, "a sample's loss mask does not fit its token ids"
        if len(sample.token_ids) > max_model_len:
            return TOO_LONG, f"a sample of {len(sample.token_ids)} tokens, rollout.max_model_len is {max_model_len}"
    return None
