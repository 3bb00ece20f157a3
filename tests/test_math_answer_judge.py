r"""The math answer judge: extraction, math_verify matching, real GSM8K rows, worker threads.

The matching table holds the cases naive string matching gets wrong in both directions:
wrong answers it accepts (``7`` in ``72``) and right ones it rejects (``1,000`` vs ``1000``).
"""

from __future__ import annotations

import asyncio
import doctest
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest
from math_verify import parse

from judges import answer_extraction
from judges.answer_extraction import (
    answers_match,
    extract_final_answer,
    is_too_costly,
    reference_answer,
)
from judges.math_answer import MathAnswerJudge

GSM8K_ROWS = 30

EXTRACTION_CASES = [
    pytest.param(r"so $x = \boxed{\frac{1}{2}}$", r"\frac{1}{2}", id="nested-braces"),
    pytest.param(r"\boxed{{5}}", "5", id="double-braces"),
    pytest.param(r"first \boxed{3}, finally \boxed{7}.", "7", id="last-box-wins"),
    pytest.param(r"\fbox{42}", "42", id="fbox"),
    pytest.param(r"\boxed{\boxed{8}}", "8", id="box-in-box"),
    pytest.param(r"$\boxed{\{1, 2\}}$", r"\{1, 2\}", id="escaped-braces"),
    pytest.param(r"\boxed {12}", "12", id="space-before-brace"),
    pytest.param(r"\boxed{} so 4", "4", id="empty-box-skipped"),
    pytest.param(r"\boxed{5 and then 6", "6", id="unclosed-box-skipped"),
    pytest.param(r"\boxed{3} but #### 4", "3", id="box-beats-hashes"),
    pytest.param(r"\boxed{1,000}", "1,000", id="box-thousands"),
    pytest.param(r"\boxed{18 \text{ dollars}}", r"18 \text{ dollars}", id="box-with-units"),
    pytest.param("9 * 2 = 18\n#### 1,234", "1,234", id="hashes-thousands"),
    pytest.param("#### 18\nDone in 2 steps.", "18", id="hashes-rest-of-line"),
    pytest.param("#### 3\n#### 4", "4", id="last-hashes"),
    pytest.param("The total is 7.\n####", "7", id="empty-hashes-fall-back"),
    pytest.param("I have 3 apples and 5 pears", "5", id="last-number"),
    pytest.param("It costs $1,000.50 in total.", "1,000.50", id="thousands-decimal"),
    pytest.param("The change is -7 degrees", "-7", id="negative"),
    pytest.param("The temperature is −4", "−4", id="unicode-minus"),
    pytest.param("Compute 10-3", "3", id="binary-minus-is-not-a-sign"),
    pytest.param("About 3/4 of them", "3/4", id="fraction"),
    pytest.param("only .5 left", ".5", id="leading-dot-decimal"),
    pytest.param("1,000,000 people came", "1,000,000", id="millions"),
    pytest.param("$400 000 - $282 000 = $118 000.", "118 000", id="space-thousands"),
    pytest.param("no number here", None, id="no-number"),
    pytest.param("", None, id="empty"),
]

MATCH_CASES = [
    # Naive string matching accepts these wrong answers (substrings, signs, digits).
    pytest.param("72", "720", False, True, id="72-vs-720"),
    pytest.param("720", "72", False, True, id="720-vs-72"),
    pytest.param("7", "72", False, True, id="substring-7-vs-72"),
    pytest.param("2", "12", False, True, id="substring-2-vs-12"),
    pytest.param("-5", "5", False, True, id="wrong-sign"),
    pytest.param("5", "-5", False, True, id="missing-sign"),
    pytest.param("5.5", "55", False, True, id="5.5-vs-55"),
    pytest.param("55", "5.5", False, True, id="55-vs-5.5"),
    pytest.param("0.5", "50", False, True, id="half-is-not-50"),
    pytest.param("0.33", r"\frac{1}{3}", False, True, id="rounded-third"),
    pytest.param("3.0000001", "3", False, True, id="nearly-3"),
    pytest.param("1,450,000", "145000", False, True, id="extra-zero"),
    # Naive string matching rejects these right answers.
    pytest.param("1,000", "1000", True, True, id="thousands-separator"),
    pytest.param("1000.0", "1000", True, True, id="trailing-zero-decimal"),
    pytest.param("$18.00", "18", True, True, id="money-cents"),
    pytest.param("$1000", "1000", True, True, id="dollar-sign"),
    pytest.param(r"\$1,000", "1000", True, True, id="escaped-dollar"),
    pytest.param("1000 dollars", "1000", True, True, id="unit-word"),
    pytest.param("1\u00a0000", "1000", True, True, id="nbsp-thousands"),
    pytest.param("118 000", "118000", True, True, id="space-thousands"),
    pytest.param(r"1{,}000", "1000", True, True, id="latex-thousands"),
    pytest.param("0.5", r"\frac{1}{2}", True, True, id="decimal-vs-frac"),
    pytest.param(r"\frac{1}{2}", "0.5", True, True, id="frac-vs-decimal"),
    pytest.param("1/2", "0.5", True, True, id="slash-fraction"),
    pytest.param(r"\dfrac{3}{4}", "0.75", True, True, id="dfrac"),
    pytest.param("0.333333", r"\frac{1}{3}", True, True, id="six-digit-third"),
    pytest.param("−3", "-3", True, True, id="unicode-minus-predicted"),
    pytest.param("-3", "−3", True, True, id="unicode-minus-reference"),
    pytest.param("10%", "10", True, True, id="percent-vs-gsm8k-percentage"),
    pytest.param("50%", "0.5", True, True, id="percent-vs-fraction"),
    pytest.param("18.", "18", True, True, id="full-stop"),
    pytest.param("The answer is 18.", "18", True, True, id="sentence"),
    pytest.param(r"\boxed{18}", "18", True, True, id="boxed-registered"),
    pytest.param("1e3", "1000", True, True, id="scientific"),
    pytest.param(r"2^{10}", "1024", True, True, id="power"),
    pytest.param(r"\sqrt{4}", "2", True, True, id="sqrt"),
    pytest.param("x = 5", "5", True, True, id="assignment"),
    pytest.param("-10", "-10", True, True, id="same-negative"),
    pytest.param("yes", "yes", True, True, id="same-text"),
    # math_verify cannot read one side: wrong for now, but not certain.
    pytest.param("five", "5", False, False, id="number-word"),
    pytest.param(r"\text{eighteen}", "18", False, False, id="symbol-vs-number"),
    pytest.param(r"10^{10^{10}}", "5", False, False, id="too-costly"),
    pytest.param("1e99999999", "5", False, False, id="too-costly-scientific"),
    # No answer at all is certainly wrong.
    pytest.param(None, "18", False, True, id="none"),
    pytest.param("", "18", False, True, id="empty"),
    pytest.param("   ", "18", False, True, id="blank"),
]

REFERENCE_CASES = [
    pytest.param("Janet sells 9 eggs.\n#### 18", "18", id="gsm8k"),
    pytest.param("He made 1,000 + 450 = 1,450.\n#### 1,450", "1450", id="gsm8k-thousands"),
    pytest.param("So it is -3.\n#### -3", "-3", id="gsm8k-negative"),
    pytest.param("  \\frac{1}{2}\n", "\\frac{1}{2}", id="bare"),
]


@pytest.mark.parametrize(("text", "expected"), EXTRACTION_CASES)
def test_extract_final_answer(text: str, expected: str | None) -> None:
    assert extract_final_answer(text) == expected


@pytest.mark.parametrize(("predicted", "reference", "correct", "certain"), MATCH_CASES)
def test_answers_match(
    predicted: str | None, reference: str, correct: bool, certain: bool
) -> None:
    assert answers_match(predicted, reference) == (correct, certain)


@pytest.mark.parametrize(("gsm8k_answer", "expected"), REFERENCE_CASES)
def test_reference_answer(gsm8k_answer: str, expected: str) -> None:
    assert reference_answer(gsm8k_answer) == expected


@pytest.mark.parametrize(
    ("answer", "costly"),
    [("9**9**9", True), ("10^{10000000}", True), ("10^{-10000000}", True), ("10000000!", True), ("x" * 1001, True),
     ("2^{2^{2}}", True), ("2^{10} + 2^{3}", False), ("100!", False), ("1,000", False)],
)
def test_is_too_costly(answer: str, costly: bool) -> None:
    assert is_too_costly(answer) is costly


def test_docstring_examples() -> None:
    result = doctest.testmod(answer_extraction)
    assert result.attempted > 0 and result.failed == 0


def _episode(final_answer: object = None, *responses: str, task: object = None) -> dict:
    """A judge input dictionary; the default task is a dict with a GSM8K-style answer."""
    if task is None:
        task = {"question": "How many?", "reference_answer": "9 * 2 = 18\n#### 18"}
    return {
        "env": None,
        "workflow_task": task,
        "grouped_steps": [{"response_text": text} for text in responses],
        "final_answer": final_answer,
    }


JUDGE_CASES = [
    pytest.param(_episode("18"), (1.0, True), id="registered-right"),
    pytest.param(_episode("$18.00"), (1.0, True), id="registered-money"),
    pytest.param(_episode(18), (1.0, True), id="registered-int"),
    pytest.param(_episode("17", r"\boxed{18}"), (0.0, False), id="registered-wins"),
    pytest.param(_episode(None, "calling a tool", r"so \boxed{18}"), (1.0, True), id="last-turn"),
    pytest.param(_episode("", r"#### 18"), (1.0, True), id="blank-registered-falls-back"),
    pytest.param(_episode(None, r"\boxed{18}", "I think 17"), (0.0, False), id="only-last-turn"),
    pytest.param(_episode(None, "It is 180"), (0.0, False), id="last-turn-wrong"),
    pytest.param(_episode(None), (0.0, False), id="no-answer-no-turns"),
    pytest.param(_episode(None, "no idea"), (0.0, False), id="no-number"),
    pytest.param(
        _episode("0.5", task=SimpleNamespace(question="Half?", reference_answer=r"\frac{1}{2}")),
        (1.0, True),
        id="object-task",
    ),
]


@pytest.mark.parametrize(("episode", "expected"), JUDGE_CASES)
def test_judge_compute_reward(episode: dict, expected: tuple[float, bool]) -> None:
    assert MathAnswerJudge().compute_reward(episode) == expected


def test_judge_verdict_says_when_uncertain() -> None:
    verdict = MathAnswerJudge().judge(_episode("eighteen"))
    assert (verdict.predicted, verdict.reference) == ("eighteen", "18")
    assert (verdict.is_correct, verdict.is_certain) == (False, False)


def test_judge_rejects_unknown_options() -> None:
    with pytest.raises(TypeError, match="takes no options.*tolerance"):
        MathAnswerJudge(tolerance=0.1)


def _match_table() -> list[tuple[str | None, str]]:
    return [(case.values[0], case.values[1]) for case in MATCH_CASES]


def _match_all(pairs: list[tuple[str | None, str]]) -> list[tuple[bool, bool]]:
    return [answers_match(predicted, reference) for predicted, reference in pairs]


def test_math_verify_timeout_needs_the_main_thread() -> None:
    """Why the judge drops math_verify's timeout outside the main thread (signal.alarm)."""
    with pytest.raises(ValueError, match="threaded environment"):
        asyncio.run(asyncio.to_thread(parse, "1", parsing_timeout=5))


def test_same_answers_in_a_worker_thread() -> None:
    pairs = _match_table()
    in_main_thread = _match_all(pairs)
    in_worker_thread = asyncio.run(asyncio.to_thread(_match_all, pairs))
    assert in_worker_thread == in_main_thread


def test_same_answers_in_concurrent_threads() -> None:
    pairs = _match_table()
    expected = [answers_match(predicted, reference) for predicted, reference in pairs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda pair: answers_match(*pair), pairs * 3))
    assert results == expected * 3


def test_judge_in_asyncio_to_thread() -> None:
    judge = MathAnswerJudge()
    episodes = [case.values[0] for case in JUDGE_CASES]
    in_main_thread = [judge.compute_reward(episode) for episode in episodes]

    async def judge_all() -> list[tuple[float, bool]]:
        return list(
            await asyncio.gather(*(asyncio.to_thread(judge.compute_reward, e) for e in episodes))
        )

    assert asyncio.run(judge_all()) == in_main_thread


def _gsm8k_rows() -> list[dict]:
    location = Path(os.environ.get("REINFLOW_GSM8K_DIR", "/work/shared/data/gsm8k"))
    path = location / "test.jsonl" if location.is_dir() else location
    if not path.is_file():
        pytest.skip(f"GSM8K test split not found at {path} (set REINFLOW_GSM8K_DIR)")
    with path.open(encoding="utf-8") as lines:
        return [json.loads(next(lines)) for _ in range(GSM8K_ROWS)]


def _gsm8k_episode(row: dict, response_text: str) -> dict:
    task = {"question": row["question"], "reference_answer": row["answer"]}
    return _episode(None, response_text, task=task)


@pytest.mark.gsm8k
def test_gsm8k_own_solution_is_correct() -> None:
    judge = MathAnswerJudge()
    rows = _gsm8k_rows()
    rewards = [judge.compute_reward(_gsm8k_episode(row, row["answer"])) for row in rows]
    assert rewards == [(1.0, True)] * len(rows)


def _solution_with_another_answer(rows: list[dict], index: int) -> str:
    """The worked solution of the next row (cyclically) whose answer differs from row ``index``."""
    answer = reference_answer(rows[index]["answer"])
    others = rows[index + 1 :] + rows[:index]
    return next(row["answer"] for row in others if reference_answer(row["answer"]) != answer)


@pytest.mark.gsm8k
def test_gsm8k_other_rows_solution_is_wrong() -> None:
    judge = MathAnswerJudge()
    rows = _gsm8k_rows()
    rewards = [
        judge.compute_reward(_gsm8k_episode(row, _solution_with_another_answer(rows, index)))
        for index, row in enumerate(rows)
    ]
    assert rewards == [(0.0, False)] * len(rows)
