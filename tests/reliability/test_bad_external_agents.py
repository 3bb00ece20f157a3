"""Broken external agents (``rollout.workflow_command``): the bad episode ends ``failed`` (or
``timeout``) with a clear error, the good episode beside it ends ``ok``, the rollout file holds both,
and no process of the agent is left.

Each case runs a real rollout of two episodes at once (``run_rollout`` with the real endpoint on
loopback and a scripted engine): the same command for both, a small dispatcher that behaves badly
for the task ``bad`` and answers for the task ``good``. Commands that cannot start at all fail
every episode, each with the same clear error, and the rollout still ends with its file written.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers.scripted_engine import ScriptedEngine
from transformers import AutoTokenizer

from reinflow.config import RolloutConfig
from reinflow.config.models import TINY_RANDOM_LLAMA, resolve_model
from reinflow.endpoint.command_workflow import CommandWorkflow
from reinflow.rollout.runner import plan_episodes, run_rollout
from reinflow.rollout.tuned_model import TunedModel
from reinflow.rollout.workflow import Task

PROMISE = "external agents: a broken command fails its own episode, the others finish"
ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 4.0
OUTPUT_LIMIT = 64 * 1024
TASKS = [Task("bad", "What is 2 + 3?", "5"), Task("good", "What is 2 + 3?", "5")]

DISPATCH = """
import json, os, sys
task = json.load(sys.stdin)
if task["task_id"] == "good":
    print(json.dumps({"final_answer": 5}))
    sys.exit(0)
exec(sys.argv[1])
"""


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(resolve_model(TINY_RANDOM_LLAMA))


def roll_out(tokenizer, command: list[str], tmp_path: Path) -> dict[str, dict]:
    """One rollout of the two tasks, both episodes at once; the rows by task id."""
    rollout = RolloutConfig(workflow_command=command, max_model_len=512, max_new_tokens_per_turn=16,
                            max_command_output_bytes=OUTPUT_LIMIT)
    workflow = CommandWorkflow.from_rollout_config(rollout, ROOT)
    output = tmp_path / "rollout.parquet"

    def make_model(seed: int) -> TunedModel:
        return TunedModel(ScriptedEngine(tokenizer, []), tokenizer, max_model_len=512, max_new_tokens_per_turn=16,
                          seed=seed)

    try:
        asyncio.run(run_rollout(workflow, plan_episodes(TASKS, 1, 0, 1), make_model, output, iteration=1,
                                concurrency=2, episode_timeout_seconds=TIMEOUT, max_samples_per_episode=2))
    finally:
        workflow.close()
    return {row["task_id"]: row for row in pq.read_table(output).to_pylist()}


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its reaper does not)."""
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")


LEAVES_A_CHILD = """
import subprocess, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
open(os.environ["PID_FILE"], "w").write(str(child.pid))
{then}
"""
PROGRAM = f"workflow_command `{sys.executable}`"

# (id, what the bad episode runs, its status, fragments of its error (None: no error))
BEHAVIOURS = [
    ("exits_non_zero", "sys.stderr.write('starting\\nboom: the agent crashed\\n'); sys.exit(3)",
     "failed", [f"CommandFailed: {PROGRAM} exited with status 3: boom: the agent crashed"]),
    ("exits_non_zero_silently", "sys.exit(1)", "failed", [f"{PROGRAM} exited with status 1: no stderr"]),
    ("killed_by_a_signal", "import signal; os.kill(os.getpid(), signal.SIGKILL)", "failed",
     [f"{PROGRAM} was killed by signal 9"]),
    ("raises_an_exception", "raise RuntimeError('model not reachable')", "failed",
     ["exited with status 1: RuntimeError: model not reachable"]),
    ("prints_nothing", "pass", "failed", [f"{PROGRAM} printed nothing on stdout", "(stderr: -)"]),
    ("writes_to_stderr_only", "sys.stderr.write('I only log to stderr\\n')", "failed",
     ["printed nothing on stdout", "(stderr: I only log to stderr)"]),
    ("prints_garbage", "print('thinking...'); print('the answer is 5')", "failed",
     ["the last line of stdout is not JSON", "'the answer is 5'"]),
    ("prints_invalid_utf8", "sys.stdout.buffer.write(b'\\xff\\xfe{\\x80}\\n')", "failed",
     ["the last line of stdout is not JSON"]),
    ("result_not_an_object", "print(json.dumps([5]))", "failed", ["bad result line", "(keys: final_answer,"]),
    ("result_with_unknown_keys", "print(json.dumps({'answer': 5}))", "failed",
     ["bad result line", "answer: Extra inputs are not permitted"]),
    ("final_answer_a_list", "print(json.dumps({'final_answer': [5]}))", "failed", ["bad result line", "final_answer"]),
    ("result_nested_30000_deep", "print('[' * 30000 + ']' * 30000)", "failed",
     ["the last line of stdout is not JSON", "nested too deep"]),
    ("huge_garbage_stdout", "sys.stdout.write('x' * (64 << 20))", "failed", ["the last line of stdout is not JSON"]),
    ("huge_stderr_then_fails", "sys.stderr.write('y' * (64 << 20) + '\\nlast words\\n'); sys.exit(2)", "failed",
     ["exited with status 2: last words"]),
    ("huge_output_then_a_result", "sys.stdout.write('z' * (64 << 20) + '\\n'); print(json.dumps({'final_answer': 7}))",
     "ok", None),
    ("hangs_past_the_episode_timeout", "import time; time.sleep(120)", "timeout",
     [f"episode took longer than {TIMEOUT:g}s"]),
    ("hangs_with_stdout_closed", "import time; os.close(1); time.sleep(120)", "timeout",
     [f"episode took longer than {TIMEOUT:g}s"]),
    ("hangs_and_its_child_too", LEAVES_A_CHILD.format(then="time.sleep(120)"), "timeout",
     [f"episode took longer than {TIMEOUT:g}s"]),
    ("answers_and_leaves_a_child_running", LEAVES_A_CHILD.format(then="print(json.dumps({'final_answer': 5}))"),
     "ok", None),
    ("prints_its_api_key", "k = os.environ['OPENAI_API_KEY']; sys.stderr.write(k + '\\n'); print(k); sys.exit(4)",
     "failed", ["exited with status 4: [redacted]"]),
]


@pytest.mark.reliability(PROMISE, tried="a command that exits non-zero (with or without stderr, by an exception or a "
                         "signal), prints nothing, writes to stderr only, prints garbage, invalid UTF-8, a non-object, "
                         "unknown keys, a wrong type or 30,000-deep JSON, 64 MB of stdout or stderr, hangs past the "
                         "episode timeout (stdout closed, with a child), leaves a child behind, prints its API key")
@pytest.mark.parametrize(("body", "status", "fragments"), [r[1:] for r in BEHAVIOURS], ids=[r[0] for r in BEHAVIOURS])
def test_a_broken_agent_fails_its_episode_and_the_other_finishes(tokenizer, tmp_path: Path, monkeypatch,
                                                                 body: str, status: str, fragments) -> None:
    pid_file = tmp_path / "child.pid"
    monkeypatch.setenv("PID_FILE", str(pid_file))
    rows = roll_out(tokenizer, [sys.executable, "-c", DISPATCH, body], tmp_path)
    bad, good = rows["bad"], rows["good"]
    assert (good["status"], good["error"], good["final_answer"]) == ("ok", None, "5")
    assert bad["status"] == status, bad["error"]
    if fragments is None:
        assert bad["error"] is None and bad["final_answer"] in ("5", "7")
    else:
        assert "\n" not in bad["error"] and len(bad["error"]) <= 2000, bad["error"]
        for fragment in fragments:
            assert fragment in bad["error"], bad["error"]
    if pid_file.exists():
        assert not alive(int(pid_file.read_text()))  # what the agent started ended with its episode


UNSTARTABLE = [
    ("program_not_found", ["no-such-agent-program"], ["could not start", "no-such-agent-program", "not found"]),
    ("program_path_missing", ["./agents/no_such_agent.py"], ["could not start", "no_such_agent.py", "not found"]),
    ("file_not_executable", ["docs/ENDPOINT.md"], ["could not start", "docs/ENDPOINT.md", "not executable"]),
    ("a_folder", ["./agents"], ["could not start", "agents", "not executable"]),
]


@pytest.mark.reliability(PROMISE, tried="a command that cannot start: a program not on $PATH, a missing path, a "
                         "file that is not executable, a folder (removed or changed after the preflight check)")
@pytest.mark.parametrize(("command", "fragments"), [r[1:] for r in UNSTARTABLE], ids=[r[0] for r in UNSTARTABLE])
def test_a_command_that_cannot_start_fails_every_episode_clearly(tokenizer, tmp_path: Path, command: list[str],
                                                                 fragments: list[str]) -> None:
    rows = roll_out(tokenizer, command, tmp_path)
    assert set(rows) == {"bad", "good"}
    for row in rows.values():
        assert row["status"] == "failed" and "\n" not in row["error"], row["error"]
        for fragment in fragments:
            assert fragment in row["error"], row["error"]
    assert os.path.isdir(ROOT / "agents")  # the project is untouched
