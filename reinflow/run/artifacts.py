"""What a training run leaves in MLflow besides metrics: the config, trajectory samples per
iteration, the reward curve, and the final policy as a loadable MLflow model."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import yaml

from reinflow.tracking.policy_model import store_final_policy
from reinflow.config.models import resolve_model
from reinflow.tracking.plots import CURVES, reward_curve_png
from reinflow.tracking.mlflow_run import log_artifact, tracking_uri
from reinflow.run.session import TrainingSession

def log_config(session: TrainingSession) -> None:
    """The validated config (defaults filled in) as ``config/experiment.yaml``."""
    path = session.run_dir / "experiment.yaml"
    path.write_text(yaml.safe_dump(session.config.model_dump(mode="json"), sort_keys=False))
    log_artifact(session.client, session.info.mlflow_run_id, path, "config")


def log_trajectory_sample(session: TrainingSession, iteration: int, judged_path: Path) -> None:
    """The first few judged episodes of the iteration as JSON lines (token lists left out)."""
    table = pq.read_table(judged_path).slice(0, session.config.tracking.trajectories_per_iteration).drop(["samples"])
    path = session.run_dir / "trajectories" / f"iter_{iteration}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, default=str) + "\n" for row in table.to_pylist()))
    log_artifact(session.client, session.info.mlflow_run_id, path, "trajectories")


def log_reward_curve(session: TrainingSession) -> Path:
    """``reward_curve.png`` in the run folder and the MLflow run."""
    history = {
        key: {m.step: m.value for m in session.client.get_metric_history(session.info.mlflow_run_id, key)}
        for key in CURVES
    }
    path = reward_curve_png(history, session.run_dir / "reward_curve.png", f"{session.config.experiment} / {session.info.name}")
    log_artifact(session.client, session.info.mlflow_run_id, path, "plots")
    return path


def log_final_policy(session: TrainingSession) -> str:
    """The trained weights (LoRA merged) as the run's ``policy`` pyfunc model, stored once (in MLflow;
    the run folder keeps the pointer ``final_policy.json``); returns its URI."""
    return store_final_policy(
        session.policy.engine_weights(), resolve_model(session.config.model.path), session.run_dir,
        tracking_uri(session.config, session.project_root), session.info.mlflow_run_id,
        session.config.rollout.max_new_tokens_per_turn,
    )
