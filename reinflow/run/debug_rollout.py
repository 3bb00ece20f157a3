"""``reinflow rollout --task N``: run one task's episodes in this process and show them turn by turn.

Everything runs in the calling process (no Prefect, no Ray), so a breakpoint in the user's
workflow or judge stops right there.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from reinflow.config import ExperimentConfig
from reinflow.judging.judge import judge_one, load_judge
from reinflow.judging.judge_rollouts import judge_input_for
from reinflow.rollout.runner import plan_episodes, run_episode
from reinflow.run.rollout_runtime import build_runtime
from reinflow.data.task_cursor import next_tasks


def debug_rollout(config: ExperimentConfig, project_root: Path, task_index: int, episodes: int) -> list[dict[str, Any]]:
    """Run ``episodes`` episodes of the train split's task ``task_index`` and judge them; return rows."""
    runtime = build_runtime(config, project_root)
    (task,), _ = next_tasks(project_root / config.data.path, config.data.train_split, task_index, 1)
    plans = plan_episodes([task], episodes, config.train.seed, iteration=0)
    judge = load_judge(config.judge, project_root)

    async def run_all() -> list[dict[str, Any]]:
        rows = []
        for plan in plans:
            row = await run_episode(runtime.workflow, plan, runtime.model_factory(), 0,
                                    config.rollout.episode_timeout_seconds, config.rollout.max_samples_per_episode)
            if row["status"] == "ok":
                verdict = await judge_one(judge, judge_input_for(row), config.judge.timeout_seconds)
                row |= {"raw_reward": verdict.raw_reward, "judge_error": verdict.judge_error}
            rows.append(row)
        return rows

    return asyncio.run(run_all())


ROLE_STYLE = {"system": "magenta", "user": "cyan", "assistant": "green", "tool": "yellow"}


def print_episode(console: Console, row: dict[str, Any]) -> None:
    """The conversation turn by turn, with token counts, tool calls and the judgement."""
    console.rule(f"[bold]{escape(row['episode_id'])}[/]  status={row['status']}")
    for message in json.loads(row["messages"]):
        style = ROLE_STYLE.get(message["role"], "white")
        console.print(f"[{style} bold]{message['role']}[/]: {escape(message['content'])}", highlight=False)
    for turn in json.loads(row["turns"]):
        console.print(
            f"[dim]turn {turn['index']}: {turn['prompt_tokens']} prompt tokens, {turn['output_tokens']} generated, "
            f"finish={turn['finish_reason']}, tool calls={len(turn['tool_calls'])}, "
            f"format errors={len(turn['format_errors'])}[/]",
            highlight=False,
        )
    if row["error"]:
        console.print(f"[red]error:[/] {escape(row['error'])}", highlight=False)
    console.print(
        f"final answer={row['final_answer']!r}  reference={row['reference_answer']!r}  "
        f"reward={row.get('raw_reward')}  judge error={row.get('judge_error')}",
        highlight=False,
    )
