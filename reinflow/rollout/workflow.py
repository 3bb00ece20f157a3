"""What a user writes to train an agent: a :class:`Workflow` that runs one episode of one task.

The rollout runner builds one workflow object per run (with the config's options, if any) and, for
every episode, a fresh :class:`~reinflow.rollout.tuned_model.TunedModel` (the policy behind the engine) and
a :class:`Task`. The workflow builds its AgentScope agent on that model, runs it on the task and
returns a :class:`WorkflowOutput`; the model keeps the exact token record of every LLM call.

Example (AgentScope 2.x)::

    class MathAgent(Workflow):
        async def run(self, task: Task, model: TunedModel) -> WorkflowOutput:
            agent = Agent(name="math", system_prompt=SYSTEM_PROMPT,
                          toolkit=Toolkit(tools=[execute_python_code_tool]),
                          react_config=ReActConfig(max_iters=4), **model.agent_kwargs())
            reply = await agent.reply(UserMsg("user", task.question), structured_schema=FinalResult)
            answer = (reply.structured_output or {}).get("answer")
            model.update_judge_input_dictionary(final_answer=answer)
            return WorkflowOutput(final_answer=answer)

This module imports neither AgentScope nor torch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from reinflow.rollout.tuned_model import TunedModel


@dataclass(frozen=True)
class Task:
    """One task of the data set, as an episode sees it."""

    task_id: str
    """Stable id of the task (the same for every episode of its GRPO group)."""
    question: str
    """The text the agent is asked to solve."""
    reference_answer: str | None
    """The reference answer, for the judge (None where the data has none)."""
    row: dict[str, Any] = field(default_factory=dict)
    """The whole source row, for workflows and judges that need more fields."""


@dataclass
class WorkflowOutput:
    """What an episode returns."""

    final_answer: str | None = None
    """The agent's final answer (None: it gave none, e.g. it ran out of turns)."""
    reward: float | None = None
    """A reward the workflow computed itself; None leaves the reward to the judge."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """Anything JSON-serialisable worth keeping with the rollout (shown in the log view)."""


class Workflow(ABC):
    """Base class of agent workflows: subclass it and implement :meth:`run`.

    One object serves many episodes, possibly concurrently, so keep per-episode state inside
    :meth:`run` (the agent, its memory), not on ``self``.
    """

    def __init__(self, **options: Any) -> None:
        """``options`` are the workflow's keyword arguments from the config (none by default)."""
        self.options: dict[str, Any] = dict(options)

    @abstractmethod
    async def run(self, task: Task, model: TunedModel) -> WorkflowOutput:
        """Run one episode of ``task`` with an agent built on ``model`` and return its outcome.

        Raising :class:`~reinflow.rollout.tuned_model.EpisodeEnded` (e.g. ``ContextOverflow``) from here is
        fine: the rollout runner ends the episode cleanly and keeps the turns recorded so far.
        """

    def close(self) -> None:
        """Release what the workflow holds for the whole run (called once, when the run's rollout
        runtime closes); nothing by default. The endpoint's workflows (``reinflow.endpoint``) stop
        their server here."""
