"""Run a workflow over tasks, ``group_size`` episodes per task, many at once, into a Parquet file.

Every episode gets a fresh :class:`~reinflow.rollout.tuned_model.TunedModel` over the one shared engine,
so all in-flight episodes' LLM calls are batched together. Episodes are written as they finish
(memory does not grow with the episode count). An episode that raises or times out is recorded
with ``status`` ``failed`` or ``timeout`` and its error, and excluded from training later; an
episode the model ended cleanly (context overflow, turn limit) is ``ok`` with the turns it made.

A failure of the machinery under the episodes (``RunInterrupted``: the engine's scheduler raised,
say) is not an episode's failure: recording the in-flight episodes as failed would quietly drop
their tasks from training (and every later episode would fail the same way). The rollout stops
instead with that error naming the iteration and how many episodes had finished; the output file
is not published (its ``.partial`` stays for inspection), so the stage re-runs whole on resume.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reinflow.rollout.episode_schema import ROLLOUT_SCHEMA
from reinflow.errors import RunInterrupted
from reinflow.rollout.parquet_stream import ParquetStream
from reinflow.rollout.tool_use import episode_tool_use, tool_use_metrics
from reinflow.rollout.trajectory import build_samples
from reinflow.rollout.tuned_model import EpisodeEnded, GenerationAborted, TunedModel
from reinflow.rollout.workflow import Task, Workflow, WorkflowOutput

log = logging.getLogger(__name__)

ModelFactory = Callable[[int], TunedModel]
"""Builds the TunedModel of one episode from its sampling seed."""


@dataclass(frozen=True)
class EpisodePlan:
    """One episode to run: the task, its index in the task's group and its sampling seed."""

    task: Task
    group_index: int
    seed: int

    @property
    def episode_id(self) -> str:
        return f"{self.task.task_id}#{self.group_index}"


def plan_episodes(tasks: Sequence[Task], group_size: int, base_seed: int, iteration: int) -> list[EpisodePlan]:
    """``group_size`` episodes per task, each with a seed derived from (seed, iteration, task, k)."""
    return [
        EpisodePlan(task, k, episode_seed(base_seed, iteration, task.task_id, k))
        for task in tasks
        for k in range(group_size)
    ]


def episode_seed(base_seed: int, iteration: int, task_id: str, group_index: int) -> int:
    """A stable 31-bit seed for one episode.

    >>> episode_seed(0, 1, "t-1", 0) == episode_seed(0, 1, "t-1", 0)
    True
    >>> episode_seed(0, 1, "t-1", 0) != episode_seed(0, 1, "t-1", 1)
    True
    """
    digest = hashlib.sha256(f"{base_seed}/{iteration}/{task_id}/{group_index}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


async def run_rollout(
    workflow: Workflow,
    plans: Sequence[EpisodePlan],
    make_model: ModelFactory,
    output: Path,
    *,
    iteration: int,
    concurrency: int,
    episode_timeout_seconds: float,
    max_samples_per_episode: int,
    on_episode: Callable[[dict[str, Any]], None] | None = None,
    policy_version: int | None = None,
) -> dict[str, float]:
    """Run every planned episode (at most ``concurrency`` at once), stream the rows to ``output``
    (written atomically on success) and return the rollout metrics. ``policy_version``: which
    update's weights the engine serves (each row's ``policy_version``; None outside training).

    ``concurrency`` workers take the plans in order, one episode at a time each: only the episodes
    in flight exist as tasks, so memory does not grow with the number of plans."""
    summaries: list[dict[str, Any]] = []
    started = time.perf_counter()
    queue = iter(plans)  # shared by the workers; the event loop hands each plan to one of them

    with ParquetStream(output, ROLLOUT_SCHEMA) as stream:

        async def worker() -> None:
            for plan in queue:
                row = await run_episode(workflow, plan, make_model, iteration, episode_timeout_seconds,
                                        max_samples_per_episode)
                row["policy_version"] = policy_version
                stream.write(row)
                summaries.append(_summary(row))
                if on_episode is not None:
                    on_episode(row)

        try:
            await asyncio.gather(*(worker() for _ in range(min(concurrency, len(plans)))))
        except RunInterrupted as error:
            raise type(error)(f"rollout of iteration {iteration} stopped after {len(summaries)} of {len(plans)} "
                              f"episodes, none kept: {error}") from error
    return rollout_metrics(summaries, time.perf_counter() - started)


async def run_episode(
    workflow: Workflow,
    plan: EpisodePlan,
    make_model: ModelFactory,
    iteration: int,
    timeout_seconds: float,
    max_samples: int,
) -> dict[str, Any]:
    """Run one episode and return its row; never raises for a workflow's own failure."""
    model = make_model(plan.seed)
    started = time.perf_counter()
    status, error, output = "ok", None, WorkflowOutput()
    try:
        output = await asyncio.wait_for(workflow.run(plan.task, model), timeout=timeout_seconds)
    except GenerationAborted as ended:
        status, error = "failed", f"{type(ended).__name__}: {ended}"
    except EpisodeEnded as ended:
        log.debug("episode %s ended early: %s", plan.episode_id, ended)
    except TimeoutError:
        status, error = "timeout", f"episode took longer than {timeout_seconds:g}s"
    except RunInterrupted:
        raise  # the engine failed, not the episode: the rollout stops (see the module docstring)
    except Exception as raised:  # noqa: BLE001 - a user workflow may raise anything: record it, go on
        status, error = "failed", f"{type(raised).__name__}: {raised}"[:2000]
        log.warning("episode %s failed: %s", plan.episode_id, error)
    return episode_row(plan, model, output, iteration, status, error, time.perf_counter() - started, max_samples)


def episode_row(
    plan: EpisodePlan,
    model: TunedModel,
    output: WorkflowOutput,
    iteration: int,
    status: str,
    error: str | None,
    wall_seconds: float,
    max_samples: int,
) -> dict[str, Any]:
    """The Parquet row of one finished episode (see ``reinflow.rollout.episode_schema``)."""
    turns = model.turns
    judge_input = dict(model.judge_input_dictionary)
    final_answer = output.final_answer if output.final_answer is not None else judge_input.pop("final_answer", None)
    judge_input.pop("final_answer", None)
    samples = build_samples(turns, max_samples) if turns else []
    tool_use = episode_tool_use(turns, final_answer is not None)
    return {
        "iteration": iteration,
        "task_id": plan.task.task_id,
        "episode_id": plan.episode_id,
        "group_index": plan.group_index,
        "question": plan.task.question,
        "reference_answer": plan.task.reference_answer,
        "task_row": json.dumps(plan.task.row, default=str),
        "status": status,
        "error": error,
        "context_overflow": model.context_overflow,
        "final_answer": None if final_answer is None else str(final_answer),
        "workflow_reward": output.reward,
        "judge_input": json.dumps(judge_input, default=str),
        "metadata": json.dumps(output.metadata, default=str),
        "messages": json.dumps(_conversation(model), default=str),
        "turns": json.dumps([_turn_record(turn) for turn in turns], default=str),
        "samples": [
            {"token_ids": s.token_ids, "loss_mask": s.loss_mask, "logprobs": s.logprobs} for s in samples
        ],
        "num_turns": len(turns),
        "num_tool_calls": tool_use.tool_calls,
        "format_errors": model.format_errors,
        "answered_before_tool_result": tool_use.answered_before_tool_result,
        "generated_tokens": sum(len(turn.output_ids) for turn in turns),
        "finish_reason": turns[-1].finish_reason if turns else None,
        "wall_seconds": wall_seconds,
    }


def _conversation(model: TunedModel) -> list[dict[str, str]]:
    """The last call's chat messages plus its reply: the whole conversation the policy saw."""
    if not model.turns:
        return []
    last = model.turns[-1]
    return [*last.messages, {"role": "assistant", "content": last.response_text}]


def _turn_record(turn: Any) -> dict[str, Any]:
    return {
        "index": turn.index,
        "response_text": turn.response_text,
        "tool_calls": turn.tool_calls,
        "format_errors": turn.format_errors,
        "finish_reason": turn.finish_reason,
        "prompt_tokens": len(turn.prompt_ids),
        "output_tokens": len(turn.output_ids),
        "extends_previous": turn.extends_previous,
    }


def _summary(row: dict[str, Any]) -> dict[str, Any]:
    """The few numbers of a row the metrics need (the row itself is not kept in memory)."""
    keys = ("status", "context_overflow", "num_turns", "num_tool_calls", "format_errors", "generated_tokens",
            "answered_before_tool_result")
    return {key: row[key] for key in keys}


def rollout_metrics(summaries: Sequence[dict[str, Any]], wall_seconds: float) -> dict[str, float]:
    """Throughput and episode statistics of a rollout."""
    episodes = len(summaries)
    tokens = sum(s["generated_tokens"] for s in summaries)
    return {
        "episodes": float(episodes),
        "episodes_failed": float(sum(s["status"] == "failed" for s in summaries)),
        "episodes_timeout": float(sum(s["status"] == "timeout" for s in summaries)),
        "context_overflows": float(sum(bool(s["context_overflow"]) for s in summaries)),
        "generated_tokens": float(tokens),
        "generated_tokens_per_second": tokens / wall_seconds if wall_seconds > 0 else 0.0,
        "episodes_per_second": episodes / wall_seconds if wall_seconds > 0 else 0.0,
        **tool_use_metrics(summaries),  # tool calls, malformed calls, answered before a result, turns
        "format_error_rate": (
            sum(s["format_errors"] > 0 for s in summaries) / episodes if episodes else 0.0
        ),
        "rollout_seconds": wall_seconds,
    }
