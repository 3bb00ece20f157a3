"""From a judged rollout file to the samples of one policy update, and their micro-batches.

Pure: reads one Parquet file (``reinflow.rollout.episode_schema.JUDGED_SCHEMA``), no model, no torch state.

Which episodes train:

- An episode takes part only if its ``status`` is ``ok`` and its ``reward`` is a number; failed or
  timed-out episodes and episodes the judge excluded (``reward`` NaN or null) drop out of the
  batch *and* of their group's statistics (``grpo.group_advantages`` treats them as NaN).
- Each remaining episode gets its group's (``task_id``'s) relative advantage, and every sample of
  the episode (its merged turns) carries that advantage.
- A sample whose advantage is exactly 0 (its group had no signal: all valid rewards equal) has a
  zero policy gradient, so it is left out of the batch and counted (``samples_without_signal``).
  Exception: with ``kl_coef > 0`` its KL term still has a gradient, so it is kept.

The loss normaliser (what ``token_mean`` / ``sequence_mean`` divide by) counts the trained tokens
(sequences) of **every sample of every valid episode, left-out zero-advantage samples included**
(``metrics["loss_normalizer"]``; pass it to ``PolicyTrainer.train_step``). So leaving them out
is only a compute saving: the update is exactly the GRPO loss over the whole judged batch, as
``reinflow.training.grpo`` documents (its point 6: groups without signal stay in the normaliser). The
alternative, dividing by the kept samples only, would scale the step up whenever many groups are
solved or hopeless — an advantage-dependent step size; ours is Dr. GRPO's "divide by a number that
does not depend on which groups carry signal", within the batch. Excluded and failed episodes are
outside the objective and outside the normaliser.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import torch

from reinflow.training import grpo
from reinflow.config import TrainConfig

_COLUMNS = ["episode_id", "task_id", "status", "reward", "samples"]


@dataclass(frozen=True)
class TrainSample:
    """One training sequence: ``T`` token ids with per-token flags and the engine's log-probs.

    ``loss_mask[t] == 1`` where the policy generated ``token_ids[t]`` (``loss_mask[0]`` is always
    0: the first token has nothing before it). ``engine_logprobs[t]`` is the rollout engine's
    log-prob of ``token_ids[t]`` at the sampling temperature (0.0 where masked).
    """

    token_ids: list[int]
    loss_mask: list[int]
    engine_logprobs: list[float]
    advantage: float
    episode_id: str

    def __post_init__(self) -> None:
        if not len(self.token_ids) == len(self.loss_mask) == len(self.engine_logprobs):
            raise ValueError(
                f"sample of {self.episode_id}: token_ids ({len(self.token_ids)}), loss_mask "
                f"({len(self.loss_mask)}) and engine_logprobs ({len(self.engine_logprobs)}) differ in length"
            )
        if self.loss_mask and self.loss_mask[0]:
            raise ValueError(f"sample of {self.episode_id}: loss_mask[0] is 1, but the first token has no context")

    @property
    def trained_tokens(self) -> int:
        """Tokens carrying loss (after the one-token shift, the same count: ``loss_mask[0]`` is 0)."""
        return sum(1 for flag in self.loss_mask if flag)


def load_train_batch(judged_path: Path, train: TrainConfig) -> tuple[list[TrainSample], dict[str, float]]:
    """Read ``judged/iter_N.parquet`` and return the samples to train on and batch metrics.

    Metrics: ``episodes``, ``episodes_valid``, ``groups``, ``groups_without_signal``,
    ``samples_total`` (of valid episodes), ``samples_trained``, ``samples_without_signal`` (left
    out, zero advantage), ``trained_tokens`` (of kept samples), ``loss_normalizer`` (see the module
    docstring; 0 when nothing in the batch can train), ``advantage_abs_mean`` (over valid episodes).
    """
    table = pq.read_table(judged_path, columns=_COLUMNS)
    rows = table.to_pylist()
    advantages, groups_without_signal, groups = episode_advantages(rows, train.normalize_advantage_std)
    keep_zero = train.kl_coef > 0
    kept: list[TrainSample] = []
    without_signal = 0
    normalizer_mask: list[list[int]] = []
    valid = 0
    for row, advantage in zip(rows, advantages):
        if advantage is None:
            continue
        valid += 1
        for sample in row["samples"] or []:
            normalizer_mask.append(sample["loss_mask"])
            if advantage == 0.0 and not keep_zero:
                without_signal += 1
                continue
            kept.append(_train_sample(sample, advantage, row["episode_id"]))
    valid_advantages = [abs(a) for a in advantages if a is not None]
    metrics = {
        "episodes": float(len(rows)),
        "episodes_valid": float(valid),
        "groups": float(groups),
        "groups_without_signal": float(groups_without_signal),
        "samples_total": float(len(normalizer_mask)),
        "samples_trained": float(len(kept)),
        "samples_without_signal": float(without_signal),
        "trained_tokens": float(sum(s.trained_tokens for s in kept)),
        "loss_normalizer": float(_normalizer(normalizer_mask, train.loss_aggregation)),
        "advantage_abs_mean": sum(valid_advantages) / len(valid_advantages) if valid_advantages else 0.0,
    }
    return kept, metrics


def episode_advantages(rows: list[dict], normalize_std: bool) -> tuple[list[float | None], int, int]:
    """Group-relative advantage per episode row (``None`` where the episode does not take part).

    Returns ``(advantages, groups_without_signal, groups)``; groups are counted over valid
    episodes only (a task all of whose episodes failed is no group).
    """
    valid = [_is_valid(row) for row in rows]
    task_index: dict[str, int] = {}
    group_ids = [task_index.setdefault(row["task_id"], len(task_index)) for row in rows]
    rewards = torch.tensor([row["reward"] if ok else math.nan for row, ok in zip(rows, valid)], dtype=torch.float64)
    advantages, _ = grpo.group_advantages(rewards, torch.tensor(group_ids, dtype=torch.long), normalize_std)
    valid_groups = {g for g, ok in zip(group_ids, valid) if ok}
    signal_groups = {g for g, ok, a in zip(group_ids, valid, advantages.tolist()) if ok and a != 0.0}
    values = [a if ok else None for ok, a in zip(valid, advantages.tolist())]
    return values, len(valid_groups - signal_groups), len(valid_groups)


def _is_valid(row: dict) -> bool:
    reward = row["reward"]
    return row["status"] == "ok" and reward is not None and math.isfinite(reward)


def _train_sample(sample: dict, advantage: float, episode_id: str) -> TrainSample:
    return TrainSample(
        token_ids=list(sample["token_ids"]),
        loss_mask=list(sample["loss_mask"]),
        engine_logprobs=list(sample["logprobs"]),
        advantage=float(advantage),
        episode_id=episode_id,
    )


def _normalizer(masks: list[list[int]], aggregation: grpo.Aggregation) -> int:
    """What ``grpo.aggregate`` divides by (trained tokens, or sequences with a trained token),
    over ragged masks, without padding them into one tensor."""
    if aggregation == "token_mean":
        return sum(sum(1 for flag in mask if flag) for mask in masks)
    if aggregation == "sequence_mean":
        return sum(1 for mask in masks if any(mask))
    raise ValueError(f"aggregation must be 'token_mean' or 'sequence_mean', got {aggregation!r}")


def batch_normalizer(samples: list[TrainSample], aggregation: grpo.Aggregation) -> int:
    """The loss normaliser of exactly these samples (what ``train_step`` uses when given none)."""
    return _normalizer([s.loss_mask for s in samples], aggregation)


def micro_batches(samples: list[TrainSample], micro_batch_tokens: int) -> list[list[TrainSample]]:
    """Pack samples into micro-batches of at most ``micro_batch_tokens`` *padded* tokens.

    A micro-batch of rows ``r`` right-padded to its longest sample ``L`` costs ``L * r`` tokens,
    which stays ``<= micro_batch_tokens``; a sample longer than the budget gets a micro-batch of
    its own. Samples are taken longest first (stable for equal lengths), so rows of similar length
    share a micro-batch and padding is small. Deterministic: the result depends only on the
    samples' order and lengths. Every sample appears exactly once.
    """
    if micro_batch_tokens < 1:
        raise ValueError(f"micro_batch_tokens must be >= 1, got {micro_batch_tokens}")
    order = sorted(range(len(samples)), key=lambda i: -len(samples[i].token_ids))
    batches: list[list[TrainSample]] = []
    longest = 0
    for index in order:
        sample = samples[index]
        if batches and longest * (len(batches[-1]) + 1) <= micro_batch_tokens:
            batches[-1].append(sample)
            continue
        batches.append([sample])
        longest = len(sample.token_ids)
    return batches
