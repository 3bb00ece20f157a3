"""Hostile or broken model output through the tuned model, the tool-call parser and the rollout runner.

A scripted engine plays the policy (``tests/helpers/scripted_engine.py``). Each case must end as a
counted format error or a clean finish reason, with the episode recorded in the rollout file:
never a crash, never a failed episode.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from agentscope.agent import Agent, ReActConfig
from agentscope.message import UserMsg
from agentscope.permission import PermissionBehavior, PermissionDecision
from agentscope.tool import FunctionTool, Toolkit
from helpers.scripted_engine import ScriptedEngine
from transformers import AutoTokenizer

from reinflow import Task, TunedModel, Workflow, WorkflowOutput
from reinflow.config import RolloutConfig
from reinflow.engines.base import Generation, SamplingParams
from reinflow.config.models import TINY_RANDOM_LLAMA, resolve_model
from reinflow.rollout.runner import EpisodePlan, run_rollout
from reinflow.rollout.tool_calls import MAX_JSON_DEPTH

PROMISE = "hostile model output: counted format error or clean finish, episode recorded"
FINAL = "The answer is 2."
CALL = '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 1}}\n</tool_call>\n'
DEFAULT_CALL_CAP = RolloutConfig.model_fields["max_tool_calls_per_turn"].default


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(resolve_model(TINY_RANDOM_LLAMA))


class AddAgent(Workflow):
    """A ReAct agent with one ``add`` tool; it counts the tool's runs in ``self.options["runs"]``."""

    async def run(self, task: Task, model: TunedModel) -> WorkflowOutput:
        def add(a: int, b: int) -> str:
            """Add two integers.

            Args:
                a (int): The first number.
                b (int): The second number.
            """
            self.options["runs"].append((a, b))
            return str(a + b)

        allow = PermissionDecision(behavior=PermissionBehavior.ALLOW, message="always allowed")
        agent = Agent(name="solver", system_prompt="Add numbers with the add tool.",
                      toolkit=Toolkit(tools=[FunctionTool(add, name="add", permission=allow)]),
                      react_config=ReActConfig(max_iters=2), **model.agent_kwargs())
        reply = await agent.reply(UserMsg("user", task.question))
        return WorkflowOutput(final_answer=reply.get_text_content())


class IdsEngine(ScriptedEngine):
    """A scripted engine whose first reply is given as raw token ids (e.g. bytes that are not UTF-8)."""

    def __init__(self, tokenizer, first_ids: list[int], replies: list[str]) -> None:
        super().__init__(tokenizer, replies)
        self.first_ids = first_ids

    async def generate(self, prompt_ids: list[int], sampling: SamplingParams) -> Generation:
        if self.first_ids is None:
            return await super().generate(prompt_ids, sampling)
        ids, self.first_ids = self.first_ids + [self.eos_token_id], None
        self.prompts.append(list(prompt_ids))
        return Generation(token_ids=ids, logprobs=[-0.5] * len(ids), finish_reason="stop")


def run_one_episode(engine, tokenizer, tmp_path: Path, **limits) -> tuple[dict, list]:
    """One episode of AddAgent over ``engine``; returns its rollout row and the tool's runs."""
    runs: list[tuple[int, int]] = []
    params = {"max_model_len": 400_000, "max_new_tokens_per_turn": 300_000, "max_turns": 2,
              "max_tool_calls_per_turn": DEFAULT_CALL_CAP} | limits
    task = Task(task_id="t-0", question="What is 1 + 1?", reference_answer="2")
    output = tmp_path / "rollout.parquet"
    metrics = asyncio.run(run_rollout(
        AddAgent(runs=runs), [EpisodePlan(task, 0, 1)], lambda seed: TunedModel(engine, tokenizer, seed=seed, **params),
        output, iteration=1, concurrency=1, episode_timeout_seconds=600, max_samples_per_episode=8,
    ))
    (row,) = pq.read_table(output).to_pylist()
    assert metrics["episodes"] == 1 and metrics["episodes_failed"] == 0
    assert row["status"] == "ok" and row["error"] is None, row["error"]
    return row, runs


def first_turn(row: dict) -> dict:
    import json

    return json.loads(row["turns"])[0]


@pytest.mark.reliability(PROMISE, tried="no EOS (reply runs into max tokens)")
def test_no_eos_ends_the_turn_with_length(tokenizer, tmp_path: Path) -> None:
    engine = ScriptedEngine(tokenizer, [" ".join(str(i) for i in range(500)), FINAL])
    row, _ = run_one_episode(engine, tokenizer, tmp_path, max_new_tokens_per_turn=16)
    turn = first_turn(row)
    assert turn["finish_reason"] == "length" and turn["output_tokens"] == 16
    assert tokenizer.eos_token_id not in engine.generations[0].token_ids
    assert row["num_turns"] == 1 and row["format_errors"] == 0 and row["final_answer"].startswith("0 1 2")


@pytest.mark.reliability(PROMISE, tried="megabytes of text in one reply")
def test_megabytes_of_text_are_recorded(tokenizer, tmp_path: Path) -> None:
    text = "lorem ipsum " * 90_000  # ~1 MB
    engine = ScriptedEngine(tokenizer, [text, FINAL])
    row, _ = run_one_episode(engine, tokenizer, tmp_path, max_turns=1, max_model_len=1_000_000,
                             max_new_tokens_per_turn=900_000)
    assert first_turn(row)["response_text"] == text and len(text) > 10**6
    assert row["generated_tokens"] == len(engine.generations[0].token_ids) > 100_000
    assert row["finish_reason"] == "stop"


@pytest.mark.reliability(PROMISE, tried="token ids that decode to invalid UTF-8")
def test_invalid_utf8_token_ids_decode_with_replacement(tokenizer, tmp_path: Path) -> None:
    lone_lead_byte = tokenizer.convert_tokens_to_ids("Ã")  # byte 0xC3 alone: half a character
    ids = tokenizer.encode("The answer", add_special_tokens=False) + [lone_lead_byte, lone_lead_byte]
    ids += tokenizer.encode(" is 2.", add_special_tokens=False)
    row, _ = run_one_episode(IdsEngine(tokenizer, ids, [FINAL]), tokenizer, tmp_path)
    turn = first_turn(row)
    assert "\ufffd" in turn["response_text"] and turn["response_text"].startswith("The answer")
    assert turn["output_tokens"] == len(ids) + 1 and row["format_errors"] == 0


@pytest.mark.reliability(PROMISE, tried="2,000 tool calls in one reply (capped per turn)")
def test_thousands_of_tool_calls_are_capped(tokenizer, tmp_path: Path) -> None:
    engine = ScriptedEngine(tokenizer, [CALL * 2000, FINAL])
    row, runs = run_one_episode(engine, tokenizer, tmp_path)
    assert len(runs) == DEFAULT_CALL_CAP == row["num_tool_calls"]
    assert row["format_errors"] == 1
    assert first_turn(row)["format_errors"] == [
        f"{2000 - DEFAULT_CALL_CAP} more tool calls in this reply were not run: at most {DEFAULT_CALL_CAP} per reply"
    ]


@pytest.mark.reliability(PROMISE, tried="100,000 levels of nested JSON in a tool call")
def test_deeply_nested_json_is_a_format_error(tokenizer, tmp_path: Path) -> None:
    depth = 100_000
    call = '<tool_call>{"name": "add", "arguments": {"a": ' + "[" * depth + "]" * depth + ', "b": 1}}</tool_call>'
    row, runs = run_one_episode(ScriptedEngine(tokenizer, [call, FINAL]), tokenizer, tmp_path)
    assert runs == [] and row["format_errors"] == 1
    assert first_turn(row)["format_errors"] == [f"the tool call's JSON nests deeper than {MAX_JSON_DEPTH} levels"]


@pytest.mark.reliability(PROMISE, tried="just too deep for json's own recursion limit (990 levels)")
def test_nesting_just_inside_the_decoder_limit_is_a_format_error(tokenizer, tmp_path: Path) -> None:
    call = '<tool_call>{"name": "add", "arguments": {"a": ' + "[" * 990 + "]" * 990 + ', "b": 1}}</tool_call>'
    row, runs = run_one_episode(ScriptedEngine(tokenizer, [call, FINAL]), tokenizer, tmp_path)
    assert runs == [] and row["format_errors"] == 1


@pytest.mark.reliability(PROMISE, tried="a call of an unknown tool; an unclosed tag; a stray closing tag")
@pytest.mark.parametrize(("reply", "error"), [
    ('<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>', "unknown tool 'rm_rf'; the available tools are: add"),
    ('<tool_call>{"name": "add", "arguments": {"a": 1', "unclosed <tool_call> tag"),
    ("done </tool_call>", "</tool_call> without a matching <tool_call>"),
])
def test_broken_call_is_a_counted_format_error(tokenizer, tmp_path: Path, reply: str, error: str) -> None:
    row, runs = run_one_episode(ScriptedEngine(tokenizer, [reply, FINAL]), tokenizer, tmp_path)
    assert runs == [] and row["format_errors"] == 1
    assert first_turn(row)["format_errors"][0].startswith(error)
