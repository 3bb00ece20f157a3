"""One ``generate`` call inside the hf engine: the checks it passes, its state, its way back.

``validate_request`` rejects what the scheduler cannot serve before anything is queued.
``Request`` is the call's state: created on the caller's event loop, owned by the scheduler thread
once queued (the tokens and logprobs it samples, how many of its tokens are in the KV cache), and
marked ``cancelled`` when the caller stops waiting. ``set_result`` / ``set_exception`` run on the
caller's loop (``loop.call_soon_threadsafe``) to hand the outcome to its future, unless the caller
has already given up on it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import torch

from reinflow.engines.base import Generation, SamplingParams


@dataclass(eq=False)
class Request:
    """One request's state, owned by the scheduler thread after submission."""

    prompt_ids: list[int]
    sampling: SamplingParams
    max_new_tokens: int
    generator: torch.Generator
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Generation]
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    cached: int = 0
    """Tokens whose keys/values are in the cache (the prompt, then every output token but the last)."""
    cancelled: bool = False


def validate_request(prompt_ids: list[int], sampling: SamplingParams) -> None:
    """Reject requests the scheduler cannot serve, with a message that says why."""
    if not prompt_ids:
        raise ValueError("generate needs a non-empty prompt")
    if sampling.max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {sampling.max_new_tokens}")
    if sampling.temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {sampling.temperature}")
    if not 0 < sampling.top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {sampling.top_p}")


def set_result(future: asyncio.Future[Generation], result: Generation) -> None:
    """``future``'s result, unless it is done already (cancelled by its caller)."""
    if not future.done():
        future.set_result(result)


def set_exception(future: asyncio.Future[Generation], error: BaseException) -> None:
    """``future``'s exception, unless it is done already (cancelled by its caller)."""
    if not future.done():
        future.set_exception(error)
