"""The driver SIGKILLed in the middle of the warm start, or in the first iteration after it, then
resumed: the result equals a warm-started run that was never interrupted, the warm start ran
again only where it had not finished, and no warm-start metric is logged twice.

``REINFLOW_CRASH_AT=warmup:3`` kills ``reinflow train`` after the warm start's third optimizer
step (no checkpoint yet: it starts again from the beginning); ``rollout:1`` after its checkpoint
``iter_0`` (the resumed run skips it).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.train_run import assert_run_is_whole, final_state, history, mlflow_run, project, train
from helpers.warmup_run import OVERRIDES, STEPS, write_demonstrations


def warm_project(path: Path) -> Path:
    root = project(path)
    write_demonstrations(root)
    return root


def warmup_losses(root: Path) -> list[tuple[int, float]]:
    client, run = mlflow_run(root)
    return sorted((m.step, round(m.value, 5)) for m in client.get_metric_history(run.info.run_id, "warmup/loss"))


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> Path:
    """One uninterrupted warm-started run, shared by the resume tests."""
    reference = warm_project(tmp_path_factory.mktemp("reference"))
    train(reference, *OVERRIDES)
    return reference


@pytest.mark.slow
@pytest.mark.parametrize(("crash_at", "warms_again"), [("warmup:3", True), ("rollout:1", False)])
@pytest.mark.reliability("a killed driver resumes to the uninterrupted result",
                         tried="SIGKILL of `reinflow train` in the middle of the warm start and just after it")
def test_resume_after_sigkill_in_or_after_the_warm_start(tmp_path, reference_run, crash_at, warms_again):
    crashed = warm_project(tmp_path / "crashed")
    killed = train(crashed, *OVERRIDES, env={"REINFLOW_CRASH_AT": crash_at}, check=False)
    assert killed.returncode == -9, killed.stderr[-2000:]
    log_before = (crashed / "train.log").read_text()
    resumed = train(crashed, *OVERRIDES, "--resume", "latest")
    assert ("warm start: " in resumed.stderr[len(log_before):]) is warms_again
    weights_a, meta_a = final_state(reference_run)
    weights_b, meta_b = final_state(crashed)
    assert meta_a["iteration"] == meta_b["iteration"] == 2
    worst = max((weights_a[k] - weights_b[k]).abs().max().item() for k in weights_a)
    assert worst < 1e-5
    assert history(reference_run) == history(crashed)
    assert warmup_losses(crashed) == warmup_losses(reference_run) and len(warmup_losses(crashed)) == STEPS
    assert_run_is_whole(crashed, *OVERRIDES)
