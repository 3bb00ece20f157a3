"""Checkpoints: exact resume on the tiny model (full and LoRA), atomicity under a failed write and a
killed writer's leftovers, keep-K pruning, and the config-fingerprint guard."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

import reinflow.run.checkpoint as checkpoint
from reinflow.run.checkpoint import (
    COMPLETE,
    CheckpointError,
    ConfigChangedError,
    latest_checkpoint,
    list_checkpoints,
    read_checkpoint,
    write_checkpoint,
)
from reinflow.config import ExperimentConfig
from reinflow.config.models import TINY_RANDOM_LLAMA, resolve_model
from reinflow.training.policy import PolicyTrainer
from reinflow.training.train_batch import TrainSample

LORA = {"type": "lora", "rank": 4, "alpha": 8.0, "dropout": 0.1, "target_modules": ["q_proj", "v_proj"]}


def make_config(tuning: dict | None = None, **train) -> ExperimentConfig:
    return ExperimentConfig.model_validate({
        "experiment": "test",
        "data": {"source": {"type": "reasoning_gym", "name": "basic_arithmetic", "sizes": {"train": 8, "test": 8}},
                 "path": "data/test"},
        "rollout": {"workflow": "agents.quickstart_agent->QuickstartAgent", "temperature": 0.8},
        "judge": {"protocol": "judges.math_answer->MathAnswerJudge"},
        "model": {"path": TINY_RANDOM_LLAMA, "tuning": tuning or {"type": "full"}},
        "train": {"lr": 1e-3, "warmup_iterations": 3, "weight_decay": 0.01} | train,
    })


def batch(seed: int) -> list[TrainSample]:
    rng = random.Random(seed)
    samples = []
    for k in range(6):
        prompt = [1] + [rng.randrange(2, 2000) for _ in range(4)]
        completion = [rng.randrange(2, 2000) for _ in range(rng.randint(2, 6))]
        ids = prompt + completion
        samples.append(TrainSample(ids, [0] * len(prompt) + [1] * len(completion), [0.0] * len(ids),
                                   rng.choice([-1.0, 0.5, 1.0]), f"e{seed}#{k}"))
    return samples


def tiny_state(value: float) -> dict:
    """A stand-in trainer state for the file-level tests (no model needed)."""
    return {"weights": {"w": torch.full((3, 2), value)}, "optimizer": {"step": torch.tensor(value)},
            "rng": {"python": random.getstate()}}


@pytest.mark.parametrize("tuning", [None, LORA], ids=["full", "lora"])
def test_resume_gives_the_uninterrupted_run(tmp_path, tuning):
    folder = resolve_model(TINY_RANDOM_LLAMA)
    config = make_config(tuning)
    uninterrupted = PolicyTrainer(config, folder)
    uninterrupted.train_step(batch(0))
    path = write_checkpoint(tmp_path, 1, uninterrupted.state(), {"cursor": 8}, fingerprint=config.fingerprint(),
                            keep=2)
    expected_draws = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    expected = uninterrupted.train_step(batch(1))

    random.seed(123), np.random.seed(123), torch.manual_seed(123)  # a "new process": other RNG states
    resumed = PolicyTrainer(config, folder)
    state, extra = read_checkpoint(latest_checkpoint(tmp_path), fingerprint=config.fingerprint())
    assert extra == {"cursor": 8, "iteration": 1, "config_fingerprint": config.fingerprint()}
    resumed.load_state(state)
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected_draws  # RNG restored
    metrics = resumed.train_step(batch(1))
    assert path == tmp_path / "iter_1"
    assert metrics["lr"] == expected["lr"] and metrics["loss"] == expected["loss"]
    for name, p in uninterrupted.parameters.items():
        assert torch.equal(resumed.parameters[name], p), name  # bit for bit


def test_a_failed_write_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    write_checkpoint(tmp_path, 1, tiny_state(1.0), {}, fingerprint="f", keep=3)
    real_save = torch.save

    def crash(obj, handle):  # the weights file is already written when torch.save runs
        assert (Path(handle.name).parent / checkpoint.WEIGHTS).is_file()
        real_save(obj, handle)
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        write_checkpoint(tmp_path, 2, tiny_state(2.0), {}, fingerprint="f", keep=3)
    assert latest_checkpoint(tmp_path) == tmp_path / "iter_1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["iter_1"]
    state, _ = read_checkpoint(tmp_path / "iter_1", fingerprint="f")
    assert torch.equal(state["weights"]["w"], torch.full((3, 2), 1.0))


def test_a_killed_writers_leftovers_are_ignored_then_cleaned(tmp_path):
    write_checkpoint(tmp_path, 1, tiny_state(1.0), {}, fingerprint="f", keep=3)
    dead_pid = 999_999_999
    leftover = tmp_path / f".tmp-iter_2-{dead_pid}"
    leftover.mkdir()
    (leftover / checkpoint.WEIGHTS).write_bytes(b"half a file")
    (leftover / COMPLETE).write_text("")  # even a finished temporary folder is not a checkpoint
    incomplete = tmp_path / "iter_3"  # e.g. copied by hand, no marker
    incomplete.mkdir()
    assert latest_checkpoint(tmp_path) == tmp_path / "iter_1"
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        read_checkpoint(incomplete, fingerprint="f")
    write_checkpoint(tmp_path, 2, tiny_state(2.0), {}, fingerprint="f", keep=3)
    assert not leftover.exists()
    assert latest_checkpoint(tmp_path) == tmp_path / "iter_2"


def test_keep_last_k_and_rewrite(tmp_path):
    for iteration in range(1, 6):
        write_checkpoint(tmp_path, iteration, tiny_state(float(iteration)), {"i": iteration}, fingerprint="f",
                         keep=2)
        assert [i for i, _ in list_checkpoints(tmp_path)] == list(range(max(1, iteration - 1), iteration + 1))
    # resuming from iter_4 and writing iteration 5 again replaces the old iter_5
    write_checkpoint(tmp_path, 5, tiny_state(50.0), {"i": 55}, fingerprint="f", keep=2)
    assert read_checkpoint(tmp_path / "iter_5", fingerprint="f")[1]["i"] == 55
    # writing an earlier iteration drops the later ones (another timeline)
    write_checkpoint(tmp_path, 3, tiny_state(3.0), {}, fingerprint="f", keep=2)
    assert [i for i, _ in list_checkpoints(tmp_path)] == [3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["iter_3"]
    assert latest_checkpoint(tmp_path / "missing") is None


def test_a_changed_config_is_refused_unless_allowed(tmp_path):
    write_checkpoint(tmp_path, 1, tiny_state(1.0), {}, fingerprint="aaaa1111", keep=1)
    with pytest.raises(ConfigChangedError) as error:
        read_checkpoint(tmp_path / "iter_1", fingerprint="bbbb2222")
    assert "aaaa1111" in str(error.value) and "bbbb2222" in str(error.value)
    _, extra = read_checkpoint(tmp_path / "iter_1", fingerprint="bbbb2222", allow_config_change=True)
    assert extra["config_fingerprint"] == "aaaa1111"
    with pytest.raises(ValueError, match="reserved"):
        write_checkpoint(tmp_path, 2, tiny_state(1.0), {"iteration": 2}, fingerprint="f", keep=1)


def test_checkpoint_files_are_plain_safetensors_and_torch(tmp_path):
    path = write_checkpoint(tmp_path, 7, tiny_state(7.0), {"run_id": "abc"}, fingerprint="f", keep=1)
    assert sorted(p.name for p in path.iterdir()) == sorted(
        [checkpoint.WEIGHTS, checkpoint.TRAINER_STATE, checkpoint.META, COMPLETE])
    assert os.stat(path / COMPLETE).st_size == 0
