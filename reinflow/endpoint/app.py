"""The endpoint's HTTP routes (Starlette), with the checks every request passes, in this order:

1. **bearer token** (``Authorization: Bearer <token>``, compared in constant time): else 401;
2. **concurrency**: more than ``max_concurrent_requests`` in flight: 429 (a flood is refused, not queued);
3. **episode**: the id in the path names an open episode: else 404;
4. **size**: a body over ``max_request_bytes`` (declared or streamed): 413, read no further;
5. **shape**: JSON, and only the fields ``reinflow.endpoint.requests`` accepts: else 400.

Routes (``<base>`` is ``/episodes/<id>/v1``, the episode's ``OPENAI_BASE_URL``)::

    POST <base>/chat/completions     one LLM call of the episode (``stream: true`` gets it as one SSE chunk)
    GET  <base>/models               the policy's model name
    GET  /v1/models                  the same, outside any episode

Every error is an OpenAI-style JSON body (``reinflow.endpoint.errors``). Nothing secret is logged:
the token is never written anywhere, and uvicorn's access log is off.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from reinflow.endpoint.episodes import EpisodeRegistry
from reinflow.endpoint.errors import EndpointError
from reinflow.endpoint.requests import parse_request

Handler = Callable[[Request], Awaitable[Response]]


@dataclass
class EndpointState:
    """What the routes share: the episodes, the token, the limits and the in-flight count."""

    registry: EpisodeRegistry
    token: str
    model_name: str
    max_request_bytes: int
    max_concurrent_requests: int
    in_flight: int = 0
    counts: dict[int, int] = field(default_factory=dict)
    """Responses by status code (tests and the bench read it)."""


def create_app(state: EndpointState, extra_routes: list[Route] | None = None) -> Starlette:
    """The Starlette app of one endpoint (``extra_routes``: e.g. the pull API's)."""
    routes = [
        Route("/episodes/{episode_id}/v1/chat/completions", guarded(state, chat_completions), methods=["POST"]),
        Route("/episodes/{episode_id}/v1/models", guarded(state, list_models), methods=["GET"]),
        Route("/v1/models", guarded(state, list_models), methods=["GET"]),
        *(extra_routes or []),
    ]
    handlers = {status: _http_error for status in (404, 405)}
    return Starlette(routes=routes, exception_handlers=handlers)  # type: ignore[arg-type]


def guarded(state: EndpointState, handler: Callable[[Request, EndpointState], Awaitable[Response]]) -> Handler:
    """``handler`` behind the token check and the concurrency limit, its errors as OpenAI JSON."""

    async def route(request: Request) -> Response:
        try:
            check_token(request, state.token)
        except EndpointError as error:
            return _count(state, _error_response(error))
        if state.in_flight >= state.max_concurrent_requests:
            return _count(state, _error_response(EndpointError(
                429, "rate_limit_exceeded",
                f"{state.in_flight} requests are in flight (rollout.endpoint.max_concurrent_requests); retry later",
            )))
        state.in_flight += 1
        try:
            return _count(state, await handler(request, state))
        except EndpointError as error:
            return _count(state, _error_response(error))
        finally:
            state.in_flight -= 1

    return route


def check_token(request: Request, token: str) -> None:
    """401 unless the request carries ``Authorization: Bearer <token>``."""
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise EndpointError(401, "invalid_api_key",
                            "missing or wrong bearer token: send the run's token as the API key (OPENAI_API_KEY)")


async def read_body(request: Request, limit: int) -> bytes:
    """The body, or 413 as soon as it is known to exceed ``limit`` bytes (the rest is not read)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(int(declared), limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(size, limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(size: int, limit: int) -> EndpointError:
    return EndpointError(413, "request_too_large",
                         f"the request body has {size} bytes or more; at most {limit} are accepted "
                         "(rollout.endpoint.max_request_bytes)")


# ----------------------------------------------------------------------------- routes


async def chat_completions(request: Request, state: EndpointState) -> Response:
    """One LLM call of the episode named in the path."""
    episode = state.registry.get(request.path_params["episode_id"])
    parsed = parse_request(await read_body(request, state.max_request_bytes))
    body = await episode.submit(parsed)
    if not parsed.stream:
        return JSONResponse(body)
    include_usage = bool((parsed.stream_options or {}).get("include_usage"))
    return StreamingResponse(sse_events(body, include_usage), media_type="text/event-stream")


async def list_models(request: Request, state: EndpointState) -> Response:
    """The one model served: the policy under training."""
    if "episode_id" in request.path_params:
        state.registry.get(request.path_params["episode_id"])
    model = {"id": state.model_name, "object": "model", "created": 0, "owned_by": "reinflow"}
    return JSONResponse({"object": "list", "data": [model]})


async def sse_events(body: dict[str, Any], include_usage: bool) -> AsyncIterator[str]:
    """A finished completion as ``chat.completion.chunk`` server-sent events: the whole message in
    one chunk, then the finish reason, the usage when asked, and ``[DONE]``."""
    choice = body["choices"][0]
    message = choice["message"]
    delta: dict[str, Any] = {"role": "assistant", "content": message["content"]}
    if "tool_calls" in message:
        delta["tool_calls"] = [{"index": i, **call} for i, call in enumerate(message["tool_calls"])]
    head = {key: body[key] for key in ("id", "created", "model")} | {"object": "chat.completion.chunk"}
    yield _event(head | {"choices": [{"index": 0, "delta": delta, "finish_reason": None, "logprobs": choice["logprobs"]}]})
    yield _event(head | {"choices": [{"index": 0, "delta": {}, "finish_reason": choice["finish_reason"]}]})
    if include_usage:
        yield _event(head | {"choices": [], "usage": body["usage"]})
    yield "data: [DONE]\n\n"


def _event(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


# ----------------------------------------------------------------------------- errors


def _error_response(error: EndpointError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status)


def _count(state: EndpointState, response: Response) -> Response:
    state.counts[response.status_code] = state.counts.get(response.status_code, 0) + 1
    return response


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 (no such route, wrong method) as OpenAI-style errors."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    code = "route_not_found" if status == 404 else "method_not_allowed"
    message = f"{request.method} {request.url.path}: " + (
        "no such route; the endpoint serves <base>/chat/completions and <base>/models, <base> being /episodes/<id>/v1"
        if status == 404 else "method not allowed")
    return _error_response(EndpointError(status, code, message))
