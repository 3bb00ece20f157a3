"""Per-stage seconds, the one-line iteration summary and the run summary read back from MLflow."""

from __future__ import annotations

import time

import pytest
from mlflow import MlflowClient

from reinflow.tracking.summary import run_summary
from reinflow.run.stage_timer import iteration_summary, timed


def test_timed_adds_up_repeated_blocks_and_records_a_block_that_raised():
    seconds: dict[str, float] = {}
    for _ in range(2):
        with timed(seconds, "judge"):
            time.sleep(0.01)
    with pytest.raises(RuntimeError), timed(seconds, "update"):
        raise RuntimeError("boom")
    assert seconds["seconds/judge"] >= 0.02
    assert "seconds/update" in seconds


def test_iteration_summary_names_every_timed_stage_and_the_held_out_score():
    line = iteration_summary(10, 20, {
        "reward_mean": 0.5, "success_rate": 0.25, "eval/pass_at_1": 0.3, "seconds/iteration": 40.0,
        "seconds/rollout": 20.0, "seconds/judge": 0.5, "seconds/update": 15.0, "seconds/evaluate": 4.0,
    })
    assert line == ("iter 10/20: reward 0.500, success 25.0%, held-out pass@1 0.300, 40.0 s "
                    "(rollout 20.0, judge 0.5, update 15.0, evaluate 4.0)")


def test_run_summary_reads_baseline_final_and_time_shares_from_a_real_mlflow_store(tmp_path):
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = client.create_run(client.create_experiment("summary")).info.run_id
    start = client.get_run(run_id).info.start_time
    for step, (score, low, high) in {0: (0.2, 0.15, 0.26), 10: (0.4, 0.33, 0.47)}.items():
        for key, value in {"pass_at_1": score, "pass_at_1_ci_low": low, "pass_at_1_ci_high": high}.items():
            client.log_metric(run_id, f"eval/{key}", value, step=step)
    for step in (1, 2):
        for stage, value in {"rollout": 10.0, "judge": 1.0, "update": 8.0, "checkpoint": 0.5}.items():
            client.log_metric(run_id, f"seconds/{stage}", value, step=step)
    client.log_metric(run_id, "seconds/evaluate", 5.0, step=0)
    client.set_terminated(run_id, end_time=start + 50_000)
    summary = run_summary(client, run_id)
    assert summary["baseline_pass_at_1"] == (0.2, 0.15, 0.26)
    assert summary["final_pass_at_1"] == (0.4, 0.33, 0.47)
    assert summary["stage_seconds"] == {"rollout": 20.0, "judge": 2.0, "update": 16.0, "evaluate": 5.0, "checkpoint": 1.0}
    assert summary["wall_seconds"] == pytest.approx(50.0)
    assert summary["outside_share"] == pytest.approx(1 - 43 / 50)
