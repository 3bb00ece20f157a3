"""A judge that raises, exits, returns garbage or hangs: that episode gets a ``judge_error``, the
others are judged, and the judge stage finishes within its timeout."""

from __future__ import annotations

import asyncio
import math
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from agentscope.agent import Agent
from agentscope.message import UserMsg
from helpers.scripted_engine import ScriptedEngine
from transformers import AutoTokenizer

from reinflow import Judge, Task, TunedModel, Workflow, WorkflowOutput
from reinflow.config import JudgeConfig
from reinflow.judging.judge_rollouts import judge_rollout_file
from reinflow.config.models import TINY_RANDOM_LLAMA, resolve_model
from reinflow.rollout.runner import plan_episodes, run_rollout

PROMISE = "bad judge: judge_error for that episode, the others judged"
TIMEOUT_SECONDS = 0.5
GOOD = "good"
RELEASE = threading.Event()  # set at the end of the module: lets the hung judge threads finish


class Echo(Workflow):
    """The scripted reply is the final answer."""

    async def run(self, task: Task, model: TunedModel) -> WorkflowOutput:
        reply = await Agent(name="echo", system_prompt="Answer.", **model.agent_kwargs()).reply(UserMsg("user", task.question))
        return WorkflowOutput(final_answer=reply.get_text_content())


MISBEHAVIOURS = {
    "raises": (lambda: 1 / 0, "ZeroDivisionError"),
    "sys_exit": (lambda: sys.exit(3), "SystemExit: 3"),
    "returns_none": (lambda: None, "compute_reward must return (raw_reward, is_success), got None"),
    "returns_three_values": (lambda: (1.0, True, "extra"), "compute_reward must return (raw_reward, is_success)"),
    "reward_nan": (lambda: (math.nan, True), "raw_reward must be a finite number, got nan"),
    "reward_string": (lambda: ("1.0", True), "raw_reward must be a finite number, got '1.0'"),
    "reward_too_big_for_float": (lambda: (10**400, True), "OverflowError"),
    "success_is_a_string": (lambda: (1.0, "no"), "is_success must be a bool, got 'no'"),
    "hangs_forever": (lambda: (RELEASE.wait(), (1.0, True))[1], f"timeout after {TIMEOUT_SECONDS:g}s"),
}


class MoodyJudge(Judge):
    """Correct for the good episodes; misbehaves as the episode's answer says."""

    def compute_reward(self, judge_input_dictionary):
        answer = judge_input_dictionary["final_answer"]
        return (1.0, True) if answer == GOOD else MISBEHAVIOURS[answer][0]()


class HangingAsyncJudge(Judge):
    async def compute_reward(self, judge_input_dictionary):
        if judge_input_dictionary["final_answer"] != GOOD:
            await asyncio.sleep(3600)
        return 1.0, True


@pytest.fixture(scope="module")
def rollout_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One episode per misbehaviour, each between good episodes of the same group."""
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(TINY_RANDOM_LLAMA))
    answers = [a for mode in MISBEHAVIOURS for a in (GOOD, mode, GOOD)]
    engine = ScriptedEngine(tokenizer, answers)
    tasks = [Task(task_id=f"t-{mode}", question="2?", reference_answer="2") for mode in MISBEHAVIOURS]
    output = tmp_path_factory.mktemp("judge") / "rollout.parquet"
    asyncio.run(run_rollout(
        Echo(), plan_episodes(tasks, 3, 0, 1),
        lambda seed: TunedModel(engine, tokenizer, max_model_len=512, max_new_tokens_per_turn=16, seed=seed),
        output, iteration=1, concurrency=1, episode_timeout_seconds=60, max_samples_per_episode=4,
    ))
    yield output
    RELEASE.set()


def judge_file(rollout_file: Path, tmp_path: Path, judge: Judge) -> tuple[dict, list[dict], float]:
    config = JudgeConfig(protocol="tests.x->MoodyJudge", timeout_seconds=TIMEOUT_SECONDS, concurrency=4)
    started = time.monotonic()
    metrics = judge_rollout_file(rollout_file, tmp_path / "judged.parquet", judge, config)
    return metrics, pq.read_table(tmp_path / "judged.parquet").to_pylist(), time.monotonic() - started


@pytest.mark.reliability(PROMISE, tried="judge raises, calls sys.exit, returns None/3-tuple/NaN/str/huge int/"
                                        "non-bool success, hangs forever (sync)")
@pytest.mark.parametrize("mode", list(MISBEHAVIOURS))
def test_misbehaving_judge_costs_only_its_episode(rollout_file: Path, tmp_path: Path, mode: str) -> None:
    metrics, rows, seconds = judge_file(rollout_file, tmp_path, MoodyJudge())
    errors = {row["final_answer"]: row["judge_error"] for row in rows if row["judge_error"] is not None}
    assert set(errors) == set(MISBEHAVIOURS)  # every misbehaviour errs, in its own episode only
    assert MISBEHAVIOURS[mode][1] in errors[mode], errors[mode]
    good = [row for row in rows if row["final_answer"] == GOOD]
    assert len(good) == 2 * len(MISBEHAVIOURS) and all(row["reward"] == 1.0 and row["is_success"] for row in good)
    assert metrics["judge_error_rate"] == pytest.approx(1 / 3)
    assert seconds < 10 * TIMEOUT_SECONDS + 5  # the hung judge did not hold the stage up


@pytest.mark.reliability(PROMISE, tried="async judge that never returns")
def test_hanging_async_judge_times_out(rollout_file: Path, tmp_path: Path) -> None:
    metrics, rows, seconds = judge_file(rollout_file, tmp_path, HangingAsyncJudge())
    assert {row["judge_error"] for row in rows if row["final_answer"] != GOOD} == {f"timeout after {TIMEOUT_SECONDS:g}s"}
    assert all(row["reward"] == 1.0 for row in rows if row["final_answer"] == GOOD)
    assert seconds < 10 * TIMEOUT_SECONDS + 5


def test_a_hung_sync_judge_does_not_block_interpreter_exit(tmp_path: Path) -> None:
    """The abandoned judge thread is a daemon: the process exits although the judge never returns."""
    import subprocess

    code = (
        "import asyncio, threading\nfrom reinflow.judging.judge import judge_one\n"
        "class J:\n    def compute_reward(self, d):\n        threading.Event().wait()\n"
        "v = asyncio.run(judge_one(J(), {}, 0.2))\nprint(v.judge_error)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout == "timeout after 0.2s\n", done.stderr
