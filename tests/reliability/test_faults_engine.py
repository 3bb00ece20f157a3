"""The rollout engine raising mid-batch: the stage fails cleanly and re-runs whole on resume.

The decision (see ``reinflow/rollout/runner.py``): an engine failure is not an episode's failure. Were the
in-flight episodes recorded as ``failed``, their tasks would silently drop out of training (and the
dead engine would fail every later episode the same way). So the rollout stops with a one-line
error naming the iteration, how many episodes had finished and the engine's error; the iteration's
Parquet file is not published and nothing of the iteration is checkpointed or logged; the run exits
(no hang); ``--resume`` builds a new engine and rolls the same tasks out again.
"""

from __future__ import annotations

import re
import time

import pytest

from helpers.engine_fault import FAULT_ENV
from helpers.train_run import assert_run_is_whole, error_line, history, project, run_dir, train
from reinflow.run.checkpoint import list_checkpoints


@pytest.mark.slow
@pytest.mark.reliability("an engine failure mid-rollout loses nothing",
                         tried="the hf scheduler raising at a decode pass of iteration 2 with 6 episodes in flight")
def test_an_engine_error_mid_batch_fails_the_stage_and_resume_rolls_it_out_again(tmp_path):
    root = project(tmp_path)
    started = time.monotonic()
    failed = train(root, env={FAULT_ENV: "2:3"}, preload="helpers.engine_fault", check=False, timeout_s=400)
    print(f"failed run: {time.monotonic() - started:.0f} s, exit {failed.returncode}")
    assert failed.returncode == 2, failed.stderr[-3000:]
    line = error_line(failed)
    print(line)
    assert re.search(r"rollout of iteration 2 stopped after [0-5] of 6 episodes, none kept", line), line
    assert "InjectedEngineFault" in line and "--resume latest" in line
    folder = run_dir(root)
    assert not (folder / "rollouts" / "iter_2.parquet").exists()  # not published
    assert (folder / "rollouts" / "iter_2.parquet.partial").exists()  # kept for inspection
    assert [i for i, _ in list_checkpoints(folder / "checkpoints")] == [1]
    assert [step for step, _ in history(root)["iteration"]] == [0, 1]
    started = time.monotonic()
    train(root, "--resume", "latest")
    print(f"resumed run: {time.monotonic() - started:.0f} s")
    assert_run_is_whole(root)
