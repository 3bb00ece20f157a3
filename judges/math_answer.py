"""The math answer judge: reward 1 when the episode's final answer equals the reference.

Named in a config as ``judges.math_answer->MathAnswerJudge``. The answer is the one the workflow
registered (``final_answer``); when it registered none, the answer is extracted from the last
LLM turn's response text (``\\boxed{...}``, ``#### ...``, else the last number). Answers are
compared by math_verify (see :mod:`judges.answer_extraction`), so ``1,000`` equals ``1000.0``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from judges.answer_extraction import answers_match, extract_final_answer, reference_answer


@dataclass(frozen=True)
class AnswerVerdict:
    """What the judge decided about one episode, and how sure math_verify was."""

    predicted: str | None
    reference: str
    is_correct: bool
    is_certain: bool


class MathAnswerJudge:
    """Scores an episode 1.0 if its final answer is mathematically the reference, else 0.0."""

    def __init__(self, **options: Any) -> None:
        """Takes no options yet; any option given is an error (most likely a config typo)."""
        if options:
            raise TypeError(
                f"MathAnswerJudge takes no options, got: {', '.join(sorted(options))}"
            )

    def compute_reward(self, judge_input_dictionary: dict[str, Any]) -> tuple[float, bool]:
        """(reward, success): ``(1.0, True)`` if the answer is right, else ``(0.0, False)``."""
        verdict = self.judge(judge_input_dictionary)
        return (1.0 if verdict.is_correct else 0.0), verdict.is_correct

    def judge(self, judge_input_dictionary: dict[str, Any]) -> AnswerVerdict:
        """The full verdict for one episode (``is_certain`` tells when an LLM judge could help)."""
        reference = reference_answer(
            str(_field(judge_input_dictionary["workflow_task"], "reference_answer"))
        )
        predicted = episode_answer(judge_input_dictionary)
        is_correct, is_certain = answers_match(predicted, reference)
        return AnswerVerdict(predicted, reference, is_correct, is_certain)


def episode_answer(judge_input_dictionary: Mapping[str, Any]) -> str | None:
    """The registered final answer, else the one extracted from the last turn's response text."""
    registered = judge_input_dictionary.get("final_answer")
    if registered is not None and str(registered).strip():
        return str(registered).strip()
    steps = judge_input_dictionary.get("grouped_steps") or []
    if not steps:
        return None
    response_text = _field(steps[-1], "response_text")
    return extract_final_answer(response_text) if response_text else None


def _field(record: Any, name: str) -> Any:
    """``record[name]`` for a mapping, ``record.name`` for any other object."""
    if isinstance(record, Mapping):
        return record[name]
    return getattr(record, name)
