"""Records every request the OpenAI-compatible endpoint serves, token for token, in a training run.

Imported before the CLI by a `reinflow train` subprocess (``helpers.train_run.train(preload=...)``)
whose environment names a file in ``REINFLOW_ENDPOINT_RECORD``: each chat completion appends one
JSON line with the endpoint episode's id, the ids the engine was given and returned for that
request (``engine_prompt_ids``, ``engine_output_ids``, ``engine_logprobs``) and the turn the episode
recorded from it (``prompt_ids``, ``output_ids``, ``output_logprobs``). The request goes on unchanged.
Without ``REINFLOW_ENDPOINT_RECORD`` in the environment, importing this module patches nothing.
A test compares them with the samples the trainer trained on.
"""

from __future__ import annotations

from reinflow.run import environment

environment.apply_defaults()

import json  # noqa: E402
import os  # noqa: E402
import threading  # noqa: E402
from typing import Any  # noqa: E402

from reinflow.endpoint.episodes import EndpointEpisode  # noqa: E402

RECORD_ENV = "REINFLOW_ENDPOINT_RECORD"
_write_lock = threading.Lock()
_original_generate = EndpointEpisode._generate


class _EngineSpy:
    """The episode's engine, noting what each ``generate`` call got and gave back."""

    def __init__(self, engine: Any) -> None:
        self._engine, self.calls = engine, []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    async def generate(self, prompt_ids, sampling):
        generation = await self._engine.generate(prompt_ids, sampling)
        self.calls.append((list(prompt_ids), list(generation.token_ids), [float(v) for v in generation.logprobs]))
        return generation


async def _recorded_generate(self: EndpointEpisode, chat, tools, request):
    engine = self.model.engine
    spy = _EngineSpy(engine)
    self.model.engine = spy  # one request of an episode at a time: the episode's own model, swapped back below
    try:
        turn, parsed = await _original_generate(self, chat, tools, request)
    finally:
        self.model.engine = engine
    ((engine_prompt, engine_output, engine_logprobs),) = spy.calls
    line = json.dumps({
        "episode": self.episode_id, "task_id": self.task.task_id, "index": turn.index,
        "engine_prompt_ids": engine_prompt, "engine_output_ids": engine_output, "engine_logprobs": engine_logprobs,
        "prompt_ids": list(turn.prompt_ids), "output_ids": list(turn.output_ids),
        "output_logprobs": [float(v) for v in turn.output_logprobs],
        "request_messages": len(request.messages), "request_tools": [t.function.name for t in request.tools or []],
    })
    with _write_lock, open(os.environ[RECORD_ENV], "a", encoding="utf-8") as out:
        out.write(line + "\n")
    return turn, parsed


if os.environ.get(RECORD_ENV):  # only in the run that was asked to record (importing it elsewhere changes nothing)
    EndpointEpisode._generate = _recorded_generate
