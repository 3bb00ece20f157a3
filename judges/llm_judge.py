"""The math answer judge, helped by an LLM judge where math_verify is unsure or for process quality.

Named in a config as ``judges.llm_judge->MathAnswerAndLlmAsJudge``::

    judge:
      protocol: judges.llm_judge->MathAnswerAndLlmAsJudge
      options:
        backend: openai                       # or: local
        base_url: http://127.0.0.1:8000/v1    # any OpenAI-compatible server
        model: qwen2.5-7b-instruct
        api_key_env: OPENAI_API_KEY           # the NAME of the variable holding the key
        process_weight: 0.2                   # 0: correctness only

For each episode, :class:`~judges.math_answer.MathAnswerJudge` runs first. The LLM is asked

* for a **verdict** when math_verify is unsure (``is_certain`` False, e.g. ``eighteen`` vs
  ``18``) and ``ask_when_unsure`` is on; the LLM's verdict then replaces the checker's;
* for a **process score** (0..1, how sound the reasoning is) when ``process_weight > 0``; the
  reward is then ``(1 - process_weight) * correctness + process_weight * score``.

Both go in one request when both are needed; a certain answer with ``process_weight == 0`` never
calls the LLM. ``is_success`` is always the correctness alone.

Failures are loud: a reply without the asked-for ``VERDICT:``/``SCORE:`` line, a timeout, an
unreachable server or an HTTP error raise :class:`JudgeLlmError`, which the judge runner
(:func:`reinflow.judging.judge.judge_one`) records as this episode's ``judge_error``: the episode is left
out of the update rather than given reward 0. The runner's own ``judge.timeout_seconds`` bounds
the whole call; the client's ``timeout_seconds`` bounds each HTTP attempt (with ``max_retries``
retries on top), so keep ``timeout_seconds * (max_retries + 1)`` below the runner's.

The API key is read from the environment variable named by ``api_key_env`` when a client is made;
it is never part of the options, the judge's repr, a log line or an error message.

The options live in :mod:`judges.llm_options`, the two LLM clients in :mod:`judges.llm_clients`,
and the prompt and reply parsing in :mod:`judges.llm_verdict`; this module is the judge itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from judges.llm_clients import JudgeLlm, LocalJudgeLlm, OpenAiJudgeLlm, make_judge_llm
from judges.llm_options import LocalJudgeOptions, OpenAiJudgeOptions, parse_judge_options
from judges.llm_verdict import (
    JudgeLlmError,
    JudgeRequest,
    LlmVerdict,
    UnparseableJudgeReply,
    blend_reward,
    build_judge_messages,
    parse_judge_reply,
    transcript_of,
)
from judges.math_answer import AnswerVerdict, MathAnswerJudge
from reinflow.judging.judge import Judge

__all__ = [
    "Assessment",
    "JudgeLlm",
    "JudgeLlmError",
    "LocalJudgeLlm",
    "LocalJudgeOptions",
    "MathAnswerAndLlmAsJudge",
    "OpenAiJudgeLlm",
    "OpenAiJudgeOptions",
    "UnparseableJudgeReply",
    "parse_judge_options",
]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Assessment:
    """Everything decided about one episode: the checker's verdict, the LLM's (if asked), the reward."""

    answer: AnswerVerdict
    llm: LlmVerdict | None
    reward: float
    is_success: bool


class MathAnswerAndLlmAsJudge(Judge):
    """math_verify first; an LLM judge for unsure answers and, optionally, process quality."""

    def __init__(self, **options: Any) -> None:
        """Options as in :class:`OpenAiJudgeOptions` / :class:`LocalJudgeOptions` (``backend`` picks)."""
        super().__init__()
        self.options = parse_judge_options(options)
        self.checker = MathAnswerJudge()
        self.llm: JudgeLlm = make_judge_llm(self.options)

    def __repr__(self) -> str:
        """The options (which hold no secret) and the LLM client."""
        return f"MathAnswerAndLlmAsJudge({self.options!r}, llm={self.llm!r})"

    async def compute_reward(self, judge_input_dictionary: dict[str, Any]) -> tuple[float, bool]:
        """``(reward, is_success)``; raises :class:`JudgeLlmError` when the LLM gives no usable answer."""
        assessment = await self.assess(judge_input_dictionary)
        return assessment.reward, assessment.is_success

    async def assess(self, judge_input_dictionary: dict[str, Any]) -> Assessment:
        """The full decision about one episode (what :meth:`compute_reward` returns, with reasons)."""
        # math_verify may take seconds; in a worker thread the event loop keeps serving other episodes.
        answer = await asyncio.to_thread(self.checker.judge, judge_input_dictionary)
        request = self._request(judge_input_dictionary, answer)
        if request is None:
            return Assessment(answer, None, 1.0 if answer.is_correct else 0.0, answer.is_correct)
        llm = await self._ask(request)
        is_correct = llm.is_correct if llm.is_correct is not None else answer.is_correct
        reward = blend_reward(is_correct, llm.score, self.options.process_weight)
        return Assessment(answer, llm, reward, is_correct)

    async def close(self) -> None:
        """Release the LLM client (connections, or the local engine)."""
        await self.llm.close()

    def _request(self, judge_input_dictionary: Mapping[str, Any], answer: AnswerVerdict) -> JudgeRequest | None:
        """What to ask the LLM about this episode, or None when nothing needs asking."""
        need_verdict = self.options.ask_when_unsure and not answer.is_certain
        need_score = self.options.process_weight > 0.0
        if not (need_verdict or need_score):
            return None
        task = judge_input_dictionary["workflow_task"]
        return JudgeRequest(
            question=str(_field(task, "question")),
            reference=answer.reference,
            predicted=answer.predicted,
            transcript=transcript_of(judge_input_dictionary.get("grouped_steps") or []),
            need_verdict=need_verdict,
            need_score=need_score,
            checked_correct=answer.is_correct if answer.is_certain else None,
        )

    async def _ask(self, request: JudgeRequest) -> LlmVerdict:
        """Send the request, parse the reply (garbage raises :class:`UnparseableJudgeReply`)."""
        _log.debug("asking %r (verdict: %s, score: %s)", self.llm, request.need_verdict, request.need_score)
        reply = await self.llm.complete(build_judge_messages(request, self.options.max_transcript_chars))
        _log.debug("judge LLM replied: %.300r", reply)
        return parse_judge_reply(reply, need_verdict=request.need_verdict, need_score=request.need_score)


def _field(record: Any, name: str) -> Any:
    """``record[name]`` for a mapping, ``record.name`` for any other object (a ``Task``)."""
    return record[name] if isinstance(record, Mapping) else getattr(record, name)
