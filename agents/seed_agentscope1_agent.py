"""The seed tutorial's AgentScope 1.x math agent, trained by reinflow with one line changed: the model.

The seed (AgentScope's tuning tutorial, AgentJet's math example) builds a 1.x ``ReActAgent`` with
``execute_python_code`` in its toolkit, ``InMemoryMemory()`` and ``reply(msg,
structured_model=FinalResult)``, and hands the answer to the judge. Here the same agent runs as a
``rollout.workflow_command`` (docs/ENDPOINT.md) in its own venv, ``.venv-agentscope1/`` (AgentScope
1.x cannot share reinflow's venv, which holds AgentScope 2.x; ``make agentscope1-env`` builds it from
``constraints-agentscope1.txt``)::

    rollout:
      workflow: null
      workflow_command: [".venv-agentscope1/bin/python", "agents/seed_agentscope1_agent.py"]
      workflow_options: {max_iters: 4, tool_timeout_seconds: 10}

The one changed line is the model: an ``OpenAIChatModel`` on ``$OPENAI_BASE_URL`` with
``$OPENAI_API_KEY`` (the episode's own base URL on reinflow's endpoint and the run's token) instead
of the tuner's model. Everything else is the seed's 1.x code. reinflow starts this script once per
episode with the task as JSON on stdin; its last stdout line is the result,
``{"final_answer": ..., "metadata": {...}}``, and ``final_answer`` is what the judge receives as
``final_answer`` (the seed's ``update_judge_input_dictionary(final_answer=...)``).

Options (``rollout.workflow_options``): ``max_iters`` (the seed's 4) and ``tool_timeout_seconds``
(10; the 1.x tool's own default is 300 s, longer than a sensible episode).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

from agentscope.agent import ReActAgent
from agentscope.formatter import OpenAIChatFormatter
from agentscope.memory import InMemoryMemory
from agentscope.message import Msg
from agentscope.model import OpenAIChatModel
from agentscope.tool import Toolkit, execute_python_code
from openai import BadRequestError
from pydantic import BaseModel, Field

SYSTEM_PROMPT = (
    "You are an agent specialized in solving math problems with tools. "
    "Please solve the math problem given to you. "
    "You can write and execute Python code to perform calculation or verify your answer. "
    "You should return your final answer within \\boxed{}."
)


class FinalResult(BaseModel):
    """The structured answer the seed asks for (``reply.metadata`` once the agent produced it)."""

    result: str = Field(description="Your solution of the given math problem. Put your final answer in "
                                    "boxed format, e.g., \\boxed{42}")


def build_agent(max_iters: int, tool_timeout_seconds: float) -> ReActAgent:
    """The seed's agent; only the ``model=`` line differs. ``stream=False``: AgentScope 1.0.21's stream
    parser reads ``"data" in delta.audio``, which fails on the ``audio: None`` that the OpenAI SDK 3.x
    (the lock's) gives every chunk, from any server; the endpoint serves both ways."""
    toolkit = Toolkit()
    toolkit.register_tool_function(execute_python_code, preset_kwargs={"timeout": tool_timeout_seconds})
    agent = ReActAgent(
        name="math_react_agent",
        sys_prompt=SYSTEM_PROMPT,
        model=OpenAIChatModel(model_name="policy", api_key=os.environ["OPENAI_API_KEY"], stream=False, client_kwargs={"base_url": os.environ["OPENAI_BASE_URL"], "max_retries": 0}),  # noqa: E501  the one changed line
        formatter=OpenAIChatFormatter(),
        toolkit=toolkit,
        memory=InMemoryMemory(),
        max_iters=max_iters,
    )
    agent.set_console_output_enabled(False)
    return agent


def answer_of(reply: Msg | None) -> str | None:
    """The structured ``result`` when the agent produced it, else the reply's text (as the seed does)."""
    if reply is None:
        return None
    if isinstance(reply.metadata, dict) and reply.metadata.get("result") is not None:
        return str(reply.metadata["result"])
    return reply.get_text_content()


async def last_text(agent: ReActAgent) -> Msg | None:
    """The agent's last text reply in its memory (an episode that ended on a budget error)."""
    for msg in reversed(await agent.memory.get_memory()):
        if msg.role == "assistant" and msg.get_text_content():
            return msg
    return None


async def solve(task: dict, options: dict) -> dict:
    agent = build_agent(int(options.get("max_iters", 4)), float(options.get("tool_timeout_seconds", 10)))
    metadata = {"endpoint_episode_id": task.get("episode_id"), "ended_by": "reply", "structured": False}
    try:
        reply = await agent.reply(Msg("user", task["question"], role="user"), structured_model=FinalResult)
    except BadRequestError as error:  # the endpoint's turn, token or context budget of the episode is spent
        metadata["ended_by"] = f"budget: {error.code}"
        reply = await last_text(agent)
    else:
        metadata["structured"] = isinstance(reply.metadata, dict) and "result" in reply.metadata
    memory = await agent.memory.get_memory()
    metadata["tool_calls"] = sum(len(msg.get_content_blocks("tool_use")) for msg in memory if msg.role == "assistant")
    return {"final_answer": answer_of(reply), "metadata": metadata}


def main() -> None:
    task = json.load(sys.stdin)
    result = asyncio.run(solve(task, task.get("options") or {}))
    sys.stdout.flush()
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
