"""The live objects of one training run in this process: engine, policy trainer(s), judge, tracking.

The train flow opens a :class:`TrainingSession` and makes it the live session of its flow run; the
iteration subflow and its tasks reach it there (``tasks/live.py``), never as a Prefect parameter, so
the model stays in memory across iterations, is never copied or serialised, and cache keys stay
small. Closing the session releases the engine and policy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mlflow import MlflowClient

from reinflow.run.checkpoint import latest_checkpoint, read_checkpoint, write_checkpoint
from reinflow.run.checkpoint_writer import CheckpointWriter, detach_containers
from reinflow.config import ExperimentConfig
from reinflow.judging.judge import Judge, load_judge
from reinflow.config.models import resolve_model
from reinflow.run.off_policy import staleness_metrics
from reinflow.run.retention import drop_judged_raw_files
from reinflow.run.rollout_runtime import RolloutRuntime, build_runtime
from reinflow.run.run_state import RunInfo
from reinflow.run.weight_handover import TakenWeights, sync_engine_weights
from reinflow.tracking.mlflow_run import client_for
from reinflow.training.base import Policy
from reinflow.training.train_batch import load_train_batch

@dataclass(eq=False)
class TrainingSession:
    """Everything an iteration needs, built once per training run."""

    config: ExperimentConfig
    project_root: Path
    run_dir: Path
    info: RunInfo
    runtime: RolloutRuntime
    policy: Policy
    judge: Judge
    client: MlflowClient
    iteration: int = 0
    cursor: int = 0
    engine_version: int = 0  # the iteration whose update the engine's weights are (0: the start)
    rolled_ahead: dict[int, dict] = field(default_factory=dict)  # rollout task results of later iterations
    taken_weights: TakenWeights | None = None  # an update's weights the engine serves next (run.weight_handover)
    checkpoint_writer: CheckpointWriter = field(default_factory=CheckpointWriter)  # background checkpoint writes

    @property
    def checkpoints(self) -> Path:
        return self.run_dir / "checkpoints"


def open_session(config: ExperimentConfig, project_root: Path, run_dir: Path, info: RunInfo) -> TrainingSession:
    """Build the engine, policy and judge; restore the last checkpoint where there is one."""
    runtime = build_runtime(config, project_root)
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
    return session


def create_policy(config: ExperimentConfig, model_folder: Path) -> Policy:
    """The policy update backend: in-process (``debug``) or long-lived Ray workers (``ray``)."""
    if config.backbone == "ray":
        from reinflow.distributed.policy_group import RayPolicyGroup

        return RayPolicyGroup(config, model_folder)
    from reinflow.training.policy import PolicyTrainer

    return PolicyTrainer(config, model_folder)


def restore_latest(session: TrainingSession) -> None:
    """Load the newest complete checkpoint (weights into trainer and engine, cursor, iteration)."""
    path = latest_checkpoint(session.checkpoints)
    if path is not None:
        state, extra = read_checkpoint(path, fingerprint=session.config.fingerprint())
        session.policy.load_state(state)
        session.iteration, session.cursor = extra["iteration"], extra["cursor"]
    session.runtime.load_policy(session.policy)
    session.engine_version = session.iteration


def update_policy(
    session: TrainingSession, judged_path: Path, iteration: int,
    on_progress: Callable[[int, int], None] | None = None, sync_engine: bool = True,
) -> dict[str, float]:
    """Iteration ``iteration``'s GRPO update on the judged episodes, then (``sync_engine``) hand the
    new weights to the engine; with a rollout still running on the engine the caller hands them over
    later (``run.weight_handover``). The metrics include the samples' staleness (``off_policy``).

    ``on_progress(done, total)``: micro-batches, in process; one unit per step on Ray."""
    samples, batch_metrics = load_train_batch(judged_path, session.config.train)
    metrics = dict(batch_metrics) | staleness_metrics(judged_path, iteration)
    if samples:
        metrics |= session.policy.train_step(samples, batch_metrics["loss_normalizer"], on_progress=on_progress)
    if sync_engine:
        metrics["weight_sync_seconds"] = sync_engine_weights(session, iteration)
    return metrics


def close_session(session: TrainingSession) -> None:
    """Wait for the checkpoint being written (a run that ends, even by an error, keeps it; its write's
    error is raised), then release the policy (Ray workers, and Ray itself where the run started it)
    and the engine."""
    try:
        session.checkpoint_writer.wait()
    finally:
        session.policy.close()
        session.runtime.close()


def load_checkpoint_weights(runtime: RolloutRuntime, config: ExperimentConfig, checkpoint: Path) -> None:
    """Serve a checkpoint's policy weights from ``runtime``'s engine (evaluation of a past run: a
    changed config is allowed, the weights only have to fit the model)."""
    state, _ = read_checkpoint(checkpoint, fingerprint=config.fingerprint(), allow_config_change=True)
    policy = create_policy(config.model_copy(update={"backbone": "debug"}), resolve_model(config.model.path))
    policy.load_state(state)
    runtime.load_policy(policy)
    policy.close()


def save_checkpoint(session: TrainingSession, iteration: int, cursor: int, *, background: bool = False) -> Path:
    """Write the iteration's checkpoint atomically (keeping the last K), then compact the episode
    files it covers (``tracking.raw_episode_files``); returns its folder. First waits for the write
    in flight (raising its error). ``background``: the session's ``checkpoint_writer`` writes the
    policy's live state while this thread goes on, and the policy holds that state unchanged until
    the write is done (``run.checkpoint_writer``): the folder is on disk once
    ``session.checkpoint_writer.wait()`` returns."""
    writer, config = session.checkpoint_writer, session.config
    writer.wait()  # one write in flight, so at most one copy of the state
    extra = {"cursor": cursor, "mlflow_run_id": session.info.mlflow_run_id}
    fingerprint, keep, compact = config.fingerprint(), config.train.keep_checkpoints, config.tracking.raw_episode_files
    state = session.policy.state()
    if background:  # PolicyTrainer.state(): views of the tensors the next optimizer step changes in place
        state = detach_containers(state)
        session.policy.hold_state(writer.join)

    def write() -> Path:
        folder = write_checkpoint(session.checkpoints, iteration, state, extra, fingerprint=fingerprint, keep=keep)
        if compact == "drop_when_judged":
            drop_judged_raw_files(session.run_dir, iteration)  # a checkpoint covers them now
        return folder

    if not background:
        return write()
    writer.submit(str(session.checkpoints / f"iter_{iteration}"), write)
    return session.checkpoints / f"iter_{iteration}"
