"""The episodes an endpoint serves, kept apart: one base URL, one recorder, one lock each.

An episode is opened by the workflow that runs it (``reinflow.endpoint.command_workflow``), inside
the rollout's event loop, with the episode's :class:`~reinflow.rollout.tuned_model.TunedModel`
(built by the runner as for an in-process workflow: same seed, limits and engine). Its id is
random and unguessable (``ep-`` + 24 hex digits) and names its base URL ``/episodes/<id>/v1``.

The HTTP server runs in its own thread and event loop; :meth:`EndpointEpisode.submit` hands a
request over to the episode's loop (where the engine and the model live) and awaits the answer,
so every LLM call runs exactly as an in-process call would. One request of an episode runs at a
time (a lock): the turns are recorded in the order the agent made them.

When the episode ends (its process exited, it timed out) it is closed: it leaves the registry (a
later request gets 404) and its requests still waiting are cancelled (they get 404 as well).
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from concurrent.futures import Future
from typing import Any

from reinflow.endpoint.conversation import completion_body, key_of_message, key_of_turn, shown_content, to_chat_turns
from reinflow.endpoint.errors import EndpointError, episode_not_found
from reinflow.endpoint.requests import AssistantMessage, ChatCompletionRequest
from reinflow.errors import RunInterrupted
from reinflow.rollout.chat_format import ChatMessage, with_tool_block
from reinflow.rollout.tool_calls import ParsedReply
from reinflow.rollout.tuned_model import ContextOverflow, GenerationAborted, TunedModel, Turn, TurnLimitReached
from reinflow.rollout.workflow import Task


class EndpointEpisode:
    """One episode served over HTTP; its turns are recorded in ``model.turns``."""

    def __init__(self, episode_id: str, model: TunedModel, task: Task, loop: asyncio.AbstractEventLoop,
                 max_episode_tokens: int | None) -> None:
        self.episode_id, self.model, self.task, self.loop = episode_id, model, task, loop
        self.max_episode_tokens = max_episode_tokens
        self.failure: BaseException | None = None
        """What broke serving this episode (the engine aborted or failed): the episode fails with it."""
        self.closed = False
        self._replies: dict[Any, str] = {}
        self._lock = asyncio.Lock()
        self._waiting: set[Future] = set()
        self._waiting_guard = threading.Lock()

    # ------------------------------------------------------------------------- the server's side

    async def submit(self, request: ChatCompletionRequest) -> dict[str, Any]:
        """Serve ``request`` on the episode's loop (call from the server's loop); the response body."""
        try:
            future = asyncio.run_coroutine_threadsafe(self.complete(request), self.loop)
        except RuntimeError:  # the episode's loop has closed: the rollout is over
            raise episode_not_found(self.episode_id) from None
        with self._waiting_guard:
            self._waiting.add(future)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            if future.cancelled():  # the episode closed while the request waited
                raise episode_not_found(self.episode_id) from None
            raise
        finally:
            with self._waiting_guard:
                self._waiting.discard(future)

    # ------------------------------------------------------------------------- the episode's side

    async def complete(self, request: ChatCompletionRequest) -> dict[str, Any]:
        """Render, generate and record one request as a turn; the ``chat.completion`` body."""
        async with self._lock:
            if self.closed:
                raise episode_not_found(self.episode_id)
            self._check_token_budget()
            template = self.model.template
            tools = request.tool_schemas()
            chat = to_chat_turns(request.messages, self._exact_reply, template.native_tools)
            if tools and not template.native_tools:
                chat = with_tool_block(chat, tools)
            turn, parsed = await self._generate(chat, tools, request)
            content = shown_content(turn, parsed)
            self._replies[key_of_turn(turn, content)] = turn.response_text
            token_text = (lambda token: template.decode([token])) if request.logprobs else None
            return completion_body(turn, content, completion_id=f"chatcmpl-{self.episode_id}-{turn.index}",
                                   model_name=self.model.model, created=int(time.time()), token_text=token_text)

    async def _generate(self, chat: list[ChatMessage], tools: list[dict[str, Any]],
                        request: ChatCompletionRequest) -> tuple[Turn, ParsedReply]:
        """``model.generate_turn``, its budget errors as OpenAI errors; an engine failure fails the episode."""
        try:
            return await self.model.generate_turn(chat, tools, max_new_tokens=request.token_cap(),
                                                  stop=request.stop_strings())
        except TurnLimitReached as error:
            raise EndpointError(400, "turn_limit_exceeded", f"{error}; end the episode") from None
        except ContextOverflow as error:
            raise EndpointError(400, "context_length_exceeded", f"{error}; end the episode") from None
        except (GenerationAborted, RunInterrupted) as error:
            self.failure = error
            raise EndpointError(503, "engine_unavailable", f"the policy's engine stopped: {error}") from None

    def _check_token_budget(self) -> None:
        generated = sum(len(turn.output_ids) for turn in self.model.turns)
        if self.max_episode_tokens is not None and generated >= self.max_episode_tokens:
            raise EndpointError(
                400, "token_budget_exceeded",
                f"the episode generated {generated} tokens, its budget is {self.max_episode_tokens} "
                "(rollout.endpoint.max_episode_tokens); end the episode",
            )

    def _exact_reply(self, message: AssistantMessage) -> str | None:
        return self._replies.get(key_of_message(message))

    def close(self) -> None:
        """No more requests: waiting ones are cancelled (they get 404)."""
        self.closed = True
        with self._waiting_guard:
            waiting = list(self._waiting)
        for future in waiting:
            future.cancel()


class EpisodeRegistry:
    """The open episodes by id (thread-safe: the server's thread reads, the rollout's loop writes)."""

    def __init__(self) -> None:
        self._episodes: dict[str, EndpointEpisode] = {}
        self._guard = threading.Lock()

    def open(self, model: TunedModel, task: Task, max_episode_tokens: int | None = None) -> EndpointEpisode:
        """Open an episode served on the running event loop (the rollout's)."""
        episode = EndpointEpisode(f"ep-{secrets.token_hex(12)}", model, task, asyncio.get_running_loop(),
                                  max_episode_tokens)
        with self._guard:
            self._episodes[episode.episode_id] = episode
        return episode

    def get(self, episode_id: str) -> EndpointEpisode:
        """The open episode ``episode_id``, or a 404 :class:`EndpointError`."""
        with self._guard:
            episode = self._episodes.get(episode_id)
        if episode is None:
            raise episode_not_found(episode_id)
        return episode

    def close(self, episode: EndpointEpisode) -> None:
        """End ``episode``: it leaves the registry and refuses further requests."""
        with self._guard:
            self._episodes.pop(episode.episode_id, None)
        episode.close()

    def __len__(self) -> int:
        with self._guard:
            return len(self._episodes)
