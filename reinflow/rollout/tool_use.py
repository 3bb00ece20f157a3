"""How an agent used its tools: per episode (columns of the rollout row) and per batch of episodes.

Per episode:

- ``num_tool_calls``: well-formed calls of the workflow's tools. The call of AgentScope's
  structured-output tool (:data:`STRUCTURED_OUTPUT_TOOL`), which hands in the final answer, is not
  a tool use and is not counted.
- ``format_errors``: malformed tool calls (``reinflow.rollout.tool_calls``), counted by the tuned model.
- ``answered_before_tool_result``: the agent gave its final answer in a turn that also made another
  tool call (well-formed or malformed), so it answered without reading that call's result (the
  "too impatient" agent). The answering turn is the one that calls the structured-output tool;
  where no turn does (a workflow without structured output), the last turn, if the workflow
  registered a final answer.
- ``num_turns``: LLM calls.

Per batch (:func:`tool_use_metrics`), over all episodes of a rollout: ``tool_call_share`` (episodes
with at least one tool call), ``tool_calls_per_episode``, ``malformed_tool_calls_per_episode``,
``answered_before_tool_result_share`` and ``turns_per_episode``.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

STRUCTURED_OUTPUT_TOOL = "GenerateStructuredOutput"
"""The tool AgentScope 2.x offers when ``reply(..., structured_schema=...)`` asks for a structured
final answer; calling it ends the reply."""


class TurnCalls(Protocol):
    """The calls one LLM call made (``reinflow.rollout.tuned_model.Turn`` is one)."""

    @property
    def tool_calls(self) -> Sequence[Mapping[str, Any]]: ...

    @property
    def format_errors(self) -> Sequence[str]: ...


@dataclass(frozen=True)
class ToolUse:
    """The tool use of one episode (see the module docstring)."""

    tool_calls: int
    malformed_calls: int
    answered_before_tool_result: bool
    turns: int


def episode_tool_use(turns: Sequence[TurnCalls], has_final_answer: bool) -> ToolUse:
    """The tool use of an episode's turns; ``has_final_answer``: the workflow registered an answer."""
    answering = [i for i, turn in enumerate(turns) if any(_answers(call) for call in turn.tool_calls)]
    if not answering and has_final_answer and turns:
        answering = [len(turns) - 1]
    impatient = any(_other_calls(turns[i]) > 0 for i in answering)
    return ToolUse(
        tool_calls=sum(1 for turn in turns for call in turn.tool_calls if not _answers(call)),
        malformed_calls=sum(len(turn.format_errors) for turn in turns),
        answered_before_tool_result=impatient,
        turns=len(turns),
    )


def _answers(call: Mapping[str, Any]) -> bool:
    return call.get("name") == STRUCTURED_OUTPUT_TOOL


def _other_calls(turn: TurnCalls) -> int:
    """Calls of the turn besides the answer: well-formed tool calls and malformed attempts."""
    return sum(1 for call in turn.tool_calls if not _answers(call)) + len(turn.format_errors)


def tool_use_metrics(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Shares and means over episode rows with ``num_tool_calls``, ``format_errors``,
    ``answered_before_tool_result`` and ``num_turns`` (null counts as 0 / false); 0 for no rows.

    >>> rows = [{"num_tool_calls": 2, "format_errors": 1, "answered_before_tool_result": True, "num_turns": 3},
    ...         {"num_tool_calls": 0, "format_errors": 0, "answered_before_tool_result": False, "num_turns": 1}]
    >>> tool_use_metrics(rows)["tool_call_share"], tool_use_metrics(rows)["malformed_tool_calls_per_episode"]
    (0.5, 0.5)
    """

    def mean(values: list[float]) -> float:
        return statistics.fmean(values) if values else 0.0

    calls = [float(row["num_tool_calls"] or 0) for row in rows]
    return {
        "tool_call_share": mean([float(value > 0) for value in calls]),
        "tool_calls_per_episode": mean(calls),
        "malformed_tool_calls_per_episode": mean([float(row["format_errors"] or 0) for row in rows]),
        "answered_before_tool_result_share": mean([float(bool(row["answered_before_tool_result"])) for row in rows]),
        "turns_per_episode": mean([float(row["num_turns"] or 0) for row in rows]),
    }
