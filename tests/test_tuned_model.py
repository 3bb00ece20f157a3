"""The tuned model inside a real AgentScope 2.x ReAct agent.

Engines used here (test engines, see ``tests/helpers``): a *scripted* engine that replies with
pre-set text tokenized by the policy tokenizer, where a test needs to control exactly what the
"model" says (a valid tool call, a malformed one, a reply cut off by the token limit); and a small
*real* sequential engine running the tiny random Llama, to check that real generations are
recorded exactly.
"""

from __future__ import annotations

import asyncio
import copy
import re
import subprocess
import sys

import pytest
import torch
from agentscope.agent import Agent, ReActConfig
from agentscope.message import HintBlock, Msg, TextBlock, ToolCallBlock, ToolResultBlock, UserMsg
from agentscope.permission import PermissionBehavior, PermissionDecision
from agentscope.tool import FunctionTool, Toolkit
from helpers.scripted_engine import ScriptedEngine
from helpers.sequential_engine import SequentialEngine
from pydantic import BaseModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from reinflow import Task, TunedModel, Workflow, WorkflowOutput
from reinflow.config import RolloutConfig
from reinflow.config.models import TINY_RANDOM_LLAMA, resolve_model
from reinflow.rollout.trajectory import build_samples
from reinflow.rollout.chat_format import INVALID_TOOL_CALL, NonReproduciblePrompt, PolicyFormatter
from reinflow.rollout.tuned_model import ContextOverflow, EpisodeEnded, TurnLimitReached

ADD_CALL = 'Let me add.\n<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>'
FINAL = "The sum is 5."
TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}|current-time")


class FinalResult(BaseModel):
    """The agent's final answer."""

    answer: str


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(resolve_model(TINY_RANDOM_LLAMA))


class AddTool:
    """An ``add(a, b)`` tool that remembers its calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def add(self, a: int, b: int) -> str:
        """Add two integers.

        Args:
            a (int): The first number.
            b (int): The second number.
        """
        self.calls.append((a, b))
        return str(a + b)

    def toolkit(self) -> Toolkit:
        allow = PermissionDecision(behavior=PermissionBehavior.ALLOW, message="add is always allowed")
        return Toolkit(tools=[FunctionTool(self.add, name="add", permission=allow)])


def make_agent(model: TunedModel, tool: AddTool, max_iters: int = 4) -> Agent:
    return Agent(
        name="solver",
        system_prompt="You add numbers with the add tool.",
        toolkit=tool.toolkit(),
        react_config=ReActConfig(max_iters=max_iters),
        **model.agent_kwargs(),
    )


def make_model(engine, tokenizer, **kwargs) -> TunedModel:
    limits = {"max_model_len": 2048, "max_new_tokens_per_turn": 128} | kwargs
    return TunedModel(engine, tokenizer, temperature=1.0, seed=7, **limits)


def run(agent: Agent, question: str = "What is 2 + 3?", **kwargs) -> Msg:
    return asyncio.run(agent.reply(UserMsg("user", question), **kwargs))


def prompt_texts(tokenizer, model: TunedModel) -> list[str]:
    return [tokenizer.decode(t.prompt_ids) for t in model.turns]


# ----------------------------------------------------------------------------- tool calls


def test_tool_call_runs_and_the_second_prompt_extends_the_first(tokenizer):
    engine, tool = ScriptedEngine(tokenizer, [ADD_CALL, FINAL]), AddTool()
    model = make_model(engine, tokenizer)
    reply = run(make_agent(model, tool))

    assert tool.calls == [(2, 3)]
    assert reply.get_text_content() == FINAL
    first, second = model.turns
    assert first.tool_calls == [{"id": "call_0_0", "name": "add", "arguments": {"a": 2, "b": 3}}]
    assert first.output_ids == engine.generations[0].token_ids and first.output_ids[-1] == tokenizer.eos_token_id
    assert [first.prompt_ids, second.prompt_ids] == engine.prompts
    # token-for-token extension: prompt 2 = prompt 1 + output 1 (with its EOS) + the new suffix
    prefix = first.prompt_ids + first.output_ids
    assert second.prompt_ids[: len(prefix)] == prefix and second.extends_previous
    suffix = tokenizer.decode(second.prompt_ids[len(prefix) :])
    assert suffix == "\n<|im_start|>user\n<tool_response>\n5\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
    # the tools are offered in a Hermes block of the system prompt (SmolLM2's template has no tools)
    assert not model.template.native_tools
    assert '<tools>\n{"type": "function", "function": {"name": "add"' in first.prompt_text
    assert all(not TIMESTAMP.search(text) for text in prompt_texts(tokenizer, model))
    assert model.format_errors == 0 and not model.context_overflow

    (sample,) = build_samples(model.turns, max_samples=4)
    assert sample.token_ids == second.prompt_ids + second.output_ids
    assert sample.spans == [(len(first.prompt_ids), len(prefix)), (len(second.prompt_ids), len(sample.token_ids))]
    assert [sample.token_ids[s:e] for s, e in sample.spans] == [first.output_ids, second.output_ids]
    assert [sample.logprobs[s:e] for s, e in sample.spans] == [first.output_logprobs, second.output_logprobs]
    assert sample.num_trained_tokens == len(first.output_ids) + len(second.output_ids)


def test_several_calls_in_one_turn_come_back_in_call_order(tokenizer):
    two_calls = (
        '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 1}}\n</tool_call>\n'
        '<tool_call>\n{"name": "add", "arguments": {"a": 20, "b": 22}}\n</tool_call>'
    )
    engine, tool = ScriptedEngine(tokenizer, [two_calls, "2 and 42."]), AddTool()
    model = make_model(engine, tokenizer)
    run(make_agent(model, tool))
    assert sorted(tool.calls) == [(1, 1), (20, 22)]
    assert "<tool_response>\n2\n</tool_response>\n<tool_response>\n42\n</tool_response>" in model.turns[1].prompt_text
    assert len(build_samples(model.turns, max_samples=4)) == 1


@pytest.mark.parametrize(
    ("bad_call", "error"),
    [
        ('<tool_call>{"name": "add", "arguments": {"a": 2,}}</tool_call>', "Error: invalid JSON in the tool call"),
        ('<tool_call>{"name": "mul", "arguments": {"a": 2}}</tool_call>', "Error: unknown tool 'mul'; the available tools are: add"),
        ('<tool_call>{"name": "add", "arguments": [2, 3]}</tool_call>', "Error: 'arguments' must be a JSON object, got a list"),
    ],
)
def test_malformed_call_is_counted_and_the_agent_sees_an_error(tokenizer, bad_call, error):
    engine, tool = ScriptedEngine(tokenizer, [bad_call, ADD_CALL, FINAL]), AddTool()
    model = make_model(engine, tokenizer)
    reply = run(make_agent(model, tool))

    assert reply.get_text_content() == FINAL  # the episode went on
    assert tool.calls == [(2, 3)]  # only the well-formed call ran
    assert model.format_errors == 1
    assert len(model.turns[0].format_errors) == 1 and model.turns[0].tool_calls == []
    assert f"<tool_response>\n{error}" in model.turns[1].prompt_text
    assert INVALID_TOOL_CALL not in model.turns[1].prompt_text  # the raw reply is rendered as generated
    assert len(build_samples(model.turns, max_samples=4)) == 1


def test_turn_limit_ends_the_episode(tokenizer):
    model = make_model(ScriptedEngine(tokenizer, [ADD_CALL, FINAL]), tokenizer, max_turns=1)
    with pytest.raises(TurnLimitReached):
        run(make_agent(model, AddTool()))
    assert len(model.turns) == 1


# ----------------------------------------------------------------------------- limits


def test_max_new_tokens_is_clipped_to_the_room_left(tokenizer):
    probe = make_model(ScriptedEngine(tokenizer, [FINAL]), tokenizer)
    run(make_agent(probe, AddTool()))
    prompt_len = len(probe.turns[0].prompt_ids)

    engine = ScriptedEngine(tokenizer, [ADD_CALL])
    model = make_model(engine, tokenizer, max_model_len=prompt_len + 5, max_new_tokens_per_turn=64)
    run(make_agent(model, AddTool()))
    assert engine.requests[0].max_new_tokens == 5
    assert model.turns[0].finish_reason == "length" and len(model.turns[0].output_ids) == 5


def test_context_overflow_ends_the_episode_with_the_flag(tokenizer):
    probe = make_model(ScriptedEngine(tokenizer, [ADD_CALL, FINAL]), tokenizer)
    run(make_agent(probe, AddTool()))
    second_prompt_len = len(probe.turns[1].prompt_ids)

    engine, tool = ScriptedEngine(tokenizer, [ADD_CALL, FINAL]), AddTool()
    model = make_model(engine, tokenizer, max_model_len=second_prompt_len, max_new_tokens_per_turn=48)
    with pytest.raises(ContextOverflow, match=f"max_model_len is {second_prompt_len}") as raised:
        run(make_agent(model, tool))
    assert isinstance(raised.value, EpisodeEnded)
    assert model.context_overflow
    assert tool.calls == [(2, 3)] and len(model.turns) == 1 and len(engine.prompts) == 1


def test_reply_cut_by_length_then_structured_output(tokenizer):
    """A reply without EOS: the template's <|im_end|> becomes a prompt token of the next turn."""
    rambling = "Let me think about this question step by step. " * 8
    structured = '<tool_call>\n{"name": "GenerateStructuredOutput", "arguments": {"answer": "5"}}\n</tool_call>'
    engine = ScriptedEngine(tokenizer, [rambling, structured])
    model = make_model(engine, tokenizer, max_new_tokens_per_turn=40)
    reply = run(make_agent(model, AddTool()), structured_schema=FinalResult)

    assert reply.structured_output == {"answer": "5"}
    first, second = model.turns
    assert first.finish_reason == "length" and tokenizer.eos_token_id not in first.output_ids
    prefix = first.prompt_ids + first.output_ids
    assert second.prompt_ids[: len(prefix)] == prefix
    assert second.prompt_ids[len(prefix)] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert "required to generate structured output" in tokenizer.decode(second.prompt_ids[len(prefix) :])
    (sample,) = build_samples(model.turns, max_samples=2)
    assert sample.loss_mask[len(prefix)] == 0  # the closing <|im_end|> was not generated
    assert sample.num_trained_tokens == len(first.output_ids) + len(second.output_ids)


def test_reply_ending_in_another_stop_token_falls_back_to_a_separate_sample(tokenizer):
    """An EOS the template does not write back (<|endoftext|> instead of <|im_end|>) cannot be
    extended token for token: the next prompt is rendered whole and starts a new sample."""
    endoftext = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    engine = ScriptedEngine(tokenizer, [ADD_CALL, FINAL], eos_token_id=endoftext)
    model = make_model(engine, tokenizer)
    reply = run(make_agent(model, AddTool()))
    assert reply.get_text_content() == FINAL
    first, second = model.turns
    assert not second.extends_previous
    assert second.prompt_ids == tokenizer.encode(second.prompt_text, add_special_tokens=False)
    assert [s.turn_indices for s in build_samples(model.turns, max_samples=4)] == [[0], [1]]


def test_model_from_rollout_config(tokenizer):
    rollout = RolloutConfig(workflow="agents.math_agent:MathAgent", max_model_len=512, max_new_tokens_per_turn=64,
                            temperature=0.7, top_p=0.9, max_turns=3)
    model = TunedModel.from_rollout_config(ScriptedEngine(tokenizer, []), tokenizer, rollout, seed=1)
    assert model.parameters.model_dump() == {
        "max_model_len": 512, "max_new_tokens_per_turn": 64, "temperature": 0.7, "top_p": 0.9, "seed": 1, "max_turns": 3,
        "max_tool_calls_per_turn": 16,
    }


# ----------------------------------------------------------------------------- reproducibility


def test_agent_with_time_injection_is_refused(tokenizer):
    model = make_model(ScriptedEngine(tokenizer, [FINAL]), tokenizer)
    agent = Agent(name="solver", system_prompt="You add numbers.", model=model, toolkit=AddTool().toolkit())
    with pytest.raises(NonReproduciblePrompt, match="agent_kwargs"):
        run(agent)


def test_same_script_gives_the_same_ids_twice(tokenizer):
    records = []
    for _ in range(2):
        model = make_model(ScriptedEngine(tokenizer, [ADD_CALL, FINAL]), tokenizer)
        run(make_agent(model, AddTool()))
        records.append([(t.prompt_ids, t.output_ids) for t in model.turns])
    assert records[0] == records[1]


# ----------------------------------------------------------------------------- templates


QWEN_LIKE_TEMPLATE = """{%- if tools %}{{- '<|im_start|>system\\n' + messages[0]['content'] }}
{{- '\\n\\n# Tools\\n<tools>' }}{%- for tool in tools %}{{- '\\n' }}{{- tool | tojson }}{%- endfor %}
{{- '\\n</tools><|im_end|>\\n' }}{%- else %}{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}{%- endif %}
{%- for message in messages[1:] %}
{%- if message.role == 'tool' %}
{%- if loop.first or messages[loop.index0].role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}
{{- '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' }}
{%- if loop.last or messages[loop.index0 + 2].role != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}
{%- else %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"""


def test_template_with_native_tools_gets_tools_and_tool_turns(tokenizer):
    """A Qwen2.5-style template renders the tools itself and wraps `tool` turns."""
    qwen_like = copy.deepcopy(tokenizer)
    qwen_like.chat_template = QWEN_LIKE_TEMPLATE
    engine, tool = ScriptedEngine(qwen_like, [ADD_CALL, FINAL]), AddTool()
    model = make_model(engine, qwen_like)
    run(make_agent(model, tool))

    assert model.template.native_tools and model.formatter.tool_role
    first, second = model.turns
    assert "# Tools\n<tools>\n" in first.prompt_text and "<tool_call></tool_call> XML tags" not in first.prompt_text
    assert {"role": "tool", "content": "5"} in second.messages
    assert second.extends_previous and len(build_samples(model.turns, max_samples=2)) == 1


def test_formatter_renders_hand_written_history_generically():
    """Blocks the policy did not generate are rendered from their content; results in call order."""
    calls = [ToolCallBlock(id=f"c{i}", name="add", input=f'{{"a": {i}, "b": 1}}') for i in (1, 2)]
    results = [ToolResultBlock(id=f"c{i}", name="add", output=str(i + 1), state="success") for i in (2, 1)]
    hint = HintBlock(hint="<system-reminder>Answer now.</system-reminder>")
    messages = [
        Msg(name="system", role="system", content=[TextBlock(text="Be brief.")]),
        UserMsg("user", "Add."),
        Msg(name="solver", role="assistant", content=[TextBlock(text="Adding."), *calls, *results, hint]),
    ]
    chat = asyncio.run(PolicyFormatter().format(messages))
    assert chat == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Add."},
        {
            "role": "assistant",
            "content": 'Adding.\n<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 1}}\n</tool_call>\n'
            '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 1}}\n</tool_call>',
        },
        {"role": "user", "content": "<tool_response>\n2\n</tool_response>\n<tool_response>\n3\n</tool_response>"},
        {"role": "user", "content": "<system-reminder>Answer now.</system-reminder>"},
    ]


# ----------------------------------------------------------------------------- a real model


def test_tiny_model_generation_is_recorded_exactly(tokenizer):
    folder = resolve_model(TINY_RANDOM_LLAMA)
    policy = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    engine = SequentialEngine(policy, eos_token_ids={tokenizer.eos_token_id})
    model = make_model(engine, tokenizer, max_new_tokens_per_turn=12)
    reply = run(make_agent(model, AddTool(), max_iters=1))

    (generation,) = engine.generations
    (turn,) = model.turns
    assert turn.output_ids == generation.token_ids and turn.output_logprobs == generation.logprobs
    assert turn.finish_reason == generation.finish_reason
    assert len(turn.output_ids) <= 12 and all(lp <= 0.0 for lp in turn.output_logprobs)
    assert turn.prompt_ids == tokenizer.encode(turn.prompt_text, add_special_tokens=False)
    assert turn.response_text.strip() == reply.get_text_content()
    (sample,) = build_samples(model.turns, max_samples=1)
    assert sample.token_ids == turn.prompt_ids + generation.token_ids
    assert sample.logprobs[len(turn.prompt_ids) :] == generation.logprobs


# ----------------------------------------------------------------------------- workflow API


class EchoWorkflow(Workflow):
    async def run(self, task: Task, model: TunedModel) -> WorkflowOutput:
        agent = Agent(name="echo", system_prompt=self.options["prompt"], **model.agent_kwargs())
        reply = await agent.reply(UserMsg("user", task.question))
        model.update_judge_input_dictionary(final_answer=reply.get_text_content())
        return WorkflowOutput(final_answer=reply.get_text_content(), metadata={"turns": len(model.turns)})


def test_workflow_runs_an_episode(tokenizer):
    model = make_model(ScriptedEngine(tokenizer, ["42"]), tokenizer)
    task = Task(task_id="t1", question="6 * 7?", reference_answer="42", row={"question": "6 * 7?"})
    output = asyncio.run(EchoWorkflow(prompt="Answer with a number.").run(task, model))
    assert output == WorkflowOutput(final_answer="42", reward=None, metadata={"turns": 1})
    assert model.judge_input_dictionary == {"final_answer": "42"}


def test_importing_reinflow_stays_light():
    code = "import sys, reinflow, reinflow.config; print(sorted({'agentscope', 'torch'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
