"""The pull API: agents on other machines claim episodes, run them against the endpoint, and report.

With ``rollout.workflow_pull: true`` every episode of the rollout waits in a queue until a worker
claims it. Routes (bearer token as everywhere; ``<pull>`` is ``/pull/v1``)::

    POST <pull>/claim                       {"wait_seconds": 10}  ->  200 {"episode_id", "base_url", "task"}
                                                                   or 204 when no episode waited that long
    POST <pull>/episodes/<id>/finish        the result JSON of a workflow_command
                                            ({"final_answer", "metadata", "judge_input", "reward"})
    POST <pull>/episodes/<id>/abort         {"reason": "..."}: the episode fails with that reason

A claimed episode's ``base_url`` is its OpenAI base URL (``rollout.endpoint.public_url`` where
set). A worker that dies or hangs never reports: its episode ends at
``rollout.episode_timeout_seconds`` as a timeout and the run goes on; a report after that, or a
second report, gets 404 (the episode is closed). An episode nobody claims times out the same way.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from reinflow.endpoint.app import EndpointState, guarded, read_body
from reinflow.endpoint.episode_process import CommandResult, task_json
from reinflow.endpoint.episodes import EndpointEpisode
from reinflow.endpoint.errors import EndpointError, episode_not_found
from reinflow.endpoint.requests import parse_json_object

MAX_WAIT_SECONDS = 30.0


class ClaimRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    wait_seconds: float = Field(0.0, ge=0.0, le=MAX_WAIT_SECONDS, description="Long-poll this long for an episode.")


class AbortRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field("aborted by the worker", max_length=2000)


class EpisodeAborted(Exception):
    """A remote worker aborted its episode."""


class PullQueue:
    """Episodes waiting for a worker, and the outcome each one's workflow awaits."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        """``rollout.workflow_options``, handed to every worker with its task."""
        self._waiting: collections.deque[EndpointEpisode] = collections.deque()
        self._outcomes: dict[str, asyncio.Future] = {}
        self._claimed: set[str] = set()
        self._guard = threading.Lock()

    def offer(self, episode: EndpointEpisode) -> asyncio.Future:
        """Queue ``episode`` (call on its loop); the future gets a CommandResult or EpisodeAborted."""
        outcome = episode.loop.create_future()
        with self._guard:
            self._outcomes[episode.episode_id] = outcome
            self._waiting.append(episode)
        return outcome

    def withdraw(self, episode: EndpointEpisode) -> None:
        """The episode ended (reported, or timed out): forget it."""
        with self._guard:
            self._outcomes.pop(episode.episode_id, None)
            self._claimed.discard(episode.episode_id)
            if episode in self._waiting:
                self._waiting.remove(episode)

    def claim(self) -> EndpointEpisode | None:
        """The oldest waiting episode, now claimed; None when none waits."""
        with self._guard:
            if not self._waiting:
                return None
            episode = self._waiting.popleft()
            self._claimed.add(episode.episode_id)
            return episode

    def settle(self, episode_id: str, outcome: CommandResult | EpisodeAborted) -> None:
        """Hand a claimed episode's outcome to its workflow (from the server's thread), or 404."""
        with self._guard:
            future = self._outcomes.pop(episode_id, None) if episode_id in self._claimed else None
            self._claimed.discard(episode_id)
        if future is None:
            raise episode_not_found(episode_id)
        setter = future.set_exception if isinstance(outcome, EpisodeAborted) else future.set_result
        try:
            future.get_loop().call_soon_threadsafe(_settle, future, setter, outcome)
        except RuntimeError:  # the rollout's loop is gone
            raise episode_not_found(episode_id) from None


def _settle(future: asyncio.Future, setter: Any, outcome: Any) -> None:
    if not future.done():
        setter(outcome)


def pull_routes(state: EndpointState, queue: PullQueue, base_url: Any) -> list[Route]:
    """The pull API's routes; ``base_url(episode)`` gives a claimed episode's OpenAI base URL."""

    async def claim(request: Request, state: EndpointState) -> Response:
        wait = _model(ClaimRequest, await read_body(request, state.max_request_bytes)).wait_seconds
        deadline = time.monotonic() + wait
        while (episode := queue.claim()) is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if episode is None:
            return Response(status_code=204)
        payload = task_json(episode.task, episode.episode_id, queue.options)
        return JSONResponse({"episode_id": episode.episode_id, "base_url": base_url(episode), "task": payload})

    async def finish(request: Request, state: EndpointState) -> Response:
        body = (await read_body(request, state.max_request_bytes)).replace(state.token.encode(), b"[redacted]")
        result = _model(CommandResult, body)  # no result kept in the rollout carries the token
        queue.settle(request.path_params["episode_id"], result)
        return JSONResponse({"episode_id": request.path_params["episode_id"], "status": "finished"})

    async def abort(request: Request, state: EndpointState) -> Response:
        reason = _model(AbortRequest, await read_body(request, state.max_request_bytes)).reason
        queue.settle(request.path_params["episode_id"], EpisodeAborted(reason))
        return JSONResponse({"episode_id": request.path_params["episode_id"], "status": "aborted"})

    return [
        Route("/pull/v1/claim", guarded(state, claim), methods=["POST"]),
        Route("/pull/v1/episodes/{episode_id}/finish", guarded(state, finish), methods=["POST"]),
        Route("/pull/v1/episodes/{episode_id}/abort", guarded(state, abort), methods=["POST"]),
    ]


def _model(model: type[BaseModel], body: bytes) -> Any:
    """``body`` (JSON; empty means ``{}``) checked against ``model``, or a 400 naming the problem."""
    payload = parse_json_object(body) if body.strip() else {}
    try:
        return model.model_validate(payload)
    except ValidationError as error:
        problem = error.errors(include_url=False)[0]
        path = ".".join(str(part) for part in problem["loc"]) or "(body)"
        raise EndpointError(400, "invalid_request", f"{path}: {problem['msg']}", param=path) from None
