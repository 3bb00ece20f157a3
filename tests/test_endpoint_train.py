"""An agent written with the OpenAI SDK alone, in its own interpreter process, trains through
``rollout.workflow_command``: ``reinflow train`` end to end on the tiny model (2 iterations)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers.train_run import assert_run_is_whole, project, run_dir, train

ROOT = Path(__file__).resolve().parents[1]
OVERRIDES = (
    "rollout.workflow=null",
    f"rollout.workflow_command=[{sys.executable}, {ROOT / 'agents' / 'openai_sdk_agent.py'}]",
    "rollout.workflow_options={max_steps: 2}",
    "rollout.max_turns=2",
)


@pytest.mark.slow
def test_openai_sdk_agent_trains_through_workflow_command(tmp_path):
    root = project(tmp_path)
    train(root, *OVERRIDES)
    assert_run_is_whole(root, *OVERRIDES)
    rows = pq.read_table(run_dir(root) / "rollouts" / "iter_2.parquet").to_pylist()
    assert all(row["status"] == "ok" and row["samples"] for row in rows)
    assert all(json.loads(row["metadata"])["llm_calls"] == row["num_turns"] for row in rows)
