"""The embedded default's workflow: a direct-answer agent (one LLM call, no tools).

Small enough for the 135M built-in model on a CPU: the agent reads an arithmetic question and
answers; the judge reads the answer from its reply (``\\boxed{}``, else the last number).
"""

from __future__ import annotations

from agentscope.agent import Agent, ReActConfig
from agentscope.message import UserMsg

from reinflow import Task, TunedModel, Workflow, WorkflowOutput

SYSTEM_PROMPT = "You are a careful calculator. Answer with the final number only."


class QuickstartAgent(Workflow):
    """Ask once, answer once."""

    async def run(self, task: Task, model: TunedModel) -> WorkflowOutput:
        agent = Agent(
            name="quickstart_agent",
            system_prompt=SYSTEM_PROMPT,
            react_config=ReActConfig(max_iters=1),
            **model.agent_kwargs(),
        )
        reply = await agent.reply(UserMsg("user", task.question))
        return WorkflowOutput(final_answer=None, metadata={"reply": reply.get_text_content()})
