"""Serve episodes on a real endpoint (uvicorn on loopback) and drive them from client threads.

The rollout's side (the episode's event loop, where the engine and the model live) is this test's
``asyncio.run``; the agent's side is a blocking client (the OpenAI SDK, httpx) in a worker thread,
as an agent process would be.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from reinflow.endpoint.server import EndpointServer
from reinflow.rollout.tuned_model import TunedModel
from reinflow.rollout.workflow import Task

Client = Callable[[str, str], Any]
"""``client(base_url, token) -> anything``: the agent's side of one episode."""

TASK = Task(task_id="t-1", question="What is 2 + 3?", reference_answer="5")


async def serve(server: EndpointServer, episodes: Sequence[tuple[TunedModel, Client]]) -> list[Any]:
    """Open one episode per ``(model, client)``, run the clients in threads at once, close the
    episodes when their clients return; the clients' results, in order."""
    server.start()

    async def one(model: TunedModel, client: Client, threads: ThreadPoolExecutor) -> Any:
        episode = server.registry.open(model, TASK, server.settings.max_episode_tokens)
        try:
            return await asyncio.get_running_loop().run_in_executor(threads, client, server.base_url(episode),
                                                                    server.token)
        finally:
            server.registry.close(episode)

    with ThreadPoolExecutor(max_workers=len(episodes)) as threads:  # every client at once
        return await asyncio.gather(*(one(model, client, threads) for model, client in episodes))


def serve_one(server: EndpointServer, model: TunedModel, client: Client) -> Any:
    """Serve one episode to ``client``; its result."""
    return asyncio.run(serve(server, [(model, client)]))[0]
