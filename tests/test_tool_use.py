"""Tool-use metrics: per episode from the tuned model's turns (a real AgentScope agent on a scripted
engine, through the rollout runner into the Parquet row), per rollout, and per evaluation with
95% intervals."""

from __future__ import annotations

import asyncio
import doctest
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from agentscope.agent import Agent, ReActConfig
from agentscope.message import UserMsg
from helpers.scripted_engine import ScriptedEngine
from test_tuned_model import ADD_CALL, AddTool, FinalResult, make_model
from transformers import AutoTokenizer

from reinflow import Task, TunedModel, Workflow, WorkflowOutput
from reinflow.config.models import TINY_RANDOM_LLAMA, resolve_model
from reinflow.rollout import tool_use as tool_use_module
from reinflow.rollout.episode_schema import JUDGED_SCHEMA
from reinflow.rollout.runner import plan_episodes, run_rollout
from reinflow.rollout.tool_use import STRUCTURED_OUTPUT_TOOL, episode_tool_use
from reinflow.run import evaluation
from reinflow.run.evaluation import tool_use_with_intervals, wilson_interval

ANSWER = '<tool_call>\n{"name": "GenerateStructuredOutput", "arguments": {"answer": "5"}}\n</tool_call>'
BAD_CALL = '<tool_call>{"name": "add", "arguments": {"a": 2,}}</tool_call>'


@dataclass
class FakeTurn:
    tool_calls: list[dict] = field(default_factory=list)
    format_errors: list[str] = field(default_factory=list)


def calls(*names: str) -> list[dict]:
    return [{"id": f"c{k}", "name": name, "arguments": {}} for k, name in enumerate(names)]


def test_answering_in_the_turn_of_a_tool_call_is_answering_before_its_result():
    patient = [FakeTurn(calls("add")), FakeTurn(calls(STRUCTURED_OUTPUT_TOOL))]
    impatient = [FakeTurn(calls("add", STRUCTURED_OUTPUT_TOOL))]
    malformed_then_answer = [FakeTurn(calls(STRUCTURED_OUTPUT_TOOL), ["invalid JSON"])]
    assert episode_tool_use(patient, has_final_answer=True) == tool_use_module.ToolUse(1, 0, False, 2)
    assert episode_tool_use(impatient, has_final_answer=True) == tool_use_module.ToolUse(1, 0, True, 1)
    assert episode_tool_use(malformed_then_answer, has_final_answer=True) == tool_use_module.ToolUse(0, 1, True, 1)
    # without structured output, the last turn answers when the workflow registered an answer
    text_answer = [FakeTurn(calls("add")), FakeTurn(calls("add"))]
    assert episode_tool_use(text_answer, has_final_answer=True).answered_before_tool_result
    assert not episode_tool_use(text_answer, has_final_answer=False).answered_before_tool_result
    assert episode_tool_use([], has_final_answer=False) == tool_use_module.ToolUse(0, 0, False, 0)


class AddAndAnswer(Workflow):
    """Adds with a tool and hands in a structured answer."""

    async def run(self, task: Task, model: TunedModel) -> WorkflowOutput:
        agent = Agent(name="solver", system_prompt="Add.", toolkit=AddTool().toolkit(),
                      react_config=ReActConfig(max_iters=3), **model.agent_kwargs())
        reply = await agent.reply(UserMsg("user", task.question), structured_schema=FinalResult)
        return WorkflowOutput(final_answer=(reply.structured_output or {}).get("answer"))


def test_rollout_rows_and_metrics_carry_the_tool_use(tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(TINY_RANDOM_LLAMA))
    scripts = iter([
        [ADD_CALL, ANSWER],  # calls the tool, reads the result, answers
        [ADD_CALL + "\n" + ANSWER],  # answers in the turn of its call: before the result
        [BAD_CALL + "\n" + ANSWER],  # a malformed call, and the answer with it
    ])
    tasks = [Task(task_id=f"t{k}", question="What is 2 + 3?", reference_answer="5", row={}) for k in range(3)]
    output = tmp_path / "rollout.parquet"
    def next_model(seed: int) -> TunedModel:
        return make_model(ScriptedEngine(tokenizer, next(scripts)), tokenizer)

    metrics = asyncio.run(run_rollout(AddAndAnswer(), plan_episodes(tasks, 1, 0, 1), next_model, output, iteration=1,
                                      concurrency=1, episode_timeout_seconds=60, max_samples_per_episode=4))
    rows = pq.read_table(output).to_pylist()
    assert [row["status"] for row in rows] == ["ok"] * 3 and [row["final_answer"] for row in rows] == ["5"] * 3
    use = [(r["num_tool_calls"], r["format_errors"], r["answered_before_tool_result"], r["num_turns"]) for r in rows]
    assert use == [(1, 0, False, 2), (1, 0, True, 1), (0, 1, True, 1)]
    assert metrics["tool_call_share"] == pytest.approx(2 / 3)
    assert metrics["tool_calls_per_episode"] == pytest.approx(2 / 3)
    assert metrics["malformed_tool_calls_per_episode"] == pytest.approx(1 / 3)
    assert metrics["answered_before_tool_result_share"] == pytest.approx(2 / 3)
    assert metrics["turns_per_episode"] == pytest.approx(4 / 3)


def test_evaluation_reports_tool_use_with_intervals(tmp_path):
    rows = [{"num_tool_calls": calls_made, "format_errors": bad, "answered_before_tool_result": early, "num_turns": turns}
            for calls_made, bad, early, turns in [(1, 0, False, 2), (0, 2, True, 1), (3, 0, False, 4), (0, 0, None, 1)]]
    path = tmp_path / "greedy_judged.parquet"
    schema = pa.schema([JUDGED_SCHEMA.field(name) for name in rows[0]])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    metrics = tool_use_with_intervals(path)
    assert metrics["tool_call_share"] == 0.5
    assert (metrics["tool_call_share_ci_low"], metrics["tool_call_share_ci_high"]) == pytest.approx(wilson_interval(2, 4))
    assert metrics["answered_before_tool_result_share"] == 0.25
    assert metrics["malformed_tool_calls_per_episode"] == 0.5
    # mean 0.5 of [0, 2, 0, 0]: sd 1, half-width 1.96 * 1 / 2
    assert metrics["malformed_tool_calls_per_episode_ci_low"] == pytest.approx(0.5 - 0.979982)
    assert metrics["turns_per_episode"] == 2.0 and metrics["turns_per_episode_ci_high"] > 2.0


def test_doctests():
    assert doctest.testmod(tool_use_module).failed == 0
    assert doctest.testmod(evaluation).failed == 0
