"""The warm start as a stage of the training flow, end to end on the tiny model: it runs before the
baseline evaluation, logs its metrics, ends with checkpoint iter_0 and changes the weights.
Resume after a SIGKILL in or after it: ``tests/reliability/test_faults_warmup_kill.py``."""

from __future__ import annotations

import re

import pytest
from helpers.train_run import mlflow_run, project, run_dir, train
from helpers.warmup_run import OVERRIDES, STEPS, write_demonstrations
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from reinflow.config.models import TINY_RANDOM_LLAMA, resolve_model
from reinflow.run.checkpoint import list_checkpoints


@pytest.mark.slow
def test_warm_start_runs_before_the_baseline_and_is_logged(tmp_path):
    root = project(tmp_path)
    write_demonstrations(root)
    result = train(root, *OVERRIDES, "train.keep_checkpoints=3")  # iter_0 kept to look at
    folder = run_dir(root)
    client, run = mlflow_run(root)

    def history(key: str) -> list[tuple[int, float]]:
        return [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]

    losses = history("warmup/loss")
    assert [step for step, _ in losses] == list(range(1, STEPS + 1))
    assert losses[-1][1] < losses[0][1]
    assert history("warmup/conversations") == [(0, 6.0)] and history("warmup/skipped/too_many_turns") == [(0, 1.0)]
    assert history("warmup/steps") == [(0, float(STEPS))] and history("warmup/tokens")[0][1] > 0
    assert [step for step, _ in history("warmup/seconds")] == [0] and [s for s, _ in history("seconds/warmup")] == [0]
    assert "6 conversations used (1 skipped: too_many_turns 1)" in result.stderr
    assert re.search(r"\(warmup \d+ s, rollout", result.stdout)  # the stage in the run summary
    # the warm start ends with checkpoint iter_0, written before the baseline evaluation started
    assert [i for i, _ in list_checkpoints(folder / "checkpoints")] == [0, 1, 2]
    written = (folder / "checkpoints" / "iter_0" / "COMPLETE").stat().st_mtime
    assert written <= min(p.stat().st_mtime for p in (folder / "eval" / "iter_0").iterdir())
    assert result.stderr.index("warm start: ") < result.stderr.index("iter-0: held-out pass@1")
    # and it changed the weights
    warm = load_file(str(folder / "checkpoints" / "iter_0" / "weights.safetensors"))
    base = AutoModelForCausalLM.from_pretrained(resolve_model(TINY_RANDOM_LLAMA)).state_dict()
    assert any(not warm[name].equal(base[name]) for name in warm)
