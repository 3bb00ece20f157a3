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
from reinflow.config.experiment import LoraTuning
from reinflow.engines.base import Engine, LoraAdapter
from reinflow.engines.factory import create_engine, serves_adapters
from reinflow.config.models import resolve_model
from reinflow.config.plugins import construct_plugin
from reinflow.endpoint.command_workflow import CommandWorkflow
from reinflow.endpoint.pull_workflow import PullWorkflow
from reinflow.rollout.runner import ModelFactory, plan_episodes, run_rollout
from reinflow.data.task_cursor import next_tasks
from reinflow.rollout.tuned_model import TunedModel
from reinflow.rollout.workflow import Task, Workflow
from reinflow.training.base import Policy


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

    def load_policy(self, policy: Policy) -> None:
        """Serve ``policy``'s current weights (every hand-over from trainer to engine goes here)."""
        self.engine.load_weights(self.policy_weights_later(policy)())

    def policy_weights_later(self, policy: Policy) -> Callable[[], dict[str, Any] | LoraAdapter]:
        """What the engine loads for ``policy``'s weights as they are now, handed over when called
        (``Policy.engine_weights_later``): a `LoraAdapter` where the engine serves adapters
        (:func:`adapter_rank`), merged weights otherwise."""
        tuning = self.config.model.tuning
        if adapter_rank(self.config) is None:
            return policy.engine_weights_later()
        adapter = LoraAdapter(tensors=policy.state()["weights"], rank=tuning.rank, alpha=tuning.alpha,
                              target_modules=tuple(tuning.target_modules))
        return lambda: adapter

    def close(self) -> None:
        """Stop the workflow (a ``workflow_command``'s endpoint) and the engine (its scheduler, and its
        Ray actors for replicas); the runtime is spent."""
        self.workflow.close()
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
                         max_batch_size=rollout.max_batch_size, vllm_memory_fraction=rollout.vllm_memory_fraction,
                         lora_rank=adapter_rank(config))


def adapter_rank(config: ExperimentConfig) -> int | None:
    """The LoRA rank the engine serves adapters of, or None where it takes merged weights (full
    tuning, the `hf` engine, and engine replicas, which receive merged weights)."""
    tuning = config.model.tuning
    lora = isinstance(tuning, LoraTuning)
    if lora and config.rollout.engine_replicas == 1 and serves_adapters(config.rollout.engine, lora):
        return tuning.rank
    return None


def load_workflow(config: ExperimentConfig, project_root: Path) -> Workflow:
    """Import and construct the configured workflow; problems become one-line PluginErrors. With
    ``rollout.workflow_command``, the workflow runs that command per episode against the
    OpenAI-compatible endpoint (``reinflow.endpoint``); with ``rollout.workflow_pull``, remote
    workers claim the episodes through its pull API."""
    rollout = config.rollout
    if rollout.workflow_command is not None:
        return CommandWorkflow.from_rollout_config(rollout, project_root)
    if rollout.workflow_pull:
        return PullWorkflow.from_rollout_config(rollout)
    return construct_plugin(rollout.workflow, rollout.workflow_options, project_root, role="workflow",
                            required_methods=("run",), base=Workflow, options_key="rollout.workflow_options")


def roll_out(
    runtime: RolloutRuntime, tasks: Sequence[Task], episodes_per_task: int, output: Path, *, iteration: int,
    temperature: float | None = None, on_episode: Callable[[dict[str, Any]], None] | None = None,
    policy_version: int | None = None,
) -> dict[str, float]:
    """Run ``episodes_per_task`` episodes of each task into ``output``; return the rollout metrics.

    The one way reinflow runs a batch of episodes: training (:func:`rollout_iteration`), evaluation
    (``reinflow.run.evaluation``) and ``reinflow rollout`` (``reinflow.run.debug_rollout``) all call it.
    ``temperature`` overrides ``rollout.temperature`` (0 for greedy evaluation); ``on_episode(row)``
    is called as each episode finishes (progress); ``policy_version`` is recorded in every row."""
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
            policy_version=policy_version,
        )
    )


def rollout_iteration(
    runtime: RolloutRuntime, data_path: Path, iteration: int, cursor: int, output: Path,
    on_episode: Callable[[dict[str, Any]], None] | None = None, policy_version: int = 0,
) -> tuple[dict[str, float], int]:
    """Roll out the next ``tasks_per_iteration`` tasks into ``output`` on the weights of update
    ``policy_version``; return metrics (``policy_version`` among them) and the new cursor."""
    data = runtime.config.data
    tasks, next_cursor = next_tasks(data_path, data.train_split, cursor, data.tasks_per_iteration)
    metrics = roll_out(runtime, tasks, runtime.config.rollout.group_size, output, iteration=iteration,
                       on_episode=on_episode, policy_version=policy_version)
    return metrics | {"policy_version": float(policy_version)}, next_cursor
