"""``rollout.workflow_command``: one process per episode, talking to the endpoint.

End to end on the tiny random Llama and the real ``hf`` engine: the OpenAI-SDK agent
(``agents/openai_sdk_agent.py``) runs in its own interpreter, the rollout writes its Parquet file
and the judge scores it. Then the failures: a command that dies, prints garbage or hangs ends as a
failed or timed-out episode, the run goes on, and no process is left behind.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers.scripted_engine import ScriptedEngine
from transformers import AutoTokenizer

from reinflow.config import RolloutConfig, load_config
from reinflow.config.models import TINY_RANDOM_LLAMA, resolve_model
from reinflow.data.normalize import normalize_rows, row_format
from reinflow.data.shards import write_shards
from reinflow.data.sources import iter_source_rows
from reinflow.endpoint.command_workflow import CommandWorkflow
from reinflow.judging.judge import load_judge
from reinflow.judging.judge_rollouts import judge_input_for, judge_rollout_file
from reinflow.rollout.runner import plan_episodes, run_rollout
from reinflow.rollout.tuned_model import TunedModel
from reinflow.rollout.workflow import Task
from reinflow.run.rollout_runtime import build_runtime, rollout_iteration

ROOT = Path(__file__).resolve().parents[1]


def prepare_train_split(config) -> Path:
    data, path = config.data, ROOT / config.data.path
    fmt = row_format(data.source, data.train_split, data.max_question_chars, ROOT)
    rows = normalize_rows(iter_source_rows(data.source, data.train_split, ROOT), fmt)
    write_shards(rows, path, data.train_split, data.shard_size, {})
    return path


def test_openai_sdk_agent_rolls_out_and_is_judged_through_workflow_command(tmp_path):
    config = load_config(ROOT / "configs" / "quickstart.yaml", [
        "model.path=builtin:tiny-random-llama", "rollout.workflow=null",
        f"rollout.workflow_command=[{sys.executable}, agents/openai_sdk_agent.py]",
        "rollout.workflow_options={max_steps: 2}", "rollout.max_turns=2", "rollout.max_new_tokens_per_turn=16",
        "rollout.group_size=2", "rollout.concurrency=4", f"data.path={tmp_path / 'data'}",
        "data.source.sizes={train: 4, test: 2}", "data.tasks_per_iteration=2",
    ])
    data_path = prepare_train_split(config)
    runtime = build_runtime(config, ROOT)
    try:
        rollout_path = tmp_path / "rollouts" / "iter_1.parquet"
        metrics, _ = rollout_iteration(runtime, data_path, iteration=1, cursor=0, output=rollout_path)
    finally:
        runtime.close()
    rows = pq.read_table(rollout_path).to_pylist()
    assert metrics["episodes"] == 4 and len(rows) == 4
    for row in rows:
        assert row["status"] == "ok", row["error"]
        assert 1 <= row["num_turns"] <= 2 and row["generated_tokens"] > 0
        assert json.loads(row["metadata"])["llm_calls"] == row["num_turns"]
        assert sum(sum(sample["loss_mask"]) for sample in row["samples"]) == row["generated_tokens"]
        judge_input = judge_input_for(row)
        assert set(judge_input) == {"env", "workflow_task", "grouped_steps", "final_answer"}
        assert judge_input["workflow_task"].question == row["question"] and len(judge_input["grouped_steps"]) == row["num_turns"]

    judged_path = tmp_path / "judged" / "iter_1.parquet"
    judge_metrics = judge_rollout_file(rollout_path, judged_path, load_judge(config.judge, ROOT), config.judge)
    judged = pq.read_table(judged_path).to_pylist()
    assert judge_metrics["episodes"] == 4 and judge_metrics["judge_error_rate"] == 0.0
    assert all(not math.isnan(row["reward"]) for row in judged)


# ----------------------------------------------------------------------------- failures


def _script(body: str) -> list[str]:
    return [sys.executable, "-c", body]


HANGS = """
import subprocess, sys, time, pathlib
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
pathlib.Path(sys.argv[1]).write_text(f"{child.pid}")
time.sleep(120)
"""


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its reaper does not)."""
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def test_a_dying_garbled_or_hanging_command_fails_its_episode_and_the_run_goes_on(tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(TINY_RANDOM_LLAMA))
    pid_file = tmp_path / "grandchild.pid"
    commands = {
        "dies": _script("import sys; print('partial', flush=True); sys.exit('boom: the agent crashed')"),
        "garbles": _script("print('thinking...'); print('the answer is 5')"),
        "wrong keys": _script("import json; print(json.dumps({'answer': 5}))"),
        "hangs": [*_script(HANGS), str(pid_file)],
        "leaks its key": _script("import json, os, sys; key = os.environ['OPENAI_API_KEY']; "
                                 "print(json.dumps({'metadata': {'key': key}})); sys.stderr.write(key)"),
        "answers": _script("import json, sys; task = json.load(sys.stdin); "
                           "print(json.dumps({'final_answer': 5, 'metadata': {'env': {'q': task['question']}}}))"),
    }
    rows = {}
    for name, command in commands.items():
        rollout = RolloutConfig(workflow_command=command, max_model_len=512, max_new_tokens_per_turn=16)
        workflow = CommandWorkflow.from_rollout_config(rollout, ROOT)
        plans = plan_episodes([Task("t-1", "What is 2 + 3?", "5")], 1, 0, 1)
        output = tmp_path / f"{name.replace(' ', '_')}.parquet"
        make_model = lambda seed: TunedModel(ScriptedEngine(tokenizer, []), tokenizer, max_model_len=512,  # noqa: E731
                                             max_new_tokens_per_turn=16, seed=seed)
        try:
            asyncio.run(run_rollout(workflow, plans, make_model, output, iteration=1, concurrency=1,
                                    episode_timeout_seconds=3.0 if name == "hangs" else 60.0,
                                    max_samples_per_episode=2))
        finally:
            workflow.close()
        (rows[name],) = pq.read_table(output).to_pylist()

    status = {name: (row["status"], row["error"]) for name, row in rows.items()}
    assert status["dies"] == ("failed", "CommandFailed: workflow_command `%s` exited with status 1: boom: the agent "
                              "crashed" % sys.executable)
    assert status["garbles"][0] == "failed" and "the last line of stdout is not JSON" in status["garbles"][1]
    assert status["wrong keys"][0] == "failed" and "answer: Extra inputs are not permitted" in status["wrong keys"][1]
    assert status["hangs"] == ("timeout", "episode took longer than 3s")
    assert not _alive(int(pid_file.read_text()))  # the hanging agent's own child was killed with it
    assert status["answers"] == ("ok", None)
    assert json.loads(rows["leaks its key"]["metadata"]) == {"key": "[redacted]"}  # the run's token is kept nowhere
    assert rows["answers"]["final_answer"] == "5" and json.loads(rows["answers"]["metadata"])["env"]["q"] == "What is 2 + 3?"


def test_workflow_and_workflow_command_are_exclusive():
    with pytest.raises(ValueError, match="set exactly one of workflow .* workflow and workflow_command is set"):
        RolloutConfig(workflow="agents.math_agent->MathAgent", workflow_command=["python", "agent.py"])
    with pytest.raises(ValueError, match="none of them is set"):
        RolloutConfig()
