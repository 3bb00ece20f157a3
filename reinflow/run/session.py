"""The live objects of one training run in this process: engine, policy trainer(s), judge, tracking.

Prefect tasks receive the run folder (a string) and look the session up here, so flow and task
parameters stay small and serialisable while the model stays in memory across iterations.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow import MlflowClient

from reinflow.run.checkpoint import latest_checkpoint, read_checkpoint, write_checkpoint
from reinflow.config import ExperimentConfig
from reinflow.judging.judge import load_judge
from reinflow.config.models import resolve_model
from reinflow.run.rollout_runtime import RolloutRuntime, runtime_for
from reinflow.run.run_state import RunInfo
from reinflow.tracking.mlflow_run import client_for
from reinflow.training.train_batch import load_train_batch

SESSIONS: dict[str, TrainingSession] = {}


@dataclass
class TrainingSession:
    """Everything an iteration needs, built once per training run."""

    config: ExperimentConfig
    project_root: Path
    run_dir: Path
    info: RunInfo
    runtime: RolloutRuntime
    policy: Any
    judge: Any
    client: MlflowClient
    iteration: int = 0
    cursor: int = 0

    @property
    def checkpoints(self) -> Path:
        return self.run_dir / "checkpoints"


def open_session(config: ExperimentConfig, project_root: Path, run_dir: Path, info: RunInfo) -> TrainingSession:
    """Build the engine, policy and judge; restore the last checkpoint where there is one."""
    runtime = runtime_for(config, project_root)
    session = TrainingSession(
        config=config,
        project_root=project_root,
        run_dir=run_dir,
        info=info,
        runtime=runtime,
        policy=create_policy(config, resolve_model(config.model.path)),
        judge=load_judge(config.judge, project_root),
        client=client_for(config, project_root),
    )
    restore_latest(session)
    SESSIONS[str(run_dir)] = session
    return session


def create_policy(config: ExperimentConfig, model_folder: Path) -> Any:
    """The policy update backend: in-process (``debug``) or long-lived Ray workers (``ray``)."""
    if config.backbone == "ray":
        from reinflow.distributed.policy_group import RayPolicyGroup

        return RayPolicyGroup(config, model_folder)
    from reinflow.training.policy import PolicyTrainer

    return PolicyTrainer(config, model_folder)


def restore_latest(session: TrainingSession) -> None:
    """Load the newest complete checkpoint (weights into trainer and engine, cursor, iteration)."""
    path = latest_checkpoint(session.checkpoints)
    if path is None:
        session.runtime.engine.load_weights(session.policy.engine_weights())
        return
    state, extra = read_checkpoint(path, fingerprint=session.config.fingerprint())
    session.policy.load_state(state)
    session.runtime.engine.load_weights(session.policy.engine_weights())
    session.iteration, session.cursor = extra["iteration"], extra["cursor"]


def update_policy(
    session: TrainingSession, judged_path: Path, on_progress: Callable[[int, int], None] | None = None
) -> dict[str, float]:
    """One GRPO update on the judged episodes, then hand the new weights to the engine.

    ``on_progress(done, total)``: micro-batches, in process; one unit per step on Ray."""
    samples, batch_metrics = load_train_batch(judged_path, session.config.train)
    metrics = dict(batch_metrics)
    if samples:
        metrics |= session.policy.train_step(samples, batch_metrics["loss_normalizer"], on_progress=on_progress)
    started = time.perf_counter()
    session.runtime.engine.load_weights(session.policy.engine_weights())
    metrics["weight_sync_seconds"] = time.perf_counter() - started
    return metrics


def close_session(session: TrainingSession) -> None:
    """Release the policy workers (Ray actors, and Ray itself where the run started it)."""
    if session.config.backbone == "ray":
        session.policy.close()
    SESSIONS.pop(str(session.run_dir), None)


def save_checkpoint(session: TrainingSession, iteration: int, cursor: int) -> Path:
    """Write the iteration's checkpoint atomically (keeping the last K) and advance the session."""
    extra = {"cursor": cursor, "mlflow_run_id": session.info.mlflow_run_id}
    return write_checkpoint(session.checkpoints, iteration, session.policy.state(), extra,
                            fingerprint=session.config.fingerprint(), keep=session.config.train.keep_checkpoints)
