"""The `hf` engine: a transformers causal LM serving many concurrent episodes with continuous batching.

One scheduler thread owns the model. ``generate`` (awaited by any number of asyncio tasks) queues a
request and awaits a future; the scheduler thread loops over *passes*. A pass is one forward over a
packed ``[tokens, hidden]`` batch holding

- one token for every active row (its last sampled token, at its own position: the decode part), and
- the prompt of every request admitted in this pass (up to ``max_batch_size`` rows in all and
  ``max_prefill_tokens`` computed prompt tokens a pass: the prefill part),

so a request joins the running batch in the pass after it arrives, and a prefill streams the
weights once together with the decode rows instead of in a pass of its own. Every row then samples
one token (per-request temperature, top-p and ``torch.Generator``); a finished row leaves at once
(its result goes back to its event loop with ``loop.call_soon_threadsafe``) and the last active row's
KV cache moves into its slot, so the active rows are always slots ``0..n-1``.

Prefix reuse: a prompt's longest prefix already held by a running row, or by a finished row kept
("parked") for it, is copied instead of recomputed: an agent's next turn re-sends its whole
conversation and a GRPO group sends one prompt several times, and both are prefilled once.

Why not ``transformers.generation.continuous_batching``: in 5.23 its sampling parameters are one
``GenerationConfig`` for the whole manager (no per-request temperature/top-p), it has one global seed
(a request's sample depends on its batch) and its logprobs come after top-p truncation; and on CPU
(SDPA) it attends over the whole packed batch with one block-diagonal mask. So the loop is our own.

Speed on CPU (see ``bench/rollout_engine.py``): a decode step is bound by streaming the weights
through GEMMs with a few rows, where MKL's ``nn.Linear`` re-packs every weight on every call. Here
q/k/v and gate/up are fused and every weight (lm_head included) is packed once for oneDNN
(``torch.ops.mkldnn._reorder_linear_weight``): about 2x faster than ``nn.Linear`` at 16 rows; the
residual adds after o_proj and down_proj are the GEMMs' post-ops. Elsewhere (GPU, non-fp32) the
fused weights go through ``F.linear``. Decode attention (fp32) is two batched matmuls and a softmax
over each row's cache row, with one additive mask a pass shared by all layers. Embeddings, rotary
tables, norm weights and activations are the model's own. The KV cache is a static buffer per layer,
``[rows, kv_heads, capacity, head_dim]``, written in place (``index_copy_``) and grown by doubling
up to ``max_batch_size`` x ``max_model_len``. The lm_head runs on the last position of each
sequence only. Supported: ``llama``, ``qwen2`` and ``qwen3`` (full attention).

Logprobs are ``log_softmax(logits / temperature)`` at the sampled token, before top-p truncation
(temperature 0 = greedy, reported under temperature 1): what a trainer recomputes with a full fp32
forward pass over prompt + output (``tests/test_hf_engine.py`` bounds the difference by 1e-4).

Reproducibility: on CPU a row's logits, logprobs and seeded samples are bit-identical whatever else
is in the batch (oneDNN's GEMM rows do not depend on the row count, decode attention spans a fixed
multiple of columns and its matmuls' rows do not depend on the thread computing them, the sampler's
normaliser is a per-row scan); only a reused prefix may change the last bits. On a GPU the GEMM
kernels change with the row count, so a row's last bits (and, rarely, a sampled token) may depend
on its batch.

Weights: ``load_weights`` copies new weights into the model, re-packs them and forgets the parked
rows; it refuses while any request is in flight (`EngineBusyError`): a rollout stage awaits all
its episodes first.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from reinflow.engines.base import FinishReason, Generation, SamplingParams
from reinflow.errors import RunInterrupted

SUPPORTED_MODEL_TYPES = frozenset({"llama", "qwen2", "qwen3"})
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_MIN_CAPACITY = 256
_WIDTH_MULTIPLE = 16
"""Decode attention spans a multiple of this many columns: its reductions then see a row's
columns in the same vector lanes whatever the batch's longest row, so a row's result does not
depend on the rest of the batch (the masked columns add exact zeros)."""
_MIN_REUSED_TOKENS = 8


class EngineClosedError(RunInterrupted):
    """``generate`` was called on an engine that is closed (or whose scheduler failed). A rollout
    stops at it (``reinflow.rollout``): it is the engine's failure, not an episode's."""


class EngineBusyError(RuntimeError):
    """``load_weights`` was called while requests were in flight."""


@dataclass
class EngineStats:
    """Counters the scheduler keeps; read them any time (metrics, tests, benchmarks)."""

    passes: int = 0
    decode_steps: int = 0
    """Passes that advanced at least one running row."""
    prefills: int = 0
    prompt_tokens: int = 0
    reused_prompt_tokens: int = 0
    """Prompt tokens whose keys/values were copied from a running or parked row, not computed."""
    generated_tokens: int = 0
    rows_per_step: Counter[int] = field(default_factory=Counter)
    """Histogram: running rows decoded in a pass -> number of passes."""
    finish_reasons: Counter[str] = field(default_factory=Counter)
    busy_seconds: float = 0.0
    """Wall time spent in passes (forward + sampling)."""
    prefill_seconds: float = 0.0
    """The part of ``busy_seconds`` spent in passes that carried a prefill."""

    @property
    def max_rows(self) -> int:
        """The largest number of rows a pass decoded together."""
        return max(self.rows_per_step, default=0)

    @property
    def mean_rows(self) -> float:
        """Average number of rows a decode step advanced."""
        return sum(k * v for k, v in self.rows_per_step.items()) / max(self.decode_steps, 1)


@dataclass(eq=False)
class _Request:
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


# ---------------------------------------------------------------------------------------------------
# the model: packed weights, static KV cache, one forward for mixed prefill + decode
# ---------------------------------------------------------------------------------------------------


class _Linear:
    """``x @ weight.T + bias`` for several fused ``nn.Linear`` layers (outputs concatenated).

    With ``packed_rows`` (CPU fp32) the fused weight is packed once for oneDNN: about 2x faster than
    MKL's ``nn.Linear`` (which re-packs the weight on every call) at 4-16 rows, ~25% slower for a
    single row (where MKL uses GEMV), and a row's result is bit-identical whatever the number of rows,
    which keeps seeded sampling independent of the batch. Otherwise the fused weight goes through
    ``F.linear``.
    """

    def __init__(self, linears: list[torch.nn.Linear], packed_rows: int | None) -> None:
        weight = torch.cat([m.weight.detach() for m in linears]) if len(linears) > 1 else linears[0].weight.detach()
        self.bias = None
        if any(m.bias is not None for m in linears):
            self.bias = torch.cat([m.bias.detach() if m.bias is not None else m.weight.new_zeros(m.out_features)
                                   for m in linears])
        self.packed = packed_rows is not None
        self.weight = torch.ops.mkldnn._reorder_linear_weight(weight, packed_rows) if self.packed else weight

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed:
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)

    def add_to(self, residual: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``residual + self(x)`` as a new tensor; packed, the add is a oneDNN post-op of the GEMM
        (bit-identical to the separate add, one pass over the output fewer)."""
        if self.packed:
            return torch.ops.mkldnn._linear_pointwise.binary(x, residual, self.weight, self.bias, "add")
        return residual + F.linear(x, self.weight, self.bias)


@dataclass(frozen=True)
class _Prefill:
    """One admitted prompt in a pass: its first ``reused`` tokens' keys/values were copied into
    ``slot`` from another row; the rest (``length - reused`` tokens from packed index ``start``) run."""

    slot: int
    start: int
    reused: int
    length: int
    mask: torch.Tensor | None
    """[new tokens, length] causal mask over the reused prefix and the new tokens (None: no prefix)."""

    @property
    def new(self) -> int:
        return self.length - self.reused


@dataclass
class _Plan:
    """What one pass computes. Token order: ``decode_rows`` decode tokens, then each prefill's new tokens."""

    decode_rows: int
    decode_positions: torch.Tensor
    """[decode_rows] the column each decode token writes (= its row's cached length)."""
    width: int
    """Columns the decode rows attend over (max position + 1, rounded up to `_WIDTH_MULTIPLE`)."""
    prefills: list[_Prefill]


@dataclass(frozen=True)
class _DecodeInputs:
    """What every layer's decode attention shares in a pass (built once, in `_PackedDecoder.forward`)."""

    cache_index: torch.Tensor
    """Where the decode rows' keys/values go: `_StaticKVCache.flat_index` of their positions."""
    bias: torch.Tensor
    """[decode_rows, 1, 1, width] additive mask: 0 up to a row's position, -inf after it."""

    @classmethod
    def of(cls, plan: _Plan, cache: _StaticKVCache, dtype: torch.dtype) -> _DecodeInputs:
        positions = plan.decode_positions
        beyond = torch.arange(plan.width, device=positions.device)[None, :] > positions[:, None]
        bias = torch.zeros(beyond.shape, dtype=dtype, device=positions.device).masked_fill_(beyond, -torch.inf)
        return cls(cache.flat_index(positions), bias[:, None, None, :])


class _StaticKVCache:
    """Per-layer key and value buffers ``[rows, kv_heads, capacity, head_dim]``, written in place."""

    def __init__(self, layers: int, kv_heads: int, head_dim: int, max_rows: int, max_len: int,
                 dtype: torch.dtype, device: torch.device) -> None:
        self._shape = (kv_heads, head_dim)
        self._max_rows, self._max_len = max_rows, _round_up(max_len, _WIDTH_MULTIPLE)
        self._dtype, self._device = dtype, device
        self.keys = [self._empty(1, min(_MIN_CAPACITY, self._max_len)) for _ in range(layers)]
        self.values = [self._empty(1, min(_MIN_CAPACITY, self._max_len)) for _ in range(layers)]

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

    def copy_row(self, source: _StaticKVCache, source_row: int, target_row: int, length: int) -> None:
        """Copy the first ``length`` columns of ``source``'s row ``source_row`` into row ``target_row``."""
        for target, origin in zip(self.keys + self.values, source.keys + source.values):
            target[target_row, :, :length] = origin[source_row, :, :length]


@dataclass
class _LayerWeights:
    """One decoder layer as the packed forward uses it."""

    qkv: _Linear
    o: _Linear
    gate_up: _Linear
    down: _Linear
    input_norm: torch.Tensor
    post_norm: torch.Tensor
    eps: float
    layer: torch.nn.Module
    """The model's own layer (its activation, and Qwen3's q/k norms)."""


class _PackedDecoder:
    """The model's forward pass over a packed batch of mixed prefill and decode tokens.

    Uses the model's own embedding, rotary tables, activation and norm weights (RMSNorm through
    ``F.rms_norm``, bit-identical to the model's); the linear layers are `_Linear`s built from the
    model's weights (rebuild after changing them).
    """

    def __init__(self, model, packed_rows: int | None) -> None:
        self.model = model
        config = model.config
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        attention = model.model.layers[0].self_attn
        self.head_dim, self.scaling = attention.head_dim, attention.scaling
        self.qk_norm = config.model_type == "qwen3"
        self.layers = [self._pack_layer(layer, packed_rows) for layer in model.model.layers]
        self.lm_head = _Linear([model.lm_head], packed_rows)

    @staticmethod
    def _pack_layer(layer, packed_rows: int | None) -> _LayerWeights:
        attention, mlp = layer.self_attn, layer.mlp
        return _LayerWeights(
            qkv=_Linear([attention.q_proj, attention.k_proj, attention.v_proj], packed_rows),
            o=_Linear([attention.o_proj], packed_rows),
            gate_up=_Linear([mlp.gate_proj, mlp.up_proj], packed_rows),
            down=_Linear([mlp.down_proj], packed_rows),
            input_norm=layer.input_layernorm.weight.detach(),
            post_norm=layer.post_attention_layernorm.weight.detach(),
            eps=layer.input_layernorm.variance_epsilon,
            layer=layer,
        )

    def forward(self, ids: torch.Tensor, positions: torch.Tensor, plan: _Plan, cache: _StaticKVCache,
                last: torch.Tensor) -> torch.Tensor:
        """Logits ``[len(last), vocab]`` at token indices ``last`` of the packed ``ids [tokens]``."""
        backbone = self.model.model
        hidden = backbone.embed_tokens(ids)
        rotary = _rotary_tables(backbone.rotary_emb, hidden, positions)
        decode = _DecodeInputs.of(plan, cache, hidden.dtype) if plan.decode_rows else None
        for index, weights in enumerate(self.layers):
            hidden = self._layer(hidden, weights, rotary, plan, cache, index, decode)
        return self.lm_head(backbone.norm(hidden[last]))

    def _layer(self, hidden: torch.Tensor, weights: _LayerWeights, rotary: tuple[torch.Tensor, torch.Tensor],
               plan: _Plan, cache: _StaticKVCache, index: int, decode: _DecodeInputs | None) -> torch.Tensor:
        """One decoder layer (pre-norm attention and gated MLP, residuals) on ``hidden [tokens, dim]``."""
        tokens, width = hidden.shape
        qkv = weights.qkv(F.rms_norm(hidden, (width,), weights.input_norm, weights.eps))
        qk_size = (self.heads + self.kv_heads) * self.head_dim
        query_key = qkv[:, :qk_size].view(tokens, self.heads + self.kv_heads, self.head_dim)
        value = qkv[:, qk_size:].view(tokens, self.kv_heads, self.head_dim)
        if self.qk_norm:
            attention = weights.layer.self_attn
            query_key = torch.cat([attention.q_norm(query_key[:, : self.heads]),
                                   attention.k_norm(query_key[:, self.heads :])], dim=1)
        query_key = _rotate(query_key, rotary)
        query, key = query_key[:, : self.heads], query_key[:, self.heads :]
        hidden = weights.o.add_to(hidden, self._attend(query, key, value, plan, cache, index, decode))
        normed = F.rms_norm(hidden, (width,), weights.post_norm, weights.eps)
        gate, up = weights.gate_up(normed).chunk(2, dim=-1)
        return weights.down.add_to(hidden, weights.layer.mlp.act_fn(gate).mul_(up))

    def _attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, plan: _Plan,
                cache: _StaticKVCache, index: int, decode: _DecodeInputs | None) -> torch.Tensor:
        """Write this pass's keys/values into the cache and attend; returns ``[tokens, heads * dim]``."""
        keys, values = cache.keys[index], cache.values[index]
        parts = []
        rows = plan.decode_rows
        if rows:
            keys.view(-1, self.head_dim).index_copy_(0, decode.cache_index, key[:rows].reshape(-1, self.head_dim))
            values.view(-1, self.head_dim).index_copy_(0, decode.cache_index, value[:rows].reshape(-1, self.head_dim))
            parts.append(self._decode_attention(query[:rows], keys, values, plan, decode))
        for prefill in plan.prefills:
            parts.append(self._prefill_attention(query, key, value, prefill, keys, values))
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _prefill_attention(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, prefill: _Prefill,
                           keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Causal attention of one prompt's new tokens over its reused prefix and themselves."""
        span = slice(prefill.start, prefill.start + prefill.new)
        k, v = key[span].transpose(0, 1), value[span].transpose(0, 1)
        keys[prefill.slot, :, prefill.reused : prefill.length] = k
        values[prefill.slot, :, prefill.reused : prefill.length] = v
        q = query[span].transpose(0, 1)[None]
        if prefill.mask is None:
            out = F.scaled_dot_product_attention(q, k[None], v[None], is_causal=True, enable_gqa=True,
                                                 scale=self.scaling)
        else:
            row = slice(prefill.slot, prefill.slot + 1)
            out = F.scaled_dot_product_attention(q, keys[row, :, : prefill.length], values[row, :, : prefill.length],
                                                 attn_mask=prefill.mask, enable_gqa=True, scale=self.scaling)
        return out[0].transpose(0, 1).reshape(prefill.new, -1)

    def _decode_attention(self, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, plan: _Plan,
                          decode: _DecodeInputs) -> torch.Tensor:
        """One query per row against its cache row; the query heads sharing a KV head are packed as
        that head's queries, so no KV head is repeated. fp32 goes through `_matmul_attention`; other
        dtypes through SDPA, which keeps the scores in fp32."""
        rows, width = plan.decode_rows, plan.width
        grouped = query.unflatten(1, (self.kv_heads, self.heads // self.kv_heads))
        keys, values = keys[:rows, :, :width], values[:rows, :, :width]
        if query.dtype == torch.float32:
            out = _matmul_attention(grouped, keys, values, decode.bias, self.scaling)
        else:
            out = F.scaled_dot_product_attention(grouped, keys, values, attn_mask=decode.bias, scale=self.scaling)
        return out.reshape(rows, -1)


def _matmul_attention(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, bias: torch.Tensor,
                      scale: float) -> torch.Tensor:
    """``softmax((query * scale) @ keys^T + bias) @ values`` for ``[rows, heads, queries, dim]`` queries
    against ``[rows, heads, columns, dim]`` keys/values: two batched matmuls and a softmax.

    For a few queries per head this is ~10-15% faster on CPU than SDPA's flash kernel, and a row's
    bits depend neither on the other rows nor on which thread computes it (the flash kernel's
    per-thread scratch buffers sit at different alignments, which changes the last bits).
    """
    scores = torch.matmul(query * scale, keys.transpose(-1, -2)).add_(bias)
    return torch.matmul(scores.softmax(dim=-1), values)


def _rotary_tables(rotary_emb: torch.nn.Module, hidden: torch.Tensor,
                   positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's cos/sin tables for ``positions``, shaped ``[tokens, 1, dim]``; the sine's first half
    is negated so that rotate-half becomes a plain half swap (sign flips are exact)."""
    cos, sin = rotary_emb(hidden[None], positions[None])
    half = sin.shape[-1] // 2
    sign = torch.ones(sin.shape[-1], dtype=sin.dtype, device=sin.device)
    sign[:half] = -1
    return cos[0, :, None, :], (sin[0] * sign)[:, None, :]


def _rotate(states: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Rotary position embedding of ``states [tokens, heads, dim]``: ``x * cos + rotate_half(x) * sin``."""
    cos, signed_sin = rotary
    half = states.shape[-1] // 2
    swapped = torch.cat((states[..., half:], states[..., :half]), dim=-1)
    return states * cos + swapped * signed_sin


# ---------------------------------------------------------------------------------------------------
# sampling
# ---------------------------------------------------------------------------------------------------


def sample_rows(logits: torch.Tensor, requests: list[_Request]) -> tuple[list[int], list[float]]:
    """Pick one token per row of ``logits [rows, vocab]`` and its logprob under the row's temperature.

    Greedy rows (temperature 0) take the argmax and report temperature-1 logprobs. Sampled rows draw
    one uniform number from their own generator and invert the CDF of their (top-p truncated)
    distribution. The normaliser is a float64 running sum (a sequential scan per row): unlike a
    parallel reduction, its bits do not depend on how many rows the batch has.
    """
    scaled = logits.float()
    temperatures = [r.sampling.temperature or 1.0 for r in requests]
    if any(t != 1.0 for t in temperatures):
        scaled = scaled / torch.tensor(temperatures, dtype=scaled.dtype, device=scaled.device)[:, None]
    peak, tokens = scaled.max(dim=-1, keepdim=True)
    weights = (scaled - peak).exp_()
    cdf = weights.double().cumsum(dim=-1)
    sampled = [i for i, r in enumerate(requests) if r.sampling.temperature > 0]
    if len(sampled) == len(requests):
        tokens = _draw(weights, cdf, requests)[:, None]
    elif sampled:
        tokens[sampled] = _draw(weights[sampled], cdf[sampled], [requests[i] for i in sampled])[:, None]
    chosen = (scaled.gather(1, tokens) - peak).double() - cdf[:, -1:].log()
    return tokens[:, 0].tolist(), chosen[:, 0].tolist()


def _draw(weights: torch.Tensor, cdf: torch.Tensor, requests: list[_Request]) -> torch.Tensor:
    """Sample rows of unnormalised ``weights [rows, vocab]`` (running sums ``cdf``) with one uniform
    draw per request from its own generator.

    Rows with ``top_p < 1`` invert the CDF of their sorted, truncated distribution; the others the
    CDF in vocabulary order. Each row's choice depends only on its own weights and draw.
    """
    uniform = torch.cat([torch.rand(1, generator=r.generator, device=r.generator.device) for r in requests])
    uniform = uniform.to(cdf.device, torch.float64)
    nucleus = [i for i, r in enumerate(requests) if r.sampling.top_p < 1.0]
    if not nucleus:
        return _invert_cdf(cdf, uniform)
    tokens = torch.empty(len(requests), dtype=torch.long, device=cdf.device)
    full = [i for i, r in enumerate(requests) if r.sampling.top_p >= 1.0]
    if full:
        tokens[full] = _invert_cdf(cdf[full], uniform[full])
    ordered, order = weights[nucleus].sort(dim=-1, descending=True, stable=True)
    ordered = ordered.double()
    running = ordered.cumsum(dim=-1)
    top_p = torch.tensor([requests[i].sampling.top_p for i in nucleus], dtype=torch.float64, device=cdf.device)
    kept = ordered.masked_fill(running - ordered >= top_p[:, None] * running[:, -1:], 0.0)
    tokens[nucleus] = order.gather(1, _invert_cdf(kept.cumsum(dim=-1), uniform[nucleus])[:, None])[:, 0]
    return tokens


def _invert_cdf(cdf: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """Per row, the first index whose running sum exceeds ``uniform`` x the row's total."""
    picked = torch.searchsorted(cdf, (uniform * cdf[:, -1])[:, None], right=True)
    return picked.clamp_(max=cdf.shape[-1] - 1)[:, 0]


# ---------------------------------------------------------------------------------------------------
# prefix reuse
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Source:
    """Where the longest cached prefix of an arriving prompt lives."""

    cache: _StaticKVCache
    row: int
    length: int
    parked: bool


class _ParkedRows:
    """Keys/values of finished requests (prompt + output), kept for later prompts that start with them.

    An agent's next turn re-sends its whole conversation, so the prompt of turn k+1 starts with the
    prompt and output of turn k: with that row parked, the turn's prefill runs only the new tokens
    (tool output, chat template). Rows are evicted least recently used; a parked row that a new prompt
    extends completely is released (the new request is parked in its place when it finishes).
    """

    def __init__(self, store: _StaticKVCache, rows: int) -> None:
        self.store = store
        self.tokens: list[list[int] | None] = [None] * rows
        self._used = [0] * rows
        self._clock = 0

    def park(self, cache: _StaticKVCache, slot: int, tokens: list[int]) -> None:
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


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _shared_prefix(a: list[int], b: list[int], limit: int) -> int:
    """Length of the common prefix of ``a`` and ``b``, at most ``limit``."""
    limit = min(limit, len(a), len(b))
    for index in range(limit):
        if a[index] != b[index]:
            return index
    return limit


# ---------------------------------------------------------------------------------------------------
# the engine
# ---------------------------------------------------------------------------------------------------


class HFEngine:
    """A transformers causal LM behind the `Engine` protocol, batched across all callers.

    ``max_batch_size`` rows decode together; more requests wait in a FIFO queue. ``max_model_len``
    caps prompt + output (a request reaching it ends with ``length``; a prompt at or past it returns
    no tokens with ``length``). ``max_prefill_tokens`` caps the prompt tokens computed in one pass
    (at least one request is always admitted), bounding how long running rows wait for a prefill.

    Prefix reuse: an arriving prompt's longest prefix (at least 8 tokens) already held by a running
    row or by one of ``prefix_cache_rows`` parked finished rows (default ``max_batch_size``; 0 turns
    parking off) is copied instead of recomputed, so an episode's next turn, or a GRPO group's shared
    prompt, is prefilled once. A prompt that shares more with one admitted in the same pass waits for
    the next pass to reuse it.
    """

    def __init__(self, model_folder: Path | str, *, dtype: str | torch.dtype = "float32", max_model_len: int,
                 max_batch_size: int, device: str | torch.device | None = None,
                 eos_token_ids: list[int] | None = None, max_prefill_tokens: int = 2048,
                 prefix_cache_rows: int | None = None, seed: int = 0) -> None:
        from transformers import AutoModelForCausalLM

        if isinstance(dtype, str) and dtype not in _DTYPES:
            raise ValueError(f"dtype '{dtype}' is not one of {sorted(_DTYPES)}")
        torch_dtype = _DTYPES[dtype] if isinstance(dtype, str) else dtype
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = AutoModelForCausalLM.from_pretrained(model_folder, dtype=torch_dtype).to(self.device).eval()
        _check_supported(self.model.config)
        self.max_model_len, self.max_batch_size = max_model_len, max_batch_size
        self.max_prefill_tokens = max_prefill_tokens
        self.eos_token_ids = frozenset(eos_token_ids or _eos_ids(self.model))
        self.stats = EngineStats()
        use_onednn = self.device.type == "cpu" and torch_dtype == torch.float32 and torch.backends.mkldnn.is_available()
        self._packed_rows = max_batch_size if use_onednn else None
        with torch.inference_mode():
            self._decoder = _PackedDecoder(self.model, self._packed_rows)
        self._cache = _new_cache(self.model, max_batch_size, max_model_len, torch_dtype, self.device)
        parked = max_batch_size if prefix_cache_rows is None else prefix_cache_rows
        store = _new_cache(self.model, max(parked, 1), max_model_len, torch_dtype, self.device)
        self._parked = _ParkedRows(store, parked)
        self._seeds = random.Random(seed)
        self._lock = threading.Condition()
        self._queue: deque[_Request] = deque()
        self._active: list[_Request] = []
        self._admitting: list[_Request] = []
        """Requests taken off the queue for the pass being computed (not active yet)."""
        self._in_flight = 0
        self._closing = False
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._serve, name="hf-engine-scheduler", daemon=True)
        self._thread.start()

    # ---- the caller's side (event loop thread) ------------------------------------------------

    async def generate(self, prompt_ids: list[int], sampling: SamplingParams) -> Generation:
        """Queue one request and await its result; safe to await from many tasks at once."""
        _validate(prompt_ids, sampling)
        budget = min(sampling.max_new_tokens, self.max_model_len - len(prompt_ids))
        if budget <= 0:
            return Generation(token_ids=[], logprobs=[], finish_reason="length")
        loop = asyncio.get_running_loop()
        seed = self._seeds.getrandbits(63) if sampling.seed is None else sampling.seed
        generator = torch.Generator(device=self.device).manual_seed(seed)
        request = _Request(list(prompt_ids), sampling, budget, generator, loop, loop.create_future())
        with self._lock:
            if self._closing or self._failure is not None:
                raise EngineClosedError("the hf engine is closed") from self._failure
            self._queue.append(request)
            self._in_flight += 1
            self._lock.notify()
        try:
            return await request.future
        except asyncio.CancelledError:
            request.cancelled = True
            raise

    def load_weights(self, weights: Mapping[str, torch.Tensor] | Path) -> None:
        """Copy new weights (a state dict, or a folder of ``*.safetensors``) into the model and re-pack."""
        state = _read_folder(Path(weights)) if isinstance(weights, (str, Path)) else weights
        with self._lock:
            if self._in_flight:
                raise EngineBusyError(
                    f"load_weights with {self._in_flight} request(s) in flight: await every episode first"
                )
            _load_state(self.model, state)
            with torch.inference_mode():
                self._decoder = _PackedDecoder(self.model, self._packed_rows)
            self._parked.clear()

    def clear_prefix_cache(self) -> None:
        """Forget the parked rows (between benchmark runs, say); needs no request in flight."""
        with self._lock:
            if self._in_flight:
                raise EngineBusyError(f"clear_prefix_cache with {self._in_flight} request(s) in flight")
            self._parked.clear()

    async def close(self) -> None:
        """Stop the scheduler; requests not finished yet return what they have with ``abort``."""
        with self._lock:
            self._closing = True
            self._lock.notify()
        await asyncio.to_thread(self._thread.join)

    # ---- the scheduler thread -----------------------------------------------------------------

    def _serve(self) -> None:
        """The scheduler loop. A failure is handed to every waiting caller, then re-raised."""
        try:
            with torch.inference_mode():
                while True:
                    self._drop_cancelled()
                    arrivals = self._next_arrivals()
                    if arrivals is None:
                        break
                    if arrivals or self._active:
                        self._pass(arrivals)
        except BaseException as error:
            self._failure = error
            self._finish_all("abort", error)
            raise
        self._finish_all("abort")

    def _next_arrivals(self) -> list[tuple[_Request, _Source | None]] | None:
        """Queued requests to admit in the next pass, with their reusable prefixes (sleeping while
        idle); None once closing. Requests not admitted go back to the front of the queue."""
        candidates = self._take_queued()
        if candidates is None:
            return None
        arrivals: list[tuple[_Request, _Source | None]] = []
        new_tokens = 0
        for request in candidates:
            source = self._find_source(request.prompt_ids)
            new = len(request.prompt_ids) - (source.length if source else 0)
            if arrivals and (new_tokens + new > self.max_prefill_tokens or _waits_for(request, source, arrivals)):
                break
            arrivals.append((request, source))
            new_tokens += new
        if len(arrivals) < len(candidates):
            with self._lock:
                self._queue.extendleft(reversed(candidates[len(arrivals) :]))
        return arrivals

    def _take_queued(self) -> list[_Request] | None:
        """Pop as many queued requests as there are free slots (waiting while idle); None once closing."""
        with self._lock:
            while not self._queue and not self._active and not self._closing:
                self._lock.wait()
            if self._closing:
                return None
            taken: list[_Request] = []
            while self._queue and len(self._active) + len(taken) < self.max_batch_size:
                request = self._queue.popleft()
                if request.cancelled:
                    self._in_flight -= 1
                else:
                    taken.append(request)
        return taken

    def _find_source(self, prompt: list[int]) -> _Source | None:
        """The running or parked row holding the longest prefix of ``prompt`` (leaving one token to run)."""
        best: _Source | None = None
        longest = _MIN_REUSED_TOKENS - 1
        for slot, request in enumerate(self._active):
            held = request.prompt_ids + request.token_ids
            shared = _shared_prefix(prompt, held, min(len(prompt) - 1, request.cached))
            if shared > longest:
                best, longest = _Source(self._cache, slot, shared, parked=False), shared
        for row, tokens in enumerate(self._parked.tokens):
            if tokens is not None and (shared := _shared_prefix(prompt, tokens, len(prompt) - 1)) > longest:
                best, longest = _Source(self._parked.store, row, shared, parked=True), shared
        return best

    def _pass(self, arrivals: list[tuple[_Request, _Source | None]]) -> None:
        """One forward for every running row plus the arrivals' prompts, then sampling and retirement."""
        started = time.perf_counter()
        self._admitting = [request for request, _ in arrivals]
        running = len(self._active)
        ids, positions, plan = self._plan(arrivals)
        last = [*range(running), *(p.start + p.new - 1 for p in plan.prefills)]
        logits = self._decoder.forward(ids, positions, plan, self._cache, torch.tensor(last, device=self.device))
        for request in self._active:
            request.cached += 1
        for request, _ in arrivals:
            request.cached = len(request.prompt_ids)
        self._active.extend(self._admitting)
        self._admitting = []
        self._append_samples(logits)
        self._count(running, plan.prefills, time.perf_counter() - started)

    def _plan(self, arrivals: list[tuple[_Request, _Source | None]]) -> tuple[torch.Tensor, torch.Tensor, _Plan]:
        """Packed token ids and positions for a pass, and where each part reads and writes the cache;
        copies reused prefixes into the arrivals' slots."""
        running = self._active
        ids = [r.token_ids[-1] for r in running]
        positions = [r.cached for r in running]
        width = _round_up(max(positions, default=-1) + 1, _WIDTH_MULTIPLE)
        longest = max([width] + [len(r.prompt_ids) for r, _ in arrivals])
        self._cache.ensure(len(running) + len(arrivals), longest)
        prefills = []
        for slot, (request, source) in enumerate(arrivals, start=len(running)):
            prompt = request.prompt_ids
            reused = self._reuse(source, slot)
            mask = None
            if reused:
                mask = torch.ones(len(prompt) - reused, len(prompt), dtype=torch.bool, device=self.device)
                mask = mask.tril_(diagonal=reused)
            prefills.append(_Prefill(slot, len(ids), reused, len(prompt), mask))
            ids.extend(prompt[reused:])
            positions.extend(range(reused, len(prompt)))
        position_tensor = torch.tensor(positions, device=self.device)
        plan = _Plan(len(running), position_tensor[: len(running)], width, prefills)
        return torch.tensor(ids, device=self.device), position_tensor, plan

    def _reuse(self, source: _Source | None, slot: int) -> int:
        """Copy ``source``'s prefix into ``slot``; returns its length (0 without a source)."""
        if source is None:
            return 0
        self._cache.copy_row(source.cache, source.row, slot, source.length)
        if source.parked:
            parked = self._parked.tokens[source.row]
            if parked is not None and source.length == len(parked):
                self._parked.release(source.row)
            else:
                self._parked.touch(source.row)
        return source.length

    def _count(self, running: int, prefills: list[_Prefill], seconds: float) -> None:
        """Record one pass in the stats."""
        stats = self.stats
        stats.passes += 1
        stats.busy_seconds += seconds
        if running:
            stats.decode_steps += 1
            stats.rows_per_step[running] += 1
        if prefills:
            stats.prefills += len(prefills)
            stats.prompt_tokens += sum(p.length for p in prefills)
            stats.reused_prompt_tokens += sum(p.reused for p in prefills)
            stats.prefill_seconds += seconds

    def _append_samples(self, logits: torch.Tensor) -> None:
        """Sample one token per active row, append it and retire the rows that are done."""
        rows = self._active
        tokens, logprobs = sample_rows(logits, rows)
        self.stats.generated_tokens += len(tokens)
        done: list[tuple[int, FinishReason]] = []
        for slot, (request, token, logprob) in enumerate(zip(rows, tokens, logprobs)):
            request.token_ids.append(token)
            request.logprobs.append(logprob)
            if token in self.eos_token_ids:
                done.append((slot, "stop"))
            elif len(request.token_ids) >= request.max_new_tokens:
                done.append((slot, "length"))
        for slot, reason in reversed(done):
            self._retire(slot, reason)

    def _drop_cancelled(self) -> None:
        """Free the slots of requests whose callers stopped waiting."""
        for slot in reversed(range(len(self._active))):
            if self._active[slot].cancelled:
                self._retire(slot, "abort")

    def _retire(self, slot: int, reason: FinishReason) -> None:
        """Deliver the request in ``slot`` and fill the slot with the last active row."""
        request = self._active[slot]
        if reason != "abort":
            self._parked.park(self._cache, slot, (request.prompt_ids + request.token_ids)[: request.cached])
        last = self._active.pop()
        if last is not request:
            self._cache.copy_row(self._cache, len(self._active), slot, last.cached)
            self._active[slot] = last
        self._deliver(request, reason)

    def _deliver(self, request: _Request, reason: FinishReason, error: BaseException | None = None) -> None:
        """Hand the result (or the scheduler's failure) to the request's event loop."""
        self.stats.finish_reasons[reason] += 1
        with self._lock:
            self._in_flight -= 1
        if request.loop.is_closed():
            return
        if error is not None:
            request.loop.call_soon_threadsafe(_set_exception, request.future, error)
            return
        result = Generation(token_ids=request.token_ids, logprobs=request.logprobs, finish_reason=reason)
        request.loop.call_soon_threadsafe(_set_result, request.future, result)

    def _finish_all(self, reason: FinishReason, error: BaseException | None = None) -> None:
        """End every queued and active request (on close, or with the scheduler's failure)."""
        with self._lock:
            self._closing = True
            pending = [*self._active, *self._admitting, *self._queue]
            self._active, self._admitting, self._queue = [], [], deque()
        for request in pending:
            self._deliver(request, reason, error)


def _waits_for(request: _Request, source: _Source | None, admitted: list[tuple[_Request, _Source | None]]) -> bool:
    """Whether ``request`` shares a longer prefix with a prompt admitted in this pass than with any
    cached row: it then waits one pass and reuses that prompt's keys/values."""
    reusable = max(source.length if source else 0, _MIN_REUSED_TOKENS - 1)
    limit = len(request.prompt_ids) - 1
    return any(_shared_prefix(request.prompt_ids, other.prompt_ids, limit) > reusable for other, _ in admitted)


def _set_result(future: asyncio.Future[Generation], result: Generation) -> None:
    if not future.done():
        future.set_result(result)


def _set_exception(future: asyncio.Future[Generation], error: BaseException) -> None:
    if not future.done():
        future.set_exception(EngineClosedError(f"the hf engine's scheduler failed: {error!r}"))


def _validate(prompt_ids: list[int], sampling: SamplingParams) -> None:
    """Reject requests the scheduler cannot serve, with a message that says why."""
    if not prompt_ids:
        raise ValueError("generate needs a non-empty prompt")
    if sampling.max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {sampling.max_new_tokens}")
    if sampling.temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {sampling.temperature}")
    if not 0 < sampling.top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {sampling.top_p}")


def _check_supported(config) -> None:
    """Only Llama-style decoder layers with full attention are driven here."""
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"the hf engine drives {sorted(SUPPORTED_MODEL_TYPES)} models; '{config.model_type}' is not one of them"
        )
    if config.model_type != "llama" and any(kind != "full_attention" for kind in config.layer_types):
        raise ValueError("the hf engine does not support sliding-window attention layers")


def _eos_ids(model) -> list[int]:
    """EOS ids from the generation config (an int or a list), else the model config."""
    eos = model.generation_config.eos_token_id
    if eos is None:
        eos = model.config.eos_token_id
    return [eos] if isinstance(eos, int) else list(eos)


def _new_cache(model, max_rows: int, max_len: int, dtype: torch.dtype, device: torch.device) -> _StaticKVCache:
    """A static cache shaped for this model's attention layers."""
    config = model.config
    head_dim = model.model.layers[0].self_attn.head_dim
    return _StaticKVCache(config.num_hidden_layers, config.num_key_value_heads, head_dim, max_rows, max_len,
                          dtype, device)


def _read_folder(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of the ``*.safetensors`` files in a checkpoint folder."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors weights in {folder}")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(file))
    return state


def _load_state(model, state: Mapping[str, torch.Tensor]) -> None:
    """Copy ``state`` into the model's parameters in place; every weight must be covered."""
    missing, unexpected = model.load_state_dict(dict(state), strict=False)
    tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
    missing = [key for key in missing if key not in tied]
    if missing or unexpected:
        raise ValueError(f"weights do not fit the model: missing={missing[:5]} unexpected={unexpected[:5]}")
