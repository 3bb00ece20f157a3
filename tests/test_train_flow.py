"""The training flow end to end on the tiny model: MLflow run, checkpoints, resume after SIGKILL."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient
from safetensors.torch import load_file

from reinflow.checkpoint import latest_checkpoint, list_checkpoints

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "tests" / "configs" / "tiny_e2e.yaml"


def _project(tmp_path: Path) -> Path:
    """A throwaway project root: the repo's code is importable, data and runs land in tmp."""
    (tmp_path / "configs").mkdir(parents=True)
    shutil.copy(CONFIG, tmp_path / "configs" / "tiny.yaml")
    return tmp_path


def _train(project: Path, *extra: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", "from reinflow.cli import main; main()", "train", "--conf", "configs/tiny.yaml", *extra]
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200", **(env or {})}
    out, log = project / "train.out", project / "train.log"
    # files, not pipes: a SIGKILLed CLI leaves Prefect's ephemeral server behind holding its pipes
    with out.open("w") as stdout, log.open("a") as stderr:
        process = subprocess.Popen(command, cwd=project, env=environment, stdout=stdout, stderr=stderr,
                                   start_new_session=True)
        try:
            returncode = process.wait(timeout=600)
        finally:
            _kill_group(process.pid)
    result = subprocess.CompletedProcess(command, returncode, out.read_text(), log.read_text())
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _kill_group(pgid: int) -> None:
    """Whatever the run left in its session (e.g. the ephemeral Prefect server after a SIGKILL)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def _run_dir(project: Path) -> Path:
    (run,) = (project / "runs" / "tiny_e2e").iterdir()
    return run


def _history(project: Path) -> dict[str, list[tuple[int, float]]]:
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'runs' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("tiny_e2e").experiment_id])
    keys = ["iteration", "reward_mean", "loss", "eval/pass_at_1", "trained_tokens", "generated_tokens"]
    return {key: sorted((m.step, round(m.value, 5)) for m in client.get_metric_history(run.info.run_id, key))
            for key in keys}


BACKBONES = {"debug": [], "ray": ["--backbone", "ray", "train.workers=2", "train.cpus_per_worker=1"]}


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
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config", "trajectories", "plots"} <= artifacts  # the policy is an MLflow 3 logged model, loaded below
    assert [a.path for a in client.list_artifacts(run.info.run_id, "plots")] == ["plots/reward_curve.png"]
    assert [iteration for iteration, _ in list_checkpoints(run_dir / "checkpoints")] == [1, 2]
    meta = json.loads((latest_checkpoint(run_dir / "checkpoints") / "meta.json").read_text())
    assert meta["extra"]["cursor"] == 4  # 2 iterations x 2 tasks
    # the final policy loads back from MLflow and generates
    mlflow.set_tracking_uri(f"sqlite:///{project / 'runs' / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/policy")
    (completion,) = model.predict(["What is 2 + 3?"])
    assert isinstance(completion, str)


def _final_state(project: Path) -> tuple[dict, dict]:
    checkpoint = latest_checkpoint(_run_dir(project) / "checkpoints")
    return load_file(str(checkpoint / "weights.safetensors")), json.loads((checkpoint / "meta.json").read_text())


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> Path:
    """One uninterrupted run, shared by the resume tests."""
    reference = _project(tmp_path_factory.mktemp("reference"))
    _train(reference)
    return reference


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["rollout", "judge", "update", "checkpoint", "tracking"])
def test_resume_after_sigkill_equals_an_uninterrupted_run(tmp_path, reference_run, stage):
    reference = reference_run
    crashed = _project(tmp_path / "crashed")
    killed = _train(crashed, env={"REINFLOW_CRASH_AT": f"{stage}:2"}, check=False)
    assert killed.returncode == -9, killed.stderr[-2000:]
    _train(crashed, "--resume", "latest")
    weights_a, meta_a = _final_state(reference)
    weights_b, meta_b = _final_state(crashed)
    assert meta_a["iteration"] == meta_b["iteration"] == 2
    assert meta_a["extra"]["cursor"] == meta_b["extra"]["cursor"] == 4
    assert weights_a.keys() == weights_b.keys()
    worst = max((weights_a[k] - weights_b[k]).abs().max().item() for k in weights_a)
    assert worst < 1e-5
    assert _history(reference) == _history(crashed)
