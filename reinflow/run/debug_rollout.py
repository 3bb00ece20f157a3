"""``reinflow rollout --task N``: run one task's episodes in this process and show them turn by turn.

Everything runs in the calling process (no Prefect, no Ray), so a breakpoint in the user's
workflow or judge stops right there. The episodes run and are judged exactly as in training
(``rollout_runtime.roll_out``, then ``judge_rollout_file``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from rich.console import Console
from rich.markup import escape

from reinflow.config import ExperimentConfig
from reinflow.data.task_cursor import next_tasks
from reinflow.judging.judge import load_judge
from reinflow.judging.judge_rollouts import judge_rollout_file
from reinflow.run.preflight import check_task_index
from reinflow.run.rollout_runtime import build_runtime, roll_out
from reinflow.run.run_state import experiment_dir


def debug_rollout(config: ExperimentConfig, project_root: Path, task_index: int, episodes: int) -> list[dict[str, Any]]:
    """Run ``episodes`` episodes of the train split's task ``task_index``, judge them and return
    the judged rows. The files stay under ``<experiment folder>/debug/task_<N>/`` for a closer look."""
    check_task_index(config.data, project_root, task_index)  # the shards are there now: their row count
    (task,), _ = next_tasks(project_root / config.data.path, config.data.train_split, task_index, 1)
    judge = load_judge(config.judge, project_root)
    folder = experiment_dir(config, project_root) / "debug" / f"task_{task_index}"
    runtime = build_runtime(config, project_root)
    try:
        roll_out(runtime, [task], episodes, folder / "rollout.parquet", iteration=0)
    finally:
        runtime.close()
    judge_rollout_file(folder / "rollout.parquet", folder / "judged.parquet", judge, config.judge)
    return pq.read_table(folder / "judged.parquet").to_pylist()


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
