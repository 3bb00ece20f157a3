"""Warm-start demonstrations for the math agent, written by a scripted solver run through the real agent.

``python -m agents.math_demonstrations OUT.jsonl --count 256`` runs :class:`~agents.math_agent.MathAgent`
on arithmetic tasks with :class:`ScriptedSolver` in place of the LLM. The solver does what the
policy should learn: it calls ``execute_python_code`` with ``print(<the expression>)``, reads the
sandbox's result when it comes back, and gives that result as the final answer through the
structured-output call (``GenerateStructuredOutput``). The tool really runs, in the sandbox, so
each tool message is what the policy will see in rollout; the system prompt, the tool schemas and
the messages are exactly those the agent hands its model. Each conversation is written as one
JSONL row in the OpenAI chat format (``messages`` and ``tools``), the warm start's input
(``warmup.demonstrations``).

The tasks are other than those trained and held out (by default sums and differences of small
numbers, where the agent job's tasks are multiplications), so the demonstrations teach the *form*
of an episode (call, wait for the result, answer through the structured call) and GRPO has to
learn the rest.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agentscope.agent import InjectionConfig
from agentscope.credential import CredentialBase
from agentscope.message import HintBlock, Msg, TextBlock, ToolCallBlock, ToolResultBlock
from agentscope.model import ChatModelBase, ChatResponse
from pydantic import BaseModel
from tqdm import tqdm

from agents.math_agent import MathAgent
from reinflow import Task
from reinflow.rollout.chat_format import PolicyFormatter

FINAL_TOOL = "GenerateStructuredOutput"
"""The tool name AgentScope gives the structured-output call."""
PYTHON_TOOL = "execute_python_code"
EXPRESSION = re.compile(r"-?\d+(?:\s*[-+*/]\s*-?\d+)+")
"""An arithmetic expression in a question: the first run of integers joined by + - * /."""


class UnsolvableTask(ValueError):
    """The question holds no arithmetic expression the scripted solver can hand to Python."""


class ScriptedCredential(CredentialBase):
    """The (empty) credential of the scripted solver."""

    @classmethod
    def get_chat_model_class(cls) -> type[ChatModelBase]:
        """The model class that uses this credential."""
        return ScriptedSolver


class ScriptedSolver(ChatModelBase):
    """An AgentScope chat model that solves one arithmetic task by script, and keeps what it was sent."""

    class Parameters(BaseModel):
        """None: the script decides."""

    def __init__(self, question: str) -> None:
        super().__init__(credential=ScriptedCredential(name="script"), model="scripted-solver",
                         parameters=self.Parameters(), stream=False, max_retries=0)
        match = EXPRESSION.search(question)
        if match is None:
            raise UnsolvableTask(f"no arithmetic expression in {question!r}")
        self.expression = " ".join(match.group(0).split())
        self.formatter = PolicyFormatter()
        """Text only, as the tuned model's (the agent asks it which media it takes)."""
        self.calls: list[tuple[list[Msg], list[dict[str, Any]], list[TextBlock | ToolCallBlock]]] = []
        """Every call: the messages and tools the agent sent, and the blocks the solver replied."""
        self.judge_input_dictionary: dict[str, Any] = {}

    def agent_kwargs(self) -> dict[str, Any]:
        """What :class:`~reinflow.rollout.tuned_model.TunedModel` gives the agent: this model."""
        return {"model": self, "injection_config": InjectionConfig(inject_runtime_state=False)}

    def update_judge_input_dictionary(self, **values: Any) -> None:
        """As the tuned model: the workflow hands the final answer to the judge here."""
        self.judge_input_dictionary.update(values)

    async def _call_api(self, model_name: str, messages: list[Msg], tools: list[dict] | None = None,
                        tool_choice: Any = None, **kwargs: Any) -> ChatResponse:
        """Call the Python tool first; once its result is in, answer with it through the final call."""
        result = last_tool_result(messages)
        if result is None:
            call = ToolCallBlock(id=f"call_{len(self.calls)}_0", name=PYTHON_TOOL,
                                 input=json.dumps({"code": f"print({self.expression})"}))
        else:
            call = ToolCallBlock(id=f"call_{len(self.calls)}_0", name=FINAL_TOOL,
                                 input=json.dumps({"answer": result.strip()}))
        self.calls.append(([msg.model_copy(deep=True) for msg in messages], list(tools or []), [call]))
        return ChatResponse(content=[call], is_last=True)


def last_tool_result(messages: Sequence[Msg]) -> str | None:
    """The text of the last tool result in the conversation, or None before any came back."""
    for msg in reversed(messages):
        for block in reversed(msg.content if isinstance(msg.content, list) else []):
            if isinstance(block, ToolResultBlock):
                return block_text(block.output)
    return None


def block_text(output: Any) -> str:
    """A tool result's output as text (a string, or text blocks)."""
    if isinstance(output, str):
        return output
    return "".join(getattr(block, "text", "") for block in output)


def to_openai(solver: ScriptedSolver) -> dict[str, Any]:
    """The whole episode (the last call's messages, then its reply) as one OpenAI-format conversation."""
    messages, tools, reply = solver.calls[-1]
    chat: list[dict[str, Any]] = []
    for msg in [*messages, Msg(name="assistant", role="assistant", content=reply)]:
        chat.extend(openai_messages(msg))
    return {"messages": chat, "tools": tools}


def openai_messages(msg: Msg) -> list[dict[str, Any]]:
    """One AgentScope message as OpenAI chat messages: an assistant turn per run of the model's
    blocks, a ``tool`` message per result, a ``user`` message per agent hint (as the rollout renders it)."""
    if isinstance(msg.content, str):
        return [{"role": msg.role, "content": msg.content}]
    if msg.role != "assistant":
        return [{"role": msg.role, "content": "".join(getattr(block, "text", "") for block in msg.content)}]
    out: list[dict[str, Any]] = []
    for block in msg.content:
        if isinstance(block, ToolResultBlock):
            out.append({"role": "tool", "tool_call_id": block.id, "content": block_text(block.output)})
            continue
        if isinstance(block, HintBlock):
            out.append({"role": "user", "content": block_text(block.hint)})
            continue
        if not out or out[-1]["role"] != "assistant":
            out.append({"role": "assistant", "content": None, "tool_calls": []})
        if isinstance(block, TextBlock):
            out[-1]["content"] = (out[-1]["content"] or "") + block.text
        elif isinstance(block, ToolCallBlock):
            out[-1]["tool_calls"].append({"id": block.id, "type": "function",
                                          "function": {"name": block.name, "arguments": block.input}})
    return [{key: value for key, value in message.items() if value not in (None, [])} for message in out]


async def demonstration(task: Task, agent: MathAgent) -> dict[str, Any]:
    """Run the real agent on ``task`` with the scripted solver; its conversation, checked against the answer."""
    solver = ScriptedSolver(task.question)
    output = await agent.run(task, solver)
    if str(output.final_answer).strip() != str(task.reference_answer).strip():
        raise UnsolvableTask(f"{task.question!r}: the script answered {output.final_answer!r}, not {task.reference_answer!r}")
    return to_openai(solver)


def arithmetic_tasks(count: int, seed: int, operators: Sequence[str], max_digits: int) -> list[Task]:
    """``count`` two-term reasoning-gym ``basic_arithmetic`` tasks (offline)."""
    import reasoning_gym

    rows = reasoning_gym.create_dataset(
        "basic_arithmetic", size=count, seed=seed, min_terms=2, max_terms=2, min_digits=1, max_digits=max_digits,
        operators=list(operators), allow_parentheses=False, allow_negation=False)
    return [Task(f"demo-{index}", row["question"], str(row["answer"])) for index, row in enumerate(rows)]


async def write_demonstrations(tasks: Sequence[Task], output: Path) -> int:
    """Write one conversation per task to ``output`` (JSONL); returns how many were written."""
    agent = MathAgent()
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    with partial.open("w") as sink:
        for task in tqdm(tasks, desc="demonstrations", unit="task"):
            sink.write(json.dumps(await demonstration(task, agent)) + "\n")
    partial.replace(output)
    return len(tasks)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", type=Path, help="the JSONL file to write")
    parser.add_argument("--count", type=int, default=256, help="conversations to write")
    parser.add_argument("--seed", type=int, default=7, help="reasoning-gym seed of the tasks")
    parser.add_argument("--operators", default="+-", help="operators of the tasks, e.g. '+-'")
    parser.add_argument("--max-digits", type=int, default=2, help="most digits of each number")
    args = parser.parse_args(argv)
    tasks = arithmetic_tasks(args.count, args.seed, list(args.operators), args.max_digits)
    written = asyncio.run(write_demonstrations(tasks, args.output))
    print(f"wrote {written} demonstrations to {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
