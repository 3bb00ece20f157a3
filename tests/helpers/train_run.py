"""`reinflow train` as a subprocess on the tiny model, and what a finished run must look like.

Shared by the end-to-end training tests (``tests/test_train_flow.py``) and the fault battery
(``tests/reliability/test_faults_*.py``). Runs land in a throwaway project root; output goes to
files, not pipes (a SIGKILLed CLI leaves Prefect's ephemeral server behind holding its pipes), and
the whole process group is killed afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
from mlflow import MlflowClient
from safetensors.torch import load_file

from reinflow.run.checkpoint import latest_checkpoint, list_checkpoints, read_checkpoint
from reinflow.config import load_config
from reinflow.data.task_cursor import next_tasks

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "tests" / "configs" / "tiny_e2e.yaml"
EXPERIMENT = "tiny_e2e"
TRAIN_TIMEOUT_S = 600
BACKBONES = {"debug": [], "ray": ["--backbone", "ray", "train.workers=2", "train.cpus_per_worker=1"]}


def project(tmp_path: Path) -> Path:
    """A throwaway project root: the repo's code is importable, data and runs land in tmp."""
    (tmp_path / "configs").mkdir(parents=True)
    shutil.copy(CONFIG, tmp_path / "configs" / "tiny.yaml")
    return tmp_path


def train(project_root: Path, *extra: str, env: dict | None = None, check: bool = True,
          preload: str | None = None, timeout_s: float = TRAIN_TIMEOUT_S) -> subprocess.CompletedProcess:
    """``reinflow train --conf configs/tiny.yaml *extra`` in ``project_root``; ``preload`` is a module
    of ``tests/`` imported first (a fault injector). Output is in ``train.out`` / ``train.log``."""
    code = (f"import {preload}; " if preload else "") + "from cli.app import main; main()"
    command = [sys.executable, "-c", code, "train", "--conf", "configs/tiny.yaml", *extra]
    paths = os.pathsep.join([str(ROOT), str(ROOT / "tests")])
    environment = {**os.environ, "PYTHONPATH": paths, "COLUMNS": "200", **(env or {})}
    out, log = project_root / "train.out", project_root / "train.log"
    with out.open("w") as stdout, log.open("a") as stderr:
        process = subprocess.Popen(command, cwd=project_root, env=environment, stdout=stdout, stderr=stderr,
                                   start_new_session=True)
        try:
            returncode = process.wait(timeout=timeout_s)
        finally:
            kill_group(process.pid)
    result = subprocess.CompletedProcess(command, returncode, out.read_text(), log.read_text())
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def kill_group(pgid: int) -> None:
    """Whatever the run left in its session (e.g. the ephemeral Prefect server after a SIGKILL)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def error_line(result: subprocess.CompletedProcess) -> str:
    """The CLI's one-line ``error:`` message (the last such line of its stderr)."""
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert lines, f"no 'error:' line in the output:\n{result.stderr[-3000:]}"
    return lines[-1]


def run_dir(project_root: Path) -> Path:
    (run,) = (project_root / "runs" / EXPERIMENT).iterdir()
    return run


def mlflow_run(project_root: Path):
    client = MlflowClient(tracking_uri=f"sqlite:///{project_root / 'runs' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    return client, run


def history(project_root: Path) -> dict[str, list[tuple[int, float]]]:
    """The headline metrics' ``(step, value)`` histories."""
    client, run = mlflow_run(project_root)
    keys = ["iteration", "reward_mean", "loss", "eval/pass_at_1", "trained_tokens", "generated_tokens"]
    return {key: sorted((m.step, round(m.value, 5)) for m in client.get_metric_history(run.info.run_id, key))
            for key in keys}


def final_state(project_root: Path) -> tuple[dict, dict]:
    checkpoint = latest_checkpoint(run_dir(project_root) / "checkpoints")
    return load_file(str(checkpoint / "weights.safetensors")), json.loads((checkpoint / "meta.json").read_text())


def assert_run_is_whole(project_root: Path, *overrides: str) -> None:
    """A run that was interrupted and resumed looks like one that never was: every iteration's
    rollout holds exactly its tasks (the cursor's next ones, ``group_size`` episodes each, none
    failed), the checkpoints are the last ``train.keep_checkpoints`` of iterations 1..N and the last loads with the run's config, the
    cursor is N x tasks_per_iteration, and every MLflow metric has each step at most once, with
    the iteration sentinel at 0..N, rewards at 1..N. A run that warm-starts also has checkpoint 0."""
    config = load_config(project_root / "configs" / "tiny.yaml", list(overrides))
    iterations, per_iteration = config.train.iterations, config.data.tasks_per_iteration
    folder = run_dir(project_root)
    for iteration in range(1, iterations + 1):
        _assert_rollout_holds_its_tasks(project_root, config, folder, iteration, (iteration - 1) * per_iteration)
    first = 0 if config.warmup.enabled else 1  # a warm start writes checkpoint iter_0
    kept = list(range(first, iterations + 1))[-config.train.keep_checkpoints:]  # the last keep_checkpoints
    assert [i for i, _ in list_checkpoints(folder / "checkpoints")] == kept
    assert not [p.name for p in (folder / "checkpoints").iterdir() if p.name.startswith(".")], "leftover temp folder"
    state, extra = read_checkpoint(latest_checkpoint(folder / "checkpoints"), fingerprint=config.fingerprint())
    assert extra["iteration"] == iterations and extra["cursor"] == iterations * per_iteration
    assert state["weights"] and all(t.isfinite().all() for t in state["weights"].values())
    client, run = mlflow_run(project_root)
    assert run.info.status == "FINISHED"
    for key in run.data.metrics:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert len(steps) == len(set(steps)), f"MLflow metric {key} has duplicate steps: {sorted(steps)}"
    steps = history(project_root)
    assert [s for s, _ in steps["iteration"]] == list(range(iterations + 1))
    assert [s for s, _ in steps["reward_mean"]] == list(range(1, iterations + 1))


def _assert_rollout_holds_its_tasks(project_root: Path, config, folder: Path, iteration: int, cursor: int) -> None:
    tasks, _ = next_tasks(project_root / config.data.path, config.data.train_split, cursor,
                          config.data.tasks_per_iteration)
    table = pq.read_table(folder / "rollouts" / f"iter_{iteration}.parquet",
                          columns=["iteration", "task_id", "status"]).to_pylist()
    expected = sorted(t.task_id for t in tasks for _ in range(config.rollout.group_size))
    assert sorted(row["task_id"] for row in table) == expected, f"iteration {iteration}: wrong tasks"
    assert {row["iteration"] for row in table} == {iteration}
    assert [row["status"] for row in table if row["status"] != "ok"] == [], f"iteration {iteration}: failed episodes"

