"""The `hf` engine's key/value storage: a static cache per layer, ``[rows, kv_heads, capacity,
head_dim]``, written in place and grown by doubling up to ``max_batch_size`` x ``max_model_len``; and
the parked rows, finished requests' keys/values kept for prompts that start with them.
"""

from __future__ import annotations

import torch

MIN_CAPACITY = 256
WIDTH_MULTIPLE = 16
"""Decode attention spans a multiple of this many columns: its reductions then see a row's
columns in the same vector lanes whatever the batch's longest row, so a row's result does not
depend on the rest of the batch (the masked columns add exact zeros)."""


class StaticKVCache:
    """Per-layer key and value buffers ``[rows, kv_heads, capacity, head_dim]``, written in place."""

    def __init__(self, layers: int, kv_heads: int, head_dim: int, max_rows: int, max_len: int,
                 dtype: torch.dtype, device: torch.device) -> None:
        self._shape = (kv_heads, head_dim)
        self._max_rows, self._max_len = max_rows, round_up(max_len, WIDTH_MULTIPLE)
        self._dtype, self._device = dtype, device
        self.keys = [self._empty(1, min(MIN_CAPACITY, self._max_len)) for _ in range(layers)]
        self.values = [self._empty(1, min(MIN_CAPACITY, self._max_len)) for _ in range(layers)]

    def _empty(self, rows: int, capacity: int) -> torch.Tensor:
        kv_heads, head_dim = self._shape
        return torch.zeros(rows, kv_heads, capacity, head_dim, dtype=self._dtype, device=self._device)

    def ensure(self, rows: int, length: int) -> None:
        """Grow (by doubling, capped) so that ``rows`` rows of ``length`` columns fit."""
        have_rows, have_len = self.keys[0].shape[0], self.keys[0].shape[2]
        if rows <= have_rows and length <= have_len:
            return
        new_rows = min(self._max_rows, max(rows, 2 * have_rows)) if rows > have_rows else have_rows
        new_len = min(self._max_len, max(length, 2 * have_len)) if length > have_len else have_len
        for buffers in (self.keys, self.values):
            for layer, old in enumerate(buffers):
                grown = self._empty(new_rows, new_len)
                grown[:have_rows, :, :have_len].copy_(old)
                buffers[layer] = grown

    def flat_index(self, positions: torch.Tensor) -> torch.Tensor:
        """Indices into ``buffer.view(-1, head_dim)`` of column ``positions[i]`` of row ``i``, all heads."""
        kv_heads, capacity = self.keys[0].shape[1], self.keys[0].shape[2]
        heads = torch.arange(positions.shape[0] * kv_heads, device=positions.device).view(-1, kv_heads)
        return (heads * capacity + positions[:, None]).view(-1)

    def copy_row(self, source: StaticKVCache, source_row: int, target_row: int, length: int) -> None:
        """Copy the first ``length`` columns of ``source``'s row ``source_row`` into row ``target_row``."""
        for target, origin in zip(self.keys + self.values, source.keys + source.values):
            target[target_row, :, :length] = origin[source_row, :, :length]


class ParkedRows:
    """Keys/values of finished requests (prompt + output), kept for later prompts that start with them.

    An agent's next turn re-sends its whole conversation, so the prompt of turn k+1 starts with the
    prompt and output of turn k: with that row parked, the turn's prefill runs only the new tokens
    (tool output, chat template). Rows are evicted least recently used; a parked row that a new prompt
    extends completely is released (the new request is parked in its place when it finishes).
    """

    def __init__(self, store: StaticKVCache, rows: int) -> None:
        self.store = store
        self.tokens: list[list[int] | None] = [None] * rows
        self._used = [0] * rows
        self._clock = 0

    def park(self, cache: StaticKVCache, slot: int, tokens: list[int]) -> None:
        """Copy row ``slot`` of ``cache`` (holding ``tokens``) into a free or the least recent row."""
        if not self.tokens or not tokens:
            return
        row = min(range(len(self.tokens)), key=lambda r: (self.tokens[r] is not None, self._used[r]))
        self.store.ensure(row + 1, len(tokens))
        self.store.copy_row(cache, slot, row, len(tokens))
        self.tokens[row] = tokens
        self.touch(row)

    def touch(self, row: int) -> None:
        """Mark ``row`` as just used."""
        self._clock += 1
        self._used[row] = self._clock

    def release(self, row: int) -> None:
        self.tokens[row] = None

    def clear(self) -> None:
        """Forget every parked row (their keys/values belong to the old weights)."""
        self.tokens = [None] * len(self.tokens)


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def new_cache(model, max_rows: int, max_len: int, dtype: torch.dtype, device: torch.device) -> StaticKVCache:
    """A static cache shaped for this model's attention layers."""
    config = model.config
    head_dim = model.model.layers[0].self_attn.head_dim
    return StaticKVCache(config.num_hidden_layers, config.num_key_value_heads, head_dim, max_rows, max_len,
                          dtype, device)


