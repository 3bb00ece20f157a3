"""MLflow tracking: one MLflow run per training run, resumable without duplicate or missing steps.

Each iteration's metrics go in one ``log_batch`` call (one database transaction on the SQL
stores) together with the sentinel metric ``iteration``; before logging step N the sentinel's
history is checked, so an iteration re-run after a crash is not logged twice.
"""

from __future__ import annotations

import json
import math
import subprocess
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from reinflow.config import ExperimentConfig

SENTINEL = "iteration"
"""The metric logged with every iteration's batch: the steps it has are the iterations logged."""
MAX_PARAM_CHARS = 6000
"""The longest param value MLflow accepts (its ``MAX_PARAM_VAL_LENGTH``); longer values are cut."""


def client_for(config: ExperimentConfig, project_root: Path) -> MlflowClient:
    """A client on the configured tracking URI; a relative ``sqlite:///`` path is resolved against
    the project root and its folder created."""
    return MlflowClient(tracking_uri=tracking_uri(config, project_root))


def tracking_uri(config: ExperimentConfig, project_root: Path) -> str:
    """The tracking URI with relative SQLite paths made absolute (so any working directory works)."""
    uri = config.tracking.mlflow_uri
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        path = (project_root / uri.removeprefix(prefix)).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        return prefix + str(path)
    return uri


def start_run(client: MlflowClient, config: ExperimentConfig, run_name: str, project_root: Path) -> str:
    """Create the MLflow run of a new training run: params = the flattened config, tags = backbone,
    model, git commit, reinflow version. Returns the run id."""
    experiment = client.get_experiment_by_name(config.mlflow_experiment)
    if experiment is not None:
        experiment_id = experiment.experiment_id
    else:
        artifacts = (project_root / config.tracking.run_dir / "mlartifacts").resolve()
        experiment_id = client.create_experiment(config.mlflow_experiment, artifact_location=artifacts.as_uri())
    tags = {
        "mlflow.runName": run_name,
        "reinflow.backbone": config.backbone,
        "reinflow.model": config.model.path,
        "reinflow.version": version("reinflow"),
        "reinflow.config_fingerprint": config.fingerprint(),
        "mlflow.source.git.commit": git_commit(project_root),
    }
    run = client.create_run(experiment_id, run_name=run_name, tags=tags)
    params = [Param(key, value) for key, value in flatten(config.model_dump(mode="json")).items()]
    for start in range(0, len(params), 100):
        client.log_batch(run.info.run_id, params=params[start : start + 100])
    return run.info.run_id


def git_commit(project_root: Path) -> str:
    """The checked-out commit, or 'unknown' outside a git checkout."""
    result = subprocess.run(
        ["git", "-C", str(project_root), "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    )
    return result.stdout.strip() if result.returncode == 0 else "unknown"


def flatten(tree: Any, prefix: str = "") -> dict[str, str]:
    """``{"train": {"lr": 1e-6}}`` → ``{"train.lr": "1e-06"}`` (MLflow params are strings).

    >>> flatten({"train": {"lr": 1e-6, "seed": 0}, "judge": {"options": {}}})
    {'train.lr': '1e-06', 'train.seed': '0', 'judge.options': '{}'}
    """
    if isinstance(tree, dict) and tree:
        items: dict[str, str] = {}
        for key, value in tree.items():
            items.update(flatten(value, f"{prefix}{key}."))
        return items
    text = json.dumps(tree) if isinstance(tree, (dict, list)) else str(tree)
    return {prefix.rstrip("."): text[:MAX_PARAM_CHARS]}


def logged_steps(client: MlflowClient, run_id: str) -> set[int]:
    """Iterations whose metrics are already in the run."""
    return {metric.step for metric in client.get_metric_history(run_id, SENTINEL)}


def log_iteration(client: MlflowClient, run_id: str, step: int, metrics: dict[str, float]) -> bool:
    """Log one iteration's metrics at ``step`` unless that step is already logged; NaNs are left out.
    Returns whether anything was written."""
    if step in logged_steps(client, run_id):
        return False
    now = int(time.time() * 1000)
    batch = [Metric(key, float(value), now, step) for key, value in metrics.items() if _finite(value)]
    batch.append(Metric(SENTINEL, float(step), now, step))
    for start in range(0, len(batch), 900):
        client.log_batch(run_id, metrics=batch[start : start + 900])
    return True


def log_series_once(client: MlflowClient, run_id: str, series: dict[str, list[float]], totals: dict[str, float],
                    sentinel: str) -> bool:
    """Log a stage's metrics that are not per iteration (e.g. the warm start's): ``series[key][i]``
    at step ``i + 1``, ``totals`` at step 0, with ``sentinel`` (one of ``totals``) last. Nothing is
    written where the sentinel is already logged, and no step of a series is logged twice, so a
    stage re-run after a crash is logged once. Returns whether anything was written."""
    if client.get_metric_history(run_id, sentinel):
        return False
    now = int(time.time() * 1000)
    batch = []
    for key, values in series.items():
        done = {metric.step for metric in client.get_metric_history(run_id, key)}
        batch += [Metric(key, float(v), now, step) for step, v in enumerate(values, 1) if step not in done and _finite(v)]
    batch += [Metric(key, float(v), now, 0) for key, v in totals.items() if key != sentinel and _finite(v)]
    batch.append(Metric(sentinel, float(totals[sentinel]), now, 0))
    for start in range(0, len(batch), 900):
        client.log_batch(run_id, metrics=batch[start : start + 900])
    return True


def log_metric(client: MlflowClient, run_id: str, step: int, key: str, value: float) -> None:
    """Log one metric at ``step`` after the iteration's batch (e.g. the checkpoint's seconds, known
    only once the checkpoint is written). A crash just before it loses this value, never repeats it."""
    client.log_metric(run_id, key, float(value), int(time.time() * 1000), step)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def log_artifact(client: MlflowClient, run_id: str, path: Path, artifact_dir: str | None = None) -> None:
    """Copy a file or folder into the run's artifacts."""
    if path.is_dir():
        client.log_artifacts(run_id, str(path), artifact_dir)
    else:
        client.log_artifact(run_id, str(path), artifact_dir)


def finish_run(client: MlflowClient, run_id: str, status: str = "FINISHED") -> None:
    """Mark the run finished (or FAILED / KILLED)."""
    client.set_terminated(run_id, status=status)
