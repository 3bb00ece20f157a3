"""The driver SIGKILLed while a rollout runs ahead of the update (``train.max_off_policy_steps: 1``),
then resumed: no rollout is lost or counted twice, and the result equals an uninterrupted run.

With ``k = 1`` the rollout of iteration 3 runs beside iteration 2's judge and update, on update 1's
weights. ``REINFLOW_CRASH_AT`` (``reinflow/faults.py``) kills the run:

- ``rollout:3``: rollout 3 wrote its episodes, its result not yet recorded (it runs again, whole);
- ``rollout_ahead:3``: rollout 3 finished and recorded, update 2 not yet checkpointed: the resumed
  run gets it back as it was (the same file, not sampled again, its ``policy_version`` 1);
- ``update:2``: update 2's weights in memory only, rollout 3 running or done beside it.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from helpers.train_run import (BACKBONES, assert_run_is_whole, final_state, history, mlflow_run, project, run_dir,
                               train)

AHEAD = ("train.max_off_policy_steps=1", "train.iterations=3")


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> Path:
    """One uninterrupted run with the rollout one iteration ahead, shared by the resume tests."""
    reference = project(tmp_path_factory.mktemp("reference-ahead"))
    train(reference, *AHEAD)
    return reference


def rollout_versions(project_root: Path) -> dict[int, set[int]]:
    """Iteration → the ``policy_version`` values its rollout's episodes recorded."""
    folder = run_dir(project_root) / "rollouts"
    return {int(path.stem.split("_")[1]): set(pq.read_table(path, columns=["policy_version"]).column(0).to_pylist())
            for path in folder.glob("iter_*.parquet")}


@pytest.mark.slow
@pytest.mark.reliability("an uninterrupted run with the rollout ahead samples on the weights one update old",
                         tried="train.max_off_policy_steps=1, 3 iterations: each rollout's policy_version and the "
                               "staleness logged")
def test_rollouts_run_one_update_behind(reference_run):
    assert rollout_versions(reference_run) == {1: {0}, 2: {0}, 3: {1}}
    assert_run_is_whole(reference_run, *AHEAD)
    client, run = mlflow_run(reference_run)
    staleness = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "staleness_max"))
    assert staleness == [(1, 0.0), (2, 1.0), (3, 1.0)]
    # update 1's and 2's weights are taken once their rollout ahead is done; the next rollout ahead
    # loads update 1's beside update 2 (logged at 2); update 3 has no rollout beside it and syncs at once
    steps = {key: sorted(m.step for m in client.get_metric_history(run.info.run_id, key))
             for key in ("weight_take_seconds", "weight_sync_seconds")}
    assert steps == {"weight_take_seconds": [1, 2], "weight_sync_seconds": [2, 3]}


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["rollout:3", "rollout_ahead:3", "update:2"])
@pytest.mark.reliability("a driver killed with a rollout in flight ahead of the update resumes to the "
                         "uninterrupted result, no rollout lost or counted twice",
                         tried="SIGKILL of `reinflow train` (max_off_policy_steps=1) in the rollout ahead before and "
                               "after its result was recorded, and in the update beside it")
def test_resume_with_a_rollout_ahead_equals_an_uninterrupted_run(tmp_path, reference_run, stage):
    crashed = project(tmp_path / "crashed")
    killed = train(crashed, *AHEAD, env={"REINFLOW_CRASH_AT": stage}, check=False)
    assert killed.returncode == -9, killed.stderr[-2000:]
    ahead_file = run_dir(crashed) / "rollouts" / "iter_3.parquet"
    finished_before = ahead_file.stat().st_ino if stage == "rollout_ahead:3" else None
    train(crashed, *AHEAD, "--resume", "latest")
    if finished_before is not None:  # the rollout that finished in flight was reused, not sampled again
        assert ahead_file.stat().st_ino == finished_before
    weights_a, meta_a = final_state(reference_run)
    weights_b, meta_b = final_state(crashed)
    assert meta_a["iteration"] == meta_b["iteration"] == 3
    assert meta_a["extra"]["cursor"] == meta_b["extra"]["cursor"] == 6
    worst = max((weights_a[k] - weights_b[k]).abs().max().item() for k in weights_a)
    assert worst < 1e-5
    assert history(reference_run) == history(crashed)
    assert rollout_versions(crashed) == rollout_versions(reference_run)
    assert_run_is_whole(crashed, *AHEAD)


@pytest.mark.slow
@pytest.mark.reliability("an uninterrupted run with the rollout ahead samples on the weights one update old",
                         tried="the same on the Ray backbone (2 policy workers), the rollout beside their update")
def test_rollouts_run_ahead_on_the_ray_backbone(tmp_path):
    ray_run = project(tmp_path)
    ray = ("backbone=ray", "train.workers=2", "train.cpus_per_worker=1")  # what BACKBONES["ray"] sets
    assert BACKBONES["ray"] == ["--backbone", "ray", *ray[1:]]
    train(ray_run, *AHEAD, *ray[1:], "--backbone", "ray")
    assert rollout_versions(ray_run) == {1: {0}, 2: {0}, 3: {1}}
    assert_run_is_whole(ray_run, *AHEAD, *ray)
