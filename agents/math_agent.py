"""The GSM8K math agent: a ReAct agent with a sandboxed ``execute_python_code`` tool.

The agent thinks, may run Python (in the sandbox: ``reinflow.sandbox``) as many times as its
ReAct budget allows, and ends with a structured ``FinalResult``; its ``answer`` is registered for
the judge. docs/MATH_AGENT.md says how to run it, what to expect from the built-in model, and
how AgentScope 1.x code (``ReActAgent``, ``InMemoryMemory``, ``register_tool_function``) maps to 2.x.
"""

from __future__ import annotations

from agentscope.agent import Agent, ReActConfig
from agentscope.message import UserMsg
from agentscope.tool import Toolkit
from pydantic import BaseModel, ConfigDict, Field

from reinflow import SandboxLimits, Task, TunedModel, Workflow, WorkflowOutput, execute_python_code_tool

SYSTEM_PROMPT = (
    "You are a math assistant. Solve the problem step by step. You can run Python with the "
    "execute_python_code tool: print the values you need. When you know the answer, give it as a "
    "single number in the final result."
)


class FinalResult(BaseModel):
    """The agent's final answer."""

    answer: str = Field(description="The final numeric answer only, e.g. 42.")


class MathAgentOptions(BaseModel):
    """The workflow's options (``rollout.workflow_options`` in the config)."""

    model_config = ConfigDict(extra="forbid")
    max_iters: int = Field(4, ge=1, le=64, description="ReAct reasoning-acting iterations per episode.")
    tool_wall_seconds: float = Field(10.0, gt=0, le=600, description="Wall-clock limit of one Python run.")


class MathAgent(Workflow):
    """ReAct + Python tool + structured final answer."""

    def __init__(self, **options: object) -> None:
        super().__init__(**options)
        self.settings = MathAgentOptions.model_validate(options)

    async def run(self, task: Task, model: TunedModel) -> WorkflowOutput:
        limits = SandboxLimits(wall_seconds=self.settings.tool_wall_seconds)
        agent = Agent(
            name="math_react_agent",
            system_prompt=SYSTEM_PROMPT,
            toolkit=Toolkit(tools=[execute_python_code_tool(limits)]),
            react_config=ReActConfig(max_iters=self.settings.max_iters),
            **model.agent_kwargs(),
        )
        reply = await agent.reply(UserMsg("user", task.question), structured_schema=FinalResult)
        answer = (reply.structured_output or {}).get("answer")
        model.update_judge_input_dictionary(final_answer=answer)
        return WorkflowOutput(final_answer=answer, metadata={"reply": reply.get_text_content()})

