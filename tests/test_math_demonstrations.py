"""The agent job's demonstrations (``agents/math_demonstrations.py``): the scripted solver drives the
real MathAgent (the sandboxed tool really runs); each conversation, rendered for the warm start,
gives the token ids and loss masks of the same episode replayed through `TunedModel` with the
policy's replies; a written file loads with nothing skipped; the script refuses a task it cannot solve."""

from __future__ import annotations

import asyncio
import json

import pytest
from helpers.scripted_engine import ScriptedEngine
from test_demonstration import assert_same
from transformers import AutoTokenizer

from agents.math_agent import MathAgent
from agents.math_demonstrations import (
    FINAL_TOOL,
    PYTHON_TOOL,
    ScriptedSolver,
    UnsolvableTask,
    arithmetic_tasks,
    demonstration,
    write_demonstrations,
)
from reinflow import Task, TunedModel
from reinflow.config import RolloutConfig
from reinflow.config.models import TINY_RANDOM_LLAMA, resolve_model
from reinflow.data.demonstrations import load_demonstrations
from reinflow.rollout.chat_format import ChatTemplate, generic_reply
from reinflow.rollout.demonstration import render_demonstration
from reinflow.rollout.openai_chat import assistant_blocks, tool_schema_names
from reinflow.rollout.trajectory import build_samples

ROLLOUT = RolloutConfig(workflow="agents.math_agent->MathAgent", max_model_len=2048, max_new_tokens_per_turn=96,
                        max_turns=3)


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(resolve_model(TINY_RANDOM_LLAMA))


@pytest.fixture(scope="module")
def conversation() -> dict:
    return asyncio.run(demonstration(Task("d", "Calculate 47 - 9.", "38"), MathAgent()))


def test_the_solver_calls_the_tool_reads_its_result_and_answers_through_the_structured_call(conversation):
    calls = [m["tool_calls"][0]["function"] for m in conversation["messages"] if m["role"] == "assistant"]
    assert calls == [{"name": PYTHON_TOOL, "arguments": json.dumps({"code": "print(47 - 9)"})},
                     {"name": FINAL_TOOL, "arguments": json.dumps({"answer": "38"})}]
    tool_results = [m["content"] for m in conversation["messages"] if m["role"] == "tool"]
    assert tool_results == ["38\n"]  # what the sandbox printed, as the policy will read it
    assert tool_schema_names(conversation["tools"]) == {PYTHON_TOOL, FINAL_TOOL}
    assert conversation["messages"][0]["role"] == "system" and conversation["messages"][1]["content"] == "Calculate 47 - 9."


def test_the_rendered_demonstration_is_the_replayed_episode_token_for_token(tokenizer, conversation):
    names = tool_schema_names(conversation["tools"])
    replies = [generic_reply(assistant_blocks(m, names, i))
               for i, m in enumerate(conversation["messages"]) if m["role"] == "assistant"]
    model = TunedModel(ScriptedEngine(tokenizer, replies), tokenizer, max_model_len=ROLLOUT.max_model_len,
                       max_new_tokens_per_turn=ROLLOUT.max_new_tokens_per_turn, seed=1)
    output = asyncio.run(MathAgent().run(Task("d", "Calculate 47 - 9.", "38"), model))
    assert output.final_answer == "38" and len(model.turns) == 2
    rendered = render_demonstration(conversation, ChatTemplate(tokenizer), ROLLOUT)
    assert_same(rendered, build_samples(model.turns, max_samples=4))


def test_a_written_file_loads_for_the_warm_start_with_nothing_skipped(tokenizer, tmp_path):
    tasks = arithmetic_tasks(6, seed=3, operators="+-", max_digits=2)
    path = tmp_path / "demos.jsonl"
    assert asyncio.run(write_demonstrations(tasks, path)) == 6
    loaded = load_demonstrations(path, ChatTemplate(tokenizer), ROLLOUT)
    assert loaded.read == 6 and len(loaded.conversations) == 6 and not loaded.skipped
    answers = [json.loads(line)["messages"][-1]["tool_calls"][0]["function"]["arguments"] for line in path.open()]
    assert [json.loads(a)["answer"] for a in answers] == [t.reference_answer for t in tasks]


def test_a_question_without_an_expression_is_refused():
    with pytest.raises(UnsolvableTask, match="no arithmetic expression"):
        ScriptedSolver("What is the capital of France?")
