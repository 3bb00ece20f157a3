"""The driver SIGKILLed at each stage of an iteration, then resumed: the result equals a run that
was never interrupted (weights, data cursor, MLflow history), and the resumed run is whole.

``REINFLOW_CRASH_AT=<stage>:2`` (``reinflow/faults.py``) makes ``reinflow train`` SIGKILL itself in
iteration 2: after the rollout or the judge wrote its episodes but before the result was recorded,
after the update changed the weights in memory only, with half a checkpoint on disk, or between the
MLflow metrics and the checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.train_run import assert_run_is_whole, final_state, history, project, train


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> Path:
    """One uninterrupted run, shared by the resume tests."""
    reference = project(tmp_path_factory.mktemp("reference"))
    train(reference)
    return reference


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["rollout", "judge", "update", "checkpoint", "tracking"])
@pytest.mark.reliability("a killed driver resumes to the uninterrupted result",
                         tried="SIGKILL of `reinflow train` in rollout, judge, update, checkpoint write, MLflow logging")
def test_resume_after_sigkill_equals_an_uninterrupted_run(tmp_path, reference_run, stage):
    reference = reference_run
    crashed = project(tmp_path / "crashed")
    killed = train(crashed, env={"REINFLOW_CRASH_AT": f"{stage}:2"}, check=False)
    assert killed.returncode == -9, killed.stderr[-2000:]
    train(crashed, "--resume", "latest")
    weights_a, meta_a = final_state(reference)
    weights_b, meta_b = final_state(crashed)
    assert meta_a["iteration"] == meta_b["iteration"] == 2
    assert meta_a["extra"]["cursor"] == meta_b["extra"]["cursor"] == 4
    assert weights_a.keys() == weights_b.keys()
    worst = max((weights_a[k] - weights_b[k]).abs().max().item() for k in weights_a)
    assert worst < 1e-5
    assert history(reference) == history(crashed)
    assert_run_is_whole(crashed)
