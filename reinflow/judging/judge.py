"""The judge protocol and the loop that runs a judge over many episodes with errors isolated.

A judge is a class named in the config (``judge.protocol``), constructed with ``judge.options``::

    class MyJudge(Judge):
        def compute_reward(self, judge_input_dictionary):
            answer = judge_input_dictionary["final_answer"]
            task = judge_input_dictionary["workflow_task"]
            correct = answer is not None and answer.strip() == task.reference_answer
            return float(correct), correct

``judge_input_dictionary`` holds ``env`` (the workflow's ``metadata["env"]``, a JSON value, since
judging runs as its own stage over the rollout file), ``workflow_task`` (a :class:`Task`),
``grouped_steps`` (one dict per LLM call: ``response_text``, ``tool_calls``, ``finish_reason``, ...)
and ``final_answer``, plus whatever the workflow passed to ``update_judge_input_dictionary``.
``compute_reward`` may be sync or async and returns ``(raw_reward, is_success)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import math
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reinflow.config import JudgeConfig
from reinflow.config.plugins import construct_plugin


class Judge(ABC):
    """Base class of judges. Subclasses take their options as keyword arguments."""

    def __init__(self, **options: Any) -> None:
        if options:
            raise TypeError(f"{type(self).__name__} takes no options, got {sorted(options)}")

    @abstractmethod
    def compute_reward(self, judge_input_dictionary: dict[str, Any]) -> tuple[float, bool] | Awaitable[tuple[float, bool]]:
        """Return ``(raw_reward, is_success)`` for one episode."""


@dataclass(frozen=True)
class Verdict:
    """One episode's judgement. ``judge_error`` set means the episode is excluded from the update."""

    raw_reward: float | None
    is_success: bool | None
    judge_error: str | None
    judge_seconds: float


async def judge_one(judge: Any, judge_input: dict[str, Any], timeout_seconds: float) -> Verdict:
    """Run the judge on one episode. Any exception (``SystemExit`` included), a timeout or a
    malformed return value becomes a ``judge_error`` for this episode only. A sync judge runs in a
    daemon thread of its own, so a slow one does not stall the others; a hung sync judge's thread
    cannot be killed: it is abandoned, and being a daemon it holds up neither the judge stage nor
    the process's exit. An async judge that blocks the event loop cannot be timed out."""
    started = time.perf_counter()
    try:
        result = await asyncio.wait_for(_call(judge, judge_input), timeout=timeout_seconds)
        raw_reward, is_success = _checked(result)
    except TimeoutError:
        return Verdict(None, None, f"timeout after {timeout_seconds:g}s", time.perf_counter() - started)
    except Exception as error:  # noqa: BLE001 - a user judge may raise anything; isolate it to this episode
        return Verdict(None, None, f"{type(error).__name__}: {error}"[:500], time.perf_counter() - started)
    return Verdict(raw_reward, is_success, None, time.perf_counter() - started)


async def _call(judge: Any, judge_input: dict[str, Any]) -> Any:
    try:
        if inspect.iscoroutinefunction(judge.compute_reward):
            return await judge.compute_reward(judge_input)
        result = await _in_daemon_thread(judge.compute_reward, judge_input)
        return await result if inspect.isawaitable(result) else result
    except SystemExit as exited:  # escaping an asyncio task, it would stop the whole event loop
        raise RuntimeError(f"the judge raised SystemExit: {exited.code}") from None


def _in_daemon_thread(function: Callable[[Any], Any], argument: Any) -> asyncio.Future:
    """``function(argument)`` in a new daemon thread, as a future of the running loop.

    Not ``asyncio.to_thread``: its executor's threads are joined when ``asyncio.run`` ends and at
    interpreter exit, so one hung judge would hang the whole stage despite the timeout.
    """
    loop = asyncio.get_running_loop()
    future = loop.create_future()

    def settle(outcome: Any, failed: bool) -> None:
        if not future.done():
            future.set_exception(outcome) if failed else future.set_result(outcome)

    def work() -> None:
        try:
            outcome, failed = function(argument), False
        except BaseException as error:  # noqa: BLE001 - handed to the awaiting coroutine
            outcome, failed = error, True
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits for it any more
            loop.call_soon_threadsafe(settle, outcome, failed)

    threading.Thread(target=work, name="reinflow-judge", daemon=True).start()
    return future


def _checked(result: Any) -> tuple[float, bool]:
    if not (isinstance(result, tuple) and len(result) == 2):
        raise TypeError(f"compute_reward must return (raw_reward, is_success), got {result!r:.100}")
    raw_reward, is_success = result
    if isinstance(raw_reward, bool) or not isinstance(raw_reward, (int, float)) or not math.isfinite(raw_reward):
        raise TypeError(f"raw_reward must be a finite number, got {raw_reward!r:.100}")
    if is_success is None or isinstance(is_success, (str, bytes, list, tuple, dict)):
        raise TypeError(f"is_success must be a bool, got {is_success!r:.100}")
    return float(raw_reward), bool(is_success)


async def judge_all(
    judge: Any,
    judge_inputs: Sequence[dict[str, Any]],
    concurrency: int,
    timeout_seconds: float,
    on_done: Callable[[int], None] | None = None,
) -> list[Verdict]:
    """Judge every input with at most ``concurrency`` in flight; results keep the input order."""
    gate = asyncio.Semaphore(concurrency)

    async def bounded(judge_input: dict[str, Any]) -> Verdict:
        async with gate:
            verdict = await judge_one(judge, judge_input, timeout_seconds)
        if on_done is not None:
            on_done(1)
        return verdict

    return list(await asyncio.gather(*(bounded(item) for item in judge_inputs)))


def load_judge(config: JudgeConfig, project_root: Path) -> Any:
    """Import and construct the configured judge; problems become one-line PluginErrors.

    A judge need not subclass :class:`Judge`: any class with ``compute_reward`` will do."""
    return construct_plugin(config.protocol, config.options, project_root, role="judge",
                            required_methods=("compute_reward",), base=None, options_key="judge.options")
