"""From a hand-built judged file to training samples: advantages, exclusions, zero-signal samples,
the loss normaliser, and micro-batch packing."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from reinflow.config import TrainConfig
from reinflow.rollout.episode_schema import JUDGED_SCHEMA
from reinflow.training.train_batch import TrainSample, load_train_batch, micro_batches


def sample(prompt: int, generated: int, first: int = 10) -> dict:
    """A sample of ``prompt`` masked tokens then ``generated`` trained ones."""
    ids = list(range(first, first + prompt + generated))
    return {"token_ids": ids, "loss_mask": [0] * prompt + [1] * generated,
            "logprobs": [0.0] * prompt + [-1.0] * generated}


def episode(task: str, k: int, reward: float | None, status: str = "ok", samples: list[dict] | None = None) -> dict:
    return {"iteration": 0, "task_id": task, "episode_id": f"{task}#{k}", "group_index": k, "status": status,
            "reward": reward, "samples": samples if samples is not None else [sample(3, 2)]}


def write_judged(path: Path, rows: list[dict]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows, schema=JUDGED_SCHEMA), path)
    return path


def test_group_advantages_exclusions_and_zero_signal(tmp_path):
    rows = [
        # task a: rewards 1, 0, NaN (judge error), failed -> mean over (1, 0) = 0.5
        episode("a", 0, 1.0, samples=[sample(3, 2), sample(4, 3)]),
        episode("a", 1, 0.0),
        episode("a", 2, math.nan),
        episode("a", 3, None, status="failed"),
        # task b: all equal -> no signal, samples left out but counted and in the normaliser
        episode("b", 0, 1.0, samples=[sample(2, 5)]),
        episode("b", 1, 1.0, samples=[sample(2, 4)]),
        # task c: only one valid reward -> no signal
        episode("c", 0, 0.3),
        episode("c", 1, math.nan),
    ]
    samples, metrics = load_train_batch(write_judged(tmp_path / "j.parquet", rows), TrainConfig())
    by_episode = {}
    for s in samples:
        by_episode.setdefault(s.episode_id, []).append(s.advantage)
    assert by_episode == {"a#0": [0.5, 0.5], "a#1": [-0.5]}
    assert metrics["episodes"] == 8 and metrics["episodes_valid"] == 5
    assert metrics["groups"] == 3 and metrics["groups_without_signal"] == 2
    assert metrics["samples_without_signal"] == 3 and metrics["samples_trained"] == 3
    assert metrics["trained_tokens"] == 2 + 3 + 2
    # normaliser: trained tokens of every valid episode's samples, zero-advantage ones included
    assert metrics["loss_normalizer"] == 2 + 3 + 2 + 5 + 4 + 2


def test_std_normalisation_sequence_mean_and_kl_keeps_zero_signal(tmp_path):
    rows = [episode("a", 0, 2.0), episode("a", 1, 0.0), episode("b", 0, 1.0), episode("b", 1, 1.0)]
    path = write_judged(tmp_path / "j.parquet", rows)
    train = TrainConfig(normalize_advantage_std=True, loss_aggregation="sequence_mean", kl_coef=0.1)
    samples, metrics = load_train_batch(path, train)
    # std of (2, 0) (unbiased) = sqrt(2): advantages ±1/sqrt(2)
    assert [round(s.advantage, 5) for s in samples] == [round(1 / math.sqrt(2), 5), round(-1 / math.sqrt(2), 5), 0, 0]
    assert metrics["samples_without_signal"] == 0  # KL still has a gradient: kept
    assert metrics["loss_normalizer"] == 4  # sequences


def test_sample_validation():
    with pytest.raises(ValueError, match="differ in length"):
        TrainSample([1, 2], [0, 1], [0.0], 1.0, "e")
    with pytest.raises(ValueError, match="loss_mask\\[0\\]"):
        TrainSample([1, 2], [1, 1], [0.0, 0.0], 1.0, "e")


def _samples(lengths: list[int]) -> list[TrainSample]:
    return [TrainSample(list(range(n)), [0] * n, [0.0] * n, 1.0, f"e{i}") for i, n in enumerate(lengths)]


def test_micro_batches_respect_the_padded_token_budget():
    rng = random.Random(0)
    lengths = [rng.randint(1, 300) for _ in range(200)] + [700, 1000]
    samples = _samples(lengths)
    batches = micro_batches(samples, micro_batch_tokens=512)
    assert sorted(id(s) for b in batches for s in b) == sorted(id(s) for s in samples)  # each exactly once
    for batch in batches:
        longest = max(len(s.token_ids) for s in batch)
        assert longest * len(batch) <= 512 or len(batch) == 1
    assert [len(b) for b in batches[:2]] == [1, 1]  # the two over-long samples alone
    assert micro_batches(samples, 512) == batches  # deterministic
    assert micro_batches([], 512) == []


def test_micro_batches_fill_greedily():
    batches = micro_batches(_samples([10, 10, 10, 10, 5]), micro_batch_tokens=30)
    assert [[len(s.token_ids) for s in b] for b in batches] == [[10, 10, 10], [10, 5]]
