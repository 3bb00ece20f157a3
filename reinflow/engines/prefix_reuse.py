"""Prefix reuse in the hf engine: where an arriving prompt's longest cached prefix lives, and copying it.

An agent's next turn re-sends its whole conversation and a GRPO group sends one prompt several
times. So before a prompt is prefilled, the scheduler looks for the longest prefix of it (at least
``MIN_REUSED_TOKENS`` tokens) whose keys/values are already cached: in a running row (its prompt
and the output tokens cached so far) or in a parked finished row (``kv_cache.ParkedRows``). The
prompt's last token is always left to compute (its logits give the first sample).
``longest_cached_prefix`` finds that ``PrefixSource``; ``copy_prefix`` copies it into the
arriving request's slot. ``waits_for`` says when a prompt shares more with a prompt admitted in
the same pass than with anything cached: it then waits one pass and reuses that one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from reinflow.engines.kv_cache import ParkedRows, StaticKVCache

MIN_REUSED_TOKENS = 8
"""Shorter shared prefixes are computed again: copying them saves less than it costs."""


@dataclass(frozen=True)
class PrefixSource:
    """Where the longest cached prefix of an arriving prompt lives."""

    cache: StaticKVCache
    row: int
    length: int
    parked: bool


def shared_prefix(a: list[int], b: list[int], limit: int) -> int:
    """Length of the common prefix of ``a`` and ``b``, at most ``limit``."""
    limit = min(limit, len(a), len(b))
    for index in range(limit):
        if a[index] != b[index]:
            return index
    return limit


def longest_cached_prefix(prompt: list[int], running: Sequence[tuple[list[int], int]], cache: StaticKVCache,
                          parked: ParkedRows) -> PrefixSource | None:
    """The running or parked row holding the longest prefix of ``prompt`` (leaving one token to run).

    ``running``: per slot of ``cache``, the row's tokens (prompt + output) and how many of them
    are cached. ``None`` when no row shares ``MIN_REUSED_TOKENS`` tokens or more."""
    best: PrefixSource | None = None
    longest = MIN_REUSED_TOKENS - 1
    for slot, (held, cached) in enumerate(running):
        shared = shared_prefix(prompt, held, min(len(prompt) - 1, cached))
        if shared > longest:
            best, longest = PrefixSource(cache, slot, shared, parked=False), shared
    for row, tokens in enumerate(parked.tokens):
        if tokens is not None and (shared := shared_prefix(prompt, tokens, len(prompt) - 1)) > longest:
            best, longest = PrefixSource(parked.store, row, shared, parked=True), shared
    return best


def copy_prefix(source: PrefixSource | None, cache: StaticKVCache, parked: ParkedRows, slot: int) -> int:
    """Copy ``source``'s prefix into ``slot`` of ``cache``; returns its length (0 without a source).

    A parked row the prompt extends completely is released (the request is parked in its place
    when it finishes); one it extends in part stays, marked as just used."""
    if source is None:
        return 0
    cache.copy_row(source.cache, source.row, slot, source.length)
    if source.parked:
        tokens = parked.tokens[source.row]
        if tokens is not None and source.length == len(tokens):
            parked.release(source.row)
        else:
            parked.touch(source.row)
    return source.length


def waits_for(prompt: list[int], source: PrefixSource | None, admitted: Sequence[list[int]]) -> bool:
    """Whether ``prompt`` shares a longer prefix with a prompt admitted in this pass (``admitted``)
    than with any cached row (``source``): it then waits one pass and reuses that prompt's keys/values."""
    reusable = max(source.length if source else 0, MIN_REUSED_TOKENS - 1)
    limit = len(prompt) - 1
    return any(shared_prefix(prompt, other, limit) > reusable for other in admitted)
