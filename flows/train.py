"""The training flow: prepare data → warm start (if configured) → baseline evaluation → iterations
of rollout → judge → update → (every k) evaluate → metrics → checkpoint.

Each iteration is its own subflow run, ``iter-N``. Tasks pass file paths, not big objects, and no
flow or task takes a live object (session, engine, policy, judge) as a parameter: the train flow
opens its session with ``tasks.live.live`` and the subflow and tasks reach it there, as Prefect may
copy or serialise whatever is a parameter. Rollout and judge results are cached on their inputs,
so a re-run of a failed iteration reuses what finished; the policy, cursor and iteration come back
from the last complete checkpoint.
"""

from __future__ import annotations

import flows  # noqa: F401, I001  (first: applies the environment defaults; see flows/__init__.py)

from functools import partial
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from flows.api_retries import ride_out_api_outages
from flows.prepare_data import prepare_data
from flows.rollout_ahead import rollout_result, rolling_ahead
from flows.subflow_heartbeat import without_subflow_heartbeat
from reinflow.config import ExperimentConfig, load_config
from reinflow.faults import crash_point
from reinflow.run.artifacts import log_config, log_final_policy, log_reward_curve, log_trajectory_sample
from reinflow.run.run_state import new_run, run_to_resume
from reinflow.tracking.disk_use import disk_use
from reinflow.tracking.memory_use import memory_use
from reinflow.training.memory_release import releasing_memory
from reinflow.tracking.summary import run_summary
from reinflow.run.stage_timer import iteration_summary, timed
from reinflow.tracking.mlflow_run import finish_run, log_iteration, log_metric, start_run, tracking_uri
from reinflow.run.session import TrainingSession, close_session, open_session
from reinflow.run.weight_handover import serve_taken_weights, take_engine_weights
from reinflow.run.warmup import warm_start_needed
from tasks.checkpoint import checkpoint
from tasks.evaluate import evaluate
from tasks.judge import judge
from tasks.live import live, live_session
from tasks.update import update
from tasks.warmup import warmup


@flow(name="train", log_prints=True)
def train(config_path: str, overrides: list[str] | None = None, resume: str | None = None,
          project_root: str = ".") -> dict[str, Any]:
    """Train the policy of ``config_path`` (``resume``: a run name, or ``"latest"``)."""
    root = Path(project_root).resolve()
    config = load_config(root / config_path, overrides or [])
    with ride_out_api_outages(config.tracking.prefect_retry_seconds):
        return train_run(config, root, resume)


def train_run(config: ExperimentConfig, root: Path, resume: str | None) -> dict[str, Any]:
    """The body of :func:`train`: a new or resumed run, iteration after iteration."""
    run_dir, info = run_to_resume(config, root, None if resume == "latest" else resume) if resume else new_run(config, root)
    prepare_data(config.data, project_root=str(root))
    session = open_session(config, root, run_dir, info)
    if info.mlflow_run_id is None:
        info.mlflow_run_id = start_run(session.client, config, info.name, root)
        info.save(run_dir)
        log_config(session)
    try:
        with live(session=session):
            if session.iteration == 0:
                seconds: dict[str, float] = {}
                if warm_start_needed(session):  # done once: it ends with checkpoint iter_0
                    with timed(seconds, "warmup"):
                        warmup(str(run_dir))
                with timed(seconds, "evaluate"):
                    baseline = evaluate_iteration(session, 0)
                log_iteration(session.client, info.mlflow_run_id, 0, baseline | seconds)
            for iteration in range(session.iteration + 1, config.train.iterations + 1):
                with without_subflow_heartbeat():  # ~1 s an iteration (flows/subflow_heartbeat.py)
                    train_iteration(str(run_dir), iteration, flow_run_name=f"iter-{iteration}")
            return finish(session)
    finally:
        close_session(session)


@flow(name="train-iteration", flow_run_name="{flow_run_name}")
def train_iteration(run_dir: str, iteration: int, flow_run_name: str) -> dict[str, float]:
    """One GRPO iteration of the live session of the run in ``run_dir`` (``tasks.live``); returns its
    metrics (also logged to MLflow at step ``iteration``)."""
    session = live_session(run_dir)
    config, config_dict = session.config, session.config.model_dump(mode="json")
    seconds: dict[str, float] = {}
    release = config.train.release_free_memory  # each stage's freed heap back to the OS, after the stage
    with timed(seconds, "iteration"):
        with timed(seconds, "rollout"), releasing_memory(release):
            rolled = rollout_result(session, iteration)  # rolled ahead beside the last update, or now
        with rolling_ahead(session, iteration, rolled) as ahead:  # the next rollouts, beside this update
            with timed(seconds, "judge"):
                judged = judge(config_dict, run_dir, iteration, rolled["path"])
            with timed(seconds, "update"), releasing_memory(release):
                updated = update(run_dir, iteration, judged["path"], sync_engine=ahead is None)
            if ahead is not None:
                with timed(seconds, "rollout"):  # what the rollouts ahead still took after the update
                    ahead.wait()
                with timed(seconds, "update"):  # the next rollouts ahead serve them, beside the next update
                    updated["weight_take_seconds"] = take_engine_weights(session, iteration)
                if ahead.weight_sync_seconds is not None:  # the last update's, served beside this one
                    updated["weight_sync_seconds"] = ahead.weight_sync_seconds
        metrics = {**rolled["metrics"], **judged["metrics"], **updated}
        log_trajectory_sample(session, iteration, Path(judged["path"]))
        session.cursor, session.iteration = rolled["next_cursor"], iteration
        if iteration % config.train.eval_interval == 0 or iteration == config.train.iterations:
            with timed(seconds, "evaluate"), releasing_memory(release):
                metrics |= evaluate_iteration(session, iteration)
        # metrics before the checkpoint: a crash between the two re-runs this iteration, whose
        # already-logged step is then skipped (never missing, never duplicated)
        log_iteration(session.client, session.info.mlflow_run_id, iteration, metrics | seconds)
        crash_point("tracking", iteration)
        if iteration % config.train.checkpoint_interval == 0 or iteration == config.train.iterations:
            with timed(seconds, "checkpoint"):  # handing the state over: the write goes on in the background
                checkpoint(run_dir, iteration, session.cursor)
    session.checkpoint_writer.after_write(partial(log_after_checkpoint, session, iteration, dict(seconds)))
    metrics |= seconds
    get_run_logger().info(iteration_summary(iteration, config.train.iterations, metrics))
    return metrics


def log_after_checkpoint(session: TrainingSession, iteration: int, seconds: dict[str, float]) -> None:
    """The iteration's metrics logged once its checkpoint is on disk (in the writer thread), so that
    a re-run after a crash logs them once: ``seconds/checkpoint`` (the training thread handing the
    state over), ``seconds/checkpoint_write`` (the background write), ``seconds/iteration``, disk and memory."""
    if "seconds/checkpoint" in seconds:
        seconds["seconds/checkpoint_write"] = session.checkpoint_writer.last_write_seconds
    keys = ("seconds/checkpoint", "seconds/checkpoint_write", "seconds/iteration")
    metrics = {key: seconds[key] for key in keys if key in seconds}
    metrics |= disk_use(session.client, session.info.mlflow_run_id, session.run_dir) | memory_use()
    for key, value in metrics.items():
        log_metric(session.client, session.info.mlflow_run_id, iteration, key, value)


def evaluate_iteration(session: TrainingSession, iteration: int) -> dict[str, float]:
    """Held-out evaluation of the current weights into ``<run>/eval/iter_N/``; metrics prefixed ``eval/``."""
    serve_taken_weights(session)  # the update's weights, where the engine has not loaded them yet
    output = session.run_dir / "eval" / f"iter_{iteration}"
    metrics = evaluate(str(session.project_root / session.config.data.path), str(output),
                       session.config.train.eval_pass_k, label=f"iter-{iteration}")
    return {f"eval/{key}": value for key, value in metrics.items()}


def finish(session: TrainingSession) -> dict[str, Any]:
    """Close the MLflow run and summarise it: baseline vs final held-out success, where time went,
    disk use (``disk``: the run folder and MLflow artifacts left, bytes this process wrote) and
    memory (``memory``: this process's peak resident set, the run's process tree now). First waits
    for the last checkpoint's background write (and the metrics logged after it)."""
    session.checkpoint_writer.wait()
    curve = log_reward_curve(session)
    model_uri = log_final_policy(session)
    disk = disk_use(session.client, session.info.mlflow_run_id, session.run_dir)
    memory = memory_use()
    finish_run(session.client, session.info.mlflow_run_id)
    session.info.status = "finished"
    session.info.save(session.run_dir)
    return {
        "run_dir": str(session.run_dir),
        "mlflow_run_id": session.info.mlflow_run_id,
        "iterations": session.iteration,
        "reward_curve": str(curve),
        "model_uri": model_uri,
        "disk": disk,
        "memory": memory,
        "tracking_uri": tracking_uri(session.config, session.project_root),
        **run_summary(session.client, session.info.mlflow_run_id),
    }
