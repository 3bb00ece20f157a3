"""The training flow end to end on the tiny model: MLflow run, checkpoints, the final policy.

Resume after SIGKILL: ``tests/reliability/test_faults_driver_kill.py``."""

from __future__ import annotations

import json
import re

import mlflow
import pytest
from mlflow import MlflowClient

from helpers.train_run import BACKBONES, history as _history, project as _project, run_dir as _run_dir, train as _train
from reinflow.run.checkpoint import latest_checkpoint, list_checkpoints


@pytest.mark.slow
@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_two_iterations(tmp_path, backbone):
    project = _project(tmp_path)
    result = _train(project, *BACKBONES[backbone])
    assert "held-out pass@1: baseline" in result.stdout
    run_dir = _run_dir(project)
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'runs' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("tiny_e2e").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.lr"] == "0.001" and run.data.params["rollout.group_size"] == "3"
    assert run.data.tags["reinflow.backbone"] == backbone
    history = _history(project)
    assert [step for step, _ in history["iteration"]] == [0, 1, 2]
    assert [step for step, _ in history["eval/pass_at_1"]] == [0, 2]
    assert [step for step, _ in history["reward_mean"]] == [1, 2]
    assert all(tokens > 0 for _, tokens in history["trained_tokens"])
    seconds = {stage: [m.step for m in client.get_metric_history(run.info.run_id, f"seconds/{stage}")]
               for stage in ("iteration", "rollout", "judge", "update", "evaluate", "checkpoint")}
    assert seconds == {"iteration": [1, 2], "rollout": [1, 2], "judge": [1, 2], "update": [1, 2],
                       "evaluate": [0, 2], "checkpoint": [1, 2]}
    assert "iter 2/2: reward" in result.stdout + result.stderr  # the one-line iteration summary
    assert "% outside rollout/judge/update/evaluate" in result.stdout
    # disk use per iteration (after the checkpoint) and in the summary; the final policy is stored once
    run_bytes = client.get_metric_history(run.info.run_id, "disk/run_bytes")
    assert [m.step for m in run_bytes] == [1, 2] and all(m.value > 0 for m in run_bytes)
    assert re.search(r"disk: +[\d.]+ GB left \(run folder \+ MLflow artifacts\), [\d.]+ GB written", result.stdout)
    # memory: the training process's resident set and its tree (Prefect's server included) per iteration
    memory = {key: client.get_metric_history(run.info.run_id, f"memory/{key}") for key in ("rss_bytes", "peak_rss_bytes",
                                                                                           "tree_rss_bytes")}
    assert all([m.step for m in history_] == [1, 2] for history_ in memory.values())
    assert all(peak.value >= rss.value > 1e8 for peak, rss in zip(memory["peak_rss_bytes"], memory["rss_bytes"]))
    assert all(tree.value > rss.value for tree, rss in zip(memory["tree_rss_bytes"], memory["rss_bytes"]))
    assert re.search(r"memory: +[\d.]+ GB peak resident", result.stdout)
    assert not (run_dir / "final_policy").exists()
    assert json.loads((run_dir / "final_policy.json").read_text())["model_uri"] == f"runs:/{run.info.run_id}/policy"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config", "trajectories", "plots"} <= artifacts  # the policy is an MLflow 3 logged model, loaded below
    assert [a.path for a in client.list_artifacts(run.info.run_id, "plots")] == ["plots/reward_curve.png"]
    assert [iteration for iteration, _ in list_checkpoints(run_dir / "checkpoints")] == [2]  # keep_checkpoints: 1
    meta = json.loads((latest_checkpoint(run_dir / "checkpoints") / "meta.json").read_text())
    assert meta["extra"]["cursor"] == 4  # 2 iterations x 2 tasks
    # the final policy loads back from MLflow and generates
    mlflow.set_tracking_uri(f"sqlite:///{project / 'runs' / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/policy")
    (completion,) = model.predict(["What is 2 + 3?"])
    assert isinstance(completion, str)
