"""A scripted OpenAI-compatible judge server on 127.0.0.1 (uvicorn + starlette, in a background
thread, on a free port): it answers ``POST /v1/chat/completions`` with whatever the test sets as its
``behaviour`` (a verdict, garbage, a slow reply, an HTTP error) and records every request (the
Authorization header and the body), so the tests can count LLM calls and check which key arrived.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

Behaviour = Callable[[dict[str, Any]], Awaitable[Response]]


@dataclass
class Recorded:
    """One request the server received."""

    authorization: str | None
    body: dict[str, Any]

    @property
    def prompt(self) -> str:
        """The user message the judge sent."""
        return self.body["messages"][-1]["content"]


@dataclass
class FakeJudgeServer:
    """The scripted server: set ``behaviour``, read ``requests``."""

    url: str
    behaviour: Behaviour
    requests: list[Recorded] = field(default_factory=list)


def completion(content: str | None) -> dict[str, Any]:
    """A chat completion in the OpenAI response shape."""
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 0,
        "model": "judge-model",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }


def says(content: str | None) -> Behaviour:
    """Reply ``content`` at once."""

    async def respond(body: dict[str, Any]) -> Response:
        return JSONResponse(completion(content))

    return respond


def slow(seconds: float, content: str) -> Behaviour:
    """Reply ``content`` after ``seconds``."""

    async def respond(body: dict[str, Any]) -> Response:
        await asyncio.sleep(seconds)
        return JSONResponse(completion(content))

    return respond


def fails(status: int, text: str = "internal error") -> Behaviour:
    """Answer an HTTP error."""

    async def respond(body: dict[str, Any]) -> Response:
        return PlainTextResponse(text, status_code=status)

    return respond


async def no_choices(body: dict[str, Any]) -> Response:
    """A chat completion with an empty ``choices`` list."""
    return JSONResponse(completion(None) | {"choices": []})


@contextmanager
def fake_judge_server() -> Iterator[FakeJudgeServer]:
    """The server, answering ``VERDICT: CORRECT`` until told otherwise; stopped on exit."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    fake = FakeJudgeServer(f"http://127.0.0.1:{sock.getsockname()[1]}/v1", says("VERDICT: CORRECT"))

    async def chat_completions(request: Request) -> Response:
        body = await request.json()
        fake.requests.append(Recorded(request.headers.get("authorization"), body))
        return await fake.behaviour(body)

    app = Starlette(routes=[Route("/v1/chat/completions", chat_completions, methods=["POST"])])
    config = uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the fake judge server did not start"
        time.sleep(0.01)
    try:
        yield fake
    finally:
        server.should_exit = True
        thread.join(timeout=5)
        sock.close()
