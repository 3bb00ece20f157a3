"""What a rollout needs that is expensive to build: the engine (model loaded), the tokenizer and
the user's workflow object; and :func:`roll_out`, the one way to run a batch of episodes on them.
Built once per training run (it lives in the ``TrainingSession``) or evaluation, and closed by it. The engine is in
process, or with ``rollout.engine_replicas > 1`` Ray actors across the nodes (``reinflow.distributed.engine_replicas``)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reinflow.config import ExperimentConfig
from reinflow.engines.base import Engine
from reinflow.engines.factory import create_engine
from reinflow.config.models import resolve_model
from reinflow.config.plugins import construct_plugin
from reinflow.rollout.runner import ModelFactory, plan_episodes, run_rollout
from reinflow.data.task_cursor import next_tasks
from reinflow.rollout.tuned_model import TunedModel
from reinflow.rollout.workflow import Task, Workflow


@dataclass
class RolloutRuntime:
    """The engine, tokenizer and workflow of one configured rollout."""

    config: ExperimentConfig
    engine: Engine
    tokenizer: Any
    workflow: Workflow

    def model_factory(self, temperature: float | None = None) -> ModelFactory:
        """A fresh TunedModel per episode, all over the one shared engine (``temperature``: instead
        of ``rollout.temperature``)."""
        rollout = self.config.rollout
        if temperature is not None:
            rollout = rollout.model_copy(update={"temperature": temperature})
        return lambda seed: TunedModel.from_rollout_config(self.engine, self.tokenizer, rollout, seed)

    def close(self) -> None:
        """Stop the engine (its scheduler, and its Ray actors for replicas); the runtime is spent."""
        asyncio.run(self.engine.close())


def build_runtime(config: ExperimentConfig, project_root: Path) -> RolloutRuntime:
    """Load the workflow first (cheap, and the likeliest to be misconfigured), then the model."""
    from transformers import AutoTokenizer

    workflow = load_workflow(config, project_root)
    folder = resolve_model(config.model.path)
    engine = engine_for(config, folder)  # in process, or rollout.engine_replicas Ray actors
    return RolloutRuntime(config, engine, AutoTokenizer.from_pretrained(folder), workflow)


def engine_for(config: ExperimentConfig, model_folder: Path) -> Engine:
    """The rollout engine ``config`` asks for: one in-process engine, or ``rollout.engine_replicas``
    Ray actors (each holding ``create_engine(...)``) placed across the nodes of ``train.ray_address``."""
    rollout = config.rollout
    if rollout.engine_replicas > 1:
        from reinflow.distributed.engine_replicas import RayEngineReplicas

        return RayEngineReplicas(config, model_folder)
    return create_engine(rollout.engine, model_folder, dtype=config.model.dtype, max_model_len=rollout.max_model_len,
                         max_batch_size=rollout.max_batch_size, vllm_memory_fraction=rollout.vllm_memory_fraction)


def load_workflow(config: ExperimentConfig, project_root: Path) -> Workflow:
    """Import and construct the configured workflow; problems become one-line PluginErrors."""
    rollout = config.rollout
    return construct_plugin(rollout.workflow, rollout.workflow_options, project_root, role="workflow",
                            required_methods=("run",), base=Workflow, options_key="rollout.workflow_options")


def roll_out(
    runtime: RolloutRuntime, tasks: Sequence[Task], episodes_per_task: int, output: Path, *, iteration: int,
    temperature: float | None = None, on_episode: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, float]:
    """Run ``episodes_per_task`` episodes of each task into ``output``; return the rollout metrics.

    The one way reinflow runs a batch of episodes: training (:func:`rollout_iteration`), evaluation
    (``reinflow.run.evaluation``) and ``reinflow rollout`` (``reinflow.run.debug_rollout``) all call it.
    ``temperature`` overrides ``rollout.temperature`` (0 for greedy evaluation); ``on_episode(row)``
    is called as each episode finishes (progress)."""
    config = runtime.config
    plans = plan_episodes(tasks, episodes_per_task, config.train.seed, iteration)
    return asyncio.run(
        run_rollout(
            runtime.workflow,
            plans,
            runtime.model_factory(temperature),
            output,
            iteration=iteration,
            concurrency=config.rollout.concurrency,
            episode_timeout_seconds=config.rollout.episode_timeout_seconds,
            max_samples_per_episode=config.rollout.max_samples_per_episode,
            on_episode=on_episode,
        )
    )


def rollout_iteration(
    runtime: RolloutRuntime, data_path: Path, iteration: int, cursor: int, output: Path,
    on_episode: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[dict[str, float], int]:
    """Roll out the next ``tasks_per_iteration`` tasks into ``output``; return metrics and new cursor."""
    data = runtime.config.data
    tasks, next_cursor = next_tasks(data_path, data.train_split, cursor, data.tasks_per_iteration)
    metrics = roll_out(runtime, tasks, runtime.config.rollout.group_size, output, iteration=iteration,
                       on_episode=on_episode)
    return metrics, next_cursor
