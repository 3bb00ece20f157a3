"""The math answer + LLM-as-judge, against a real OpenAI-compatible HTTP server on 127.0.0.1.

The server (``helpers.fake_judge_server``) answers with whatever the test scripts: a verdict,
garbage, a slow reply, an HTTP error. It records every request (Authorization header and body), so
the tests can count LLM calls and check which key arrived. The prompt and the parsing of the reply
alone are ``tests/test_llm_verdict.py``'s.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
import time
import traceback
import types
from collections.abc import Iterator
from typing import Any

import pytest
from helpers.fake_judge_server import (
    Behaviour,
    FakeJudgeServer,
    fails,
    fake_judge_server,
    no_choices,
    says,
    slow,
)

from judges.llm_judge import MathAnswerAndLlmAsJudge, parse_judge_options
from judges.llm_verdict import JudgeLlmError, UnparseableJudgeReply
from reinflow.config.errors import ConfigError
from reinflow.judging.judge import judge_all, judge_one
from reinflow.rollout.workflow import Task

KEY_ENV = "REINFLOW_TEST_JUDGE_KEY"
SECRET = "sk-test-7f3a9c1e-do-not-leak-0b5d"


# ----------------------------------------------------------------------------- the fake judge server


@pytest.fixture(scope="module")
def running_server() -> Iterator[FakeJudgeServer]:
    """One uvicorn server for the module, on a free port of 127.0.0.1."""
    with fake_judge_server() as fake:
        yield fake


@pytest.fixture
def judge_server(running_server: FakeJudgeServer, monkeypatch: pytest.MonkeyPatch) -> FakeJudgeServer:
    """The server, its request log cleared; the test key planted in the environment."""
    running_server.requests.clear()
    running_server.behaviour = says("VERDICT: CORRECT")
    monkeypatch.setenv(KEY_ENV, SECRET)
    return running_server


def make_judge(server: FakeJudgeServer, **options: Any) -> MathAnswerAndLlmAsJudge:
    """A judge pointed at the fake server (no retries unless asked)."""
    defaults = {
        "backend": "openai",
        "base_url": server.url,
        "model": "judge-model",
        "api_key_env": KEY_ENV,
        "timeout_seconds": 5.0,
        "max_retries": 0,
    }
    return MathAnswerAndLlmAsJudge(**(defaults | options))


def episode(final_answer: str | None, reference: str = "She earns 9 * 2 = 18.\n#### 18", work: str = "") -> dict:
    """A judge input dictionary for the question 'How much does she earn?'."""
    task = Task(task_id="t1", question="How many dollars does she earn?", reference_answer=reference)
    steps = [{"response_text": work or f"The answer is {final_answer}."}]
    return {"env": None, "workflow_task": task, "grouped_steps": steps, "final_answer": final_answer}


def reward_of(judge: MathAnswerAndLlmAsJudge, judge_input: dict) -> tuple[float, bool]:
    """``compute_reward`` run to completion."""
    return asyncio.run(judge.compute_reward(judge_input))


UNSURE = "eighteen"  # math_verify reads it as a symbol: unsure against 18


# ----------------------------------------------------------------------------- asking for a verdict


def test_unsure_answer_and_llm_says_correct_gives_reward_1(judge_server: FakeJudgeServer) -> None:
    judge_server.behaviour = says("The candidate wrote eighteen, which is 18.\n**VERDICT:** CORRECT")
    assert reward_of(make_judge(judge_server), episode(UNSURE)) == (1.0, True)
    (request,) = judge_server.requests
    assert request.body["model"] == "judge-model" and request.body["temperature"] == 0.0
    assert "How many dollars does she earn?" in request.prompt
    assert "Reference answer: 18" in request.prompt and "eighteen" in request.prompt
    assert "VERDICT:" in request.prompt and "SCORE:" not in request.prompt
    assert "<candidate_work>" not in request.prompt  # no transcript when only the verdict is asked


def test_unsure_answer_and_llm_says_incorrect_gives_reward_0(judge_server: FakeJudgeServer) -> None:
    judge_server.behaviour = says("eighteen is not what was asked.\nVERDICT: INCORRECT")
    assert reward_of(make_judge(judge_server), episode(UNSURE)) == (0.0, False)


def test_unsure_answer_without_ask_when_unsure_keeps_the_checkers_result(judge_server: FakeJudgeServer) -> None:
    judge_server.behaviour = says("SCORE: 0.5\nVERDICT: CORRECT")  # a verdict nobody asked for is ignored
    judge = make_judge(judge_server, ask_when_unsure=False, process_weight=0.5)
    assert reward_of(judge, episode(UNSURE)) == (0.25, False)
    assert "VERDICT:" not in judge_server.requests[0].prompt
    assert "automatic checker" not in judge_server.requests[0].prompt  # it was unsure: nothing to tell


@pytest.mark.parametrize(("answer", "expected"), [("18", (1.0, True)), ("$18.00", (1.0, True)), ("81", (0.0, False)), (None, (0.0, False))])
def test_certain_answers_never_call_the_llm(judge_server: FakeJudgeServer, answer: str | None, expected: tuple) -> None:
    judge = make_judge(judge_server)
    assert reward_of(judge, episode(answer, work="no number" if answer is None else "")) == expected
    assert judge_server.requests == []


# ----------------------------------------------------------------------------- failures are judge errors


def test_garbage_reply_raises(judge_server: FakeJudgeServer) -> None:
    judge_server.behaviour = says("I think the student did a great job overall!")
    with pytest.raises(UnparseableJudgeReply, match="no 'VERDICT: CORRECT'"):
        reward_of(make_judge(judge_server), episode(UNSURE))


@pytest.mark.parametrize("content", [None, ""])
def test_empty_reply_raises(judge_server: FakeJudgeServer, content: str | None) -> None:
    judge_server.behaviour = says(content)
    with pytest.raises(JudgeLlmError, match="empty reply"):
        reward_of(make_judge(judge_server), episode(UNSURE))


@pytest.mark.parametrize("behaviour", [fails(200, "not json at all"), no_choices], ids=["plain-text", "no-choices"])
def test_malformed_responses_raise(judge_server: FakeJudgeServer, behaviour: Behaviour) -> None:
    judge_server.behaviour = behaviour
    with pytest.raises(JudgeLlmError, match="sent no choices"):
        reward_of(make_judge(judge_server), episode(UNSURE))


def test_garbage_reply_becomes_a_judge_error_in_the_runner(judge_server: FakeJudgeServer) -> None:
    judge_server.behaviour = says("VERDICT: maybe?")
    verdict = asyncio.run(judge_one(make_judge(judge_server), episode(UNSURE), timeout_seconds=10))
    assert verdict.raw_reward is None and verdict.is_success is None
    assert verdict.judge_error is not None and verdict.judge_error.startswith("UnparseableJudgeReply:")


def test_slow_reply_times_out_within_the_timeout(judge_server: FakeJudgeServer) -> None:
    judge_server.behaviour = slow(3.0, "VERDICT: CORRECT")
    judge = make_judge(judge_server, timeout_seconds=0.5)
    started = time.monotonic()
    with pytest.raises(JudgeLlmError, match=r"did not answer within 0.5s"):
        reward_of(judge, episode(UNSURE))
    assert time.monotonic() - started < 2.0


def test_http_500_raises_after_the_retries(judge_server: FakeJudgeServer) -> None:
    judge_server.behaviour = fails(500, "upstream model crashed")
    with pytest.raises(JudgeLlmError, match="HTTP 500: 'upstream model crashed'"):
        reward_of(make_judge(judge_server, max_retries=1), episode(UNSURE))
    assert len(judge_server.requests) == 2


def test_unreachable_server_raises(judge_server: FakeJudgeServer) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    judge = make_judge(judge_server, base_url=f"http://127.0.0.1:{port}/v1")
    with pytest.raises(JudgeLlmError, match="cannot reach the judge LLM"):
        reward_of(judge, episode(UNSURE))


# ----------------------------------------------------------------------------- process quality


def test_process_score_is_blended_with_correctness(judge_server: FakeJudgeServer) -> None:
    judge_server.behaviour = says("Clear steps, one unjustified jump.\nSCORE: 0.6")
    judge = make_judge(judge_server, process_weight=0.25)
    reward, success = reward_of(judge, episode("18", work="9 * 2 = 18, so #### 18"))
    assert reward == pytest.approx(0.75 * 1.0 + 0.25 * 0.6) and success is True
    reward, success = reward_of(judge, episode("81", work="9 * 9 = 81, so #### 81"))
    assert reward == pytest.approx(0.25 * 0.6) and success is False
    first, second = judge_server.requests
    assert "SCORE:" in first.prompt and "VERDICT:" not in first.prompt
    assert "9 * 2 = 18, so #### 18" in first.prompt
    assert "found the final answer CORRECT" in first.prompt and "found the final answer INCORRECT" in second.prompt


def test_unsure_answer_with_process_asks_both_in_one_request(judge_server: FakeJudgeServer) -> None:
    judge_server.behaviour = says("```json\n{\"score\": 0.4, \"verdict\": \"correct\"}\n```")
    reward, success = reward_of(make_judge(judge_server, process_weight=0.5), episode(UNSURE))
    assert reward == pytest.approx(0.5 + 0.5 * 0.4) and success is True
    (request,) = judge_server.requests
    assert "SCORE:" in request.prompt and "VERDICT:" in request.prompt


def test_missing_or_out_of_range_score_raises(judge_server: FakeJudgeServer) -> None:
    judge = make_judge(judge_server, process_weight=0.5)
    judge_server.behaviour = says("VERDICT: CORRECT")
    with pytest.raises(UnparseableJudgeReply, match="no 'SCORE"):
        reward_of(judge, episode("18"))
    judge_server.behaviour = says("SCORE: 7")
    with pytest.raises(UnparseableJudgeReply, match="outside 0..1"):
        reward_of(judge, episode("18"))


def test_long_transcripts_are_cut_in_the_middle(judge_server: FakeJudgeServer) -> None:
    judge_server.behaviour = says("SCORE: 1")
    work = "START " + "x" * 50_000 + " END"
    reward_of(make_judge(judge_server, process_weight=0.1, max_transcript_chars=1000), episode("18", work=work))
    prompt = judge_server.requests[0].prompt
    assert "START" in prompt and "END" in prompt and "characters omitted" in prompt
    assert len(prompt) < 3000


# ----------------------------------------------------------------------------- the API key


def test_the_api_key_reaches_the_server_and_nowhere_else(
    judge_server: FakeJudgeServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for name in ("openai", "httpx", "httpcore", "judges"):
        caplog.set_level(logging.DEBUG, logger=name)
    judge = make_judge(judge_server, process_weight=0.5)
    errors: list[BaseException] = []
    for behaviour in (
        says("SCORE: 0.5\nVERDICT: CORRECT"),
        says("garbage"),
        fails(401, f"Incorrect API key provided: {SECRET}"),  # servers do quote keys back
        fails(500),
    ):
        judge_server.behaviour = behaviour
        try:
            reward_of(judge, episode(UNSURE))
        except JudgeLlmError as error:
            errors.append(error)
    assert len(errors) == 3
    assert {request.authorization for request in judge_server.requests} == {f"Bearer {SECRET}"}
    assert SECRET not in repr(judge) and SECRET not in str(judge.options)
    for error in errors:
        assert SECRET not in "".join(traceback.format_exception(error))
    assert "<redacted>" in str(errors[1])
    assert caplog.records and SECRET not in caplog.text


def test_a_missing_key_variable_is_named_not_valued(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REINFLOW_TEST_NO_SUCH_KEY", raising=False)
    with pytest.raises(ConfigError, match="REINFLOW_TEST_NO_SUCH_KEY is not set"):
        MathAnswerAndLlmAsJudge(backend="openai", base_url="http://127.0.0.1:9/v1", model="m",
                                api_key_env="REINFLOW_TEST_NO_SUCH_KEY")


# ----------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"backend": "openai", "base_url": "http://h/v1", "model": "m", "modle": "x"}, "modle: unknown key (did you mean 'model'?)"),
        ({"backend": "openai", "base_url": "http://h/v1", "model": "m", "timeout_secs": 3}, "did you mean 'timeout_seconds'"),
        ({"backend": "openai", "base_url": "http://h/v1", "model": "m", "model_path": "x"}, "model_path: unknown key"),
        ({"backend": "openai", "model": "m"}, "base_url: required key is missing"),
        ({"backend": "openai", "base_url": "h", "model": "m"}, "base_url: String should match"),
        ({"backend": "local", "process_weight": 1.5}, "process_weight: Input should be less than or equal to 1"),
        ({"backend": "local", "temperature": -1}, "temperature: Input should be greater than or equal to 0"),
        ({"backend": "local", "ask_when_unsure": False}, "the LLM is never asked"),
        ({"backend": "vllm"}, "backend: must be 'openai' or 'local' (got 'vllm')"),
        ({}, "backend: must be 'openai' or 'local' (got None)"),
    ],
)
def test_bad_options_are_named(options: dict, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_judge_options(options)
    assert message in str(raised.value)


def test_a_key_pasted_into_the_options_is_never_echoed() -> None:
    base = {"backend": "openai", "base_url": "http://h/v1", "model": "m"}
    with pytest.raises(ConfigError, match="name that variable with api_key_env") as raised:
        parse_judge_options(base | {"api_key": SECRET})
    assert SECRET not in str(raised.value)
    with pytest.raises(ConfigError, match="api_key_env: String should match") as raised:
        parse_judge_options(base | {"api_key_env": SECRET})
    assert SECRET not in str(raised.value)


def test_option_defaults_are_documented() -> None:
    options = parse_judge_options({"backend": "local"})
    assert options.model_path == "builtin:smollm2-135m-instruct" and options.process_weight == 0.0
    for model in (type(options), type(parse_judge_options({"backend": "openai", "base_url": "http://h", "model": "m"}))):
        assert all(info.description for info in model.model_fields.values()), model


# ----------------------------------------------------------------------------- many episodes, many loops


def test_many_episodes_concurrently_and_across_event_loops(judge_server: FakeJudgeServer) -> None:
    judge = make_judge(judge_server)
    for _ in range(2):  # the judge stage runs each rollout file in its own asyncio.run
        verdicts = asyncio.run(judge_all(judge, [episode(UNSURE) for _ in range(8)], concurrency=4, timeout_seconds=10))
        assert [(v.raw_reward, v.judge_error) for v in verdicts] == [(1.0, None)] * 8
    assert len(judge_server.requests) == 16


# ----------------------------------------------------------------------------- the local backend


def test_local_backend_needs_no_server_until_used() -> None:
    judge = MathAnswerAndLlmAsJudge(backend="local")
    assert "builtin:smollm2-135m-instruct" in repr(judge)
    assert asyncio.run(judge.compute_reward(episode("18"))) == (1.0, True)  # certain: no model loaded


async def _reward_or_judge_error(judge: MathAnswerAndLlmAsJudge, judge_input: dict) -> tuple[float, bool] | JudgeLlmError:
    """The reward, or the JudgeLlmError a garbage reply raised; the engine is closed either way."""
    try:
        return await judge.compute_reward(judge_input)
    except JudgeLlmError as error:
        return error
    finally:
        await judge.close()


@pytest.mark.slow
def test_local_backend_through_the_hf_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    """The local path (chat template, engine, decode) with the hf engine behind a stand-in factory."""
    from reinflow.engines.hf import HFEngine

    factory = types.ModuleType("reinflow.engines.factory")
    factory.create_engine = lambda kind, folder, **options: HFEngine(folder, device="cpu", **options)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "reinflow.engines.factory", factory)
    judge = MathAnswerAndLlmAsJudge(backend="local", model_path="builtin:tiny-random-llama", max_new_tokens=16, max_model_len=2048)
    outcome = asyncio.run(_reward_or_judge_error(judge, episode(UNSURE)))
    assert isinstance(outcome, UnparseableJudgeReply)  # a random model writes garbage: a judge error, not 0


@pytest.mark.slow
def test_local_backend_runs_the_builtin_model() -> None:
    judge = MathAnswerAndLlmAsJudge(backend="local", max_new_tokens=96, max_model_len=2048)
    outcome = asyncio.run(_reward_or_judge_error(judge, episode(UNSURE)))
    # SmolLM2-135M mostly echoes the prompt (a judge error); a parsed verdict must be 0 or 1
    assert isinstance(outcome, JudgeLlmError) or outcome in ((0.0, False), (1.0, True))
