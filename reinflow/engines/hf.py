"""The `hf` engine: a transformers causal LM serving many concurrent episodes with continuous batching.

One scheduler thread owns the model. ``generate`` (awaited by any number of asyncio tasks) queues a
request and awaits a future; the scheduler thread loops over *passes*. A pass is one forward over a
packed ``[tokens, hidden]`` batch holding

- one token for every active row (its last sampled token, at its own position: the decode part), and
- the whole prompt of every request admitted in this pass (up to ``max_batch_size`` rows in all and
  ``max_prefill_tokens`` prompt tokens a pass: the prefill part),

so a request joins the running batch in the pass after it arrives, and a prefill streams the
weights once together with the decode rows instead of in a pass of its own. Every row then samples
one token (per-request temperature, top-p and ``torch.Generator``); a finished row leaves at once
(its result goes back to its event loop with ``loop.call_soon_threadsafe``) and the last active row's
KV cache moves into its slot, so the active rows are always slots ``0..n-1``.

Why not ``transformers.generation.continuous_batching``: in 5.23 its sampling parameters are one
``GenerationConfig`` for the whole manager (no per-request temperature/top-p), it has one global seed
(a request's sample depends on its batch) and its logprobs come after top-p truncation; and on CPU it
runs attention over the whole packed batch with one dense mask. So the loop is our own.

Speed on CPU (see ``bench/rollout_engine.py``): the decode step is bound by streaming the weights
through GEMMs with 16-ish rows, where MKL's ``nn.Linear`` re-packs every weight on every call. Here
q/k/v and gate/up are fused and every weight (lm_head included) is packed once for oneDNN
(``torch.ops.mkldnn._reorder_linear_weight``); elsewhere (GPU, non-fp32) the fused weights go
through ``F.linear``. Norms, embeddings, rotary tables and activations are the model's own modules.
The KV cache is a static buffer per layer ``[rows, kv_heads, capacity, head_dim]`` written in place
(``index_copy_``); it grows by doubling (up to ``max_batch_size`` x ``max_model_len``). The lm_head
runs on the last position of each sequence only. Supported: ``llama``, ``qwen2`` and ``qwen3``
(full attention).

Logprobs are ``log_softmax(logits / temperature)`` at the sampled token, before top-p truncation
(temperature 0 = greedy, reported under temperature 1): what a trainer recomputes with a full fp32
forward pass over prompt + output (``tests/test_hf_engine.py`` bounds the difference).

Weights: ``load_weights`` copies new weights into the model and re-packs them; it refuses while any
request is in flight (`EngineBusyError`): a rollout stage awaits all its episodes first.
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

SUPPORTED_MODEL_TYPES = frozenset({"llama", "qwen2", "qwen3"})
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_MIN_CAPACITY = 256


class EngineClosedError(RuntimeError):
    """``generate`` was called on an engine that is closed (or whose scheduler failed)."""


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

    Packed once for oneDNN when ``packed_rows`` is given (CPU fp32), else a plain ``F.linear``.
    """

    def __init__(self, linears: list[torch.nn.Linear], packed_rows: int | None) -> None:
        weight = torch.cat([m.weight.detach() for m in linears]) if len(linears) > 1 else linears[0].weight.detach()
        biases = [m.bias for m in linears]
        self.bias = None
        if any(b is not None for b in biases):
            self.bias = torch.cat([m.bias.detach() if m.bias is not None else m.weight.new_zeros(m.out_features)
                                   for m in linears])
        self.packed = packed_rows is not None
        self.weight = torch.ops.mkldnn._reorder_linear_weight(weight, packed_rows) if self.packed else weight

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed:
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)


@dataclass
class _Plan:
    """What one pass computes. Token order: ``decode_rows`` decode tokens, then each prefill's prompt."""

    decode_rows: int
    decode_positions: torch.Tensor
    """[decode_rows] the column each decode token writes (= its row's cached length)."""
    width: int
    """Columns the decode rows attend over (max position + 1)."""
    prefills: list[tuple[int, int, int]]
    """(slot, first token index in the pass, prompt length) per admitted request."""


class _StaticKVCache:
    """Per-layer key and value buffers ``[rows, kv_heads, capacity, head_dim]``, written in place."""

    def __init__(self, layers: int, kv_heads: int, head_dim: int, max_rows: int, max_len: int,
                 dtype: torch.dtype, device: torch.device) -> None:
        self._shape = (kv_heads, head_dim)
        self._max_rows, self._max_len = max_rows, max_len
        self._dtype, self._device = dtype, device
        self.keys = [self._empty(1, min(_MIN_CAPACITY, max_len)) for _ in range(layers)]
        self.values = [self._empty(1, min(_MIN_CAPACITY, max_len)) for _ in range(layers)]

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

    def move(self, source: int, target: int, length: int) -> None:
        """Copy the first ``length`` columns of row ``source`` into row ``target``."""
        for buffers in (self.keys, self.values):
            for buffer in buffers:
                buffer[target, :, :length] = buffer[source, :, :length]


class _PackedDecoder:
    """The model's forward pass over a packed batch of mixed prefill and decode tokens.

    Uses the model's own embedding, norms, rotary tables and activation; the linear layers are
    `_Linear`s built from the model's weights (rebuild after changing them).
    """

    def __init__(self, model, packed_rows: int | None) -> None:
        self.model = model
        backbone = model.model
        attention = backbone.layers[0].self_attn
        config = model.config
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim, self.scaling = attention.head_dim, attention.scaling
        self.qk_norm = config.model_type == "qwen3"
        self.layers = [self._pack_layer(layer, packed_rows) for layer in backbone.layers]
        self.lm_head = _Linear([model.lm_head], packed_rows)

    @staticmethod
    def _pack_layer(layer, packed_rows: int | None) -> dict[str, _Linear]:
        attention, mlp = layer.self_attn, layer.mlp
        return {
            "qkv": _Linear([attention.q_proj, attention.k_proj, attention.v_proj], packed_rows),
            "o": _Linear([attention.o_proj], packed_rows),
            "gate_up": _Linear([mlp.gate_proj, mlp.up_proj], packed_rows),
            "down": _Linear([mlp.down_proj], packed_rows),
        }

    def forward(self, ids: torch.Tensor, positions: torch.Tensor, plan: _Plan, cache: _StaticKVCache,
                last: torch.Tensor) -> torch.Tensor:
        """Logits ``[len(last), vocab]`` at token indices ``last`` of the packed ``ids [tokens]``."""
        backbone = self.model.model
        hidden = backbone.embed_tokens(ids)
        cos, sin = backbone.rotary_emb(hidden[None], positions[None])
        rotary = (cos[0, :, None, :], sin[0, :, None, :])
        flat_index = cache.flat_index(plan.decode_positions) if plan.decode_rows else None
        for index, (layer, linears) in enumerate(zip(backbone.layers, self.layers)):
            hidden = self._layer(hidden, layer, linears, rotary, plan, cache, index, flat_index)
        return self.lm_head(backbone.norm(hidden[last]))

    def _layer(self, hidden: torch.Tensor, layer, linears: dict[str, _Linear], rotary, plan: _Plan,
               cache: _StaticKVCache, index: int, flat_index: torch.Tensor | None) -> torch.Tensor:
        """One decoder layer (pre-norm attention and gated MLP, residuals) on ``hidden [tokens, dim]``."""
        tokens = hidden.shape[0]
        qkv = linears["qkv"](layer.input_layernorm(hidden))
        q_size, kv_size = self.heads * self.head_dim, self.kv_heads * self.head_dim
        query, key, value = qkv.split([q_size, kv_size, kv_size], dim=-1)
        query = query.view(tokens, self.heads, self.head_dim)
        key = key.view(tokens, self.kv_heads, self.head_dim)
        value = value.view(tokens, self.kv_heads, self.head_dim)
        if self.qk_norm:
            query, key = layer.self_attn.q_norm(query), layer.self_attn.k_norm(key)
        query, key = _rotate(query, rotary), _rotate(key, rotary)
        attended = self._attend(query, key, value, plan, cache, index, flat_index)
        hidden = hidden + linears["o"](attended)
        gate, up = linears["gate_up"](layer.post_attention_layernorm(hidden)).chunk(2, dim=-1)
        return hidden + linears["down"](layer.mlp.act_fn(gate) * up)

    def _attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, plan: _Plan,
                cache: _StaticKVCache, index: int, flat_index: torch.Tensor | None) -> torch.Tensor:
        """Write this pass's keys/values into the cache and attend; returns ``[tokens, heads * dim]``."""
        keys, values = cache.keys[index], cache.values[index]
        parts = []
        rows = plan.decode_rows
        if rows:
            keys.view(-1, self.head_dim).index_copy_(0, flat_index, key[:rows].reshape(-1, self.head_dim))
            values.view(-1, self.head_dim).index_copy_(0, flat_index, value[:rows].reshape(-1, self.head_dim))
            parts.append(self._decode_attention(query[:rows], keys, values, plan))
        for slot, start, length in plan.prefills:
            span = slice(start, start + length)
            k, v = key[span].transpose(0, 1), value[span].transpose(0, 1)
            keys[slot, :, :length] = k
            values[slot, :, :length] = v
            q = query[span].transpose(0, 1)[None]
            out = F.scaled_dot_product_attention(q, k[None], v[None], is_causal=True, enable_gqa=True,
                                                 scale=self.scaling)
            parts.append(out[0].transpose(0, 1).reshape(length, -1))
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _decode_attention(self, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                          plan: _Plan) -> torch.Tensor:
        """One query per row against its cache row; the query heads sharing a KV head are packed as
        that head's queries, so no KV head is repeated."""
        rows, width = plan.decode_rows, plan.width
        grouped = query.view(rows, self.kv_heads, self.heads // self.kv_heads, self.head_dim)
        columns = torch.arange(width, device=query.device)
        mask = (columns[None, :] <= plan.decode_positions[:, None])[:, None, None, :]
        out = F.scaled_dot_product_attention(grouped, keys[:rows, :, :width], values[:rows, :, :width],
                                             attn_mask=mask, scale=self.scaling)
        return out.reshape(rows, -1)


def _rotate(states: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Rotary position embedding of ``states [tokens, heads, dim]`` (the model's rotate-half form)."""
    cos, sin = rotary
    half = states.shape[-1] // 2
    rotated = torch.cat((-states[..., half:], states[..., :half]), dim=-1)
    return states * cos + rotated * sin


# ---------------------------------------------------------------------------------------------------
# sampling
# ---------------------------------------------------------------------------------------------------


def sample_rows(logits: torch.Tensor, requests: list[_Request]) -> tuple[list[int], list[float]]:
    """Pick one token per row of ``logits [rows, vocab]`` and its logprob under the row's temperature.

    Greedy rows (temperature 0) take the argmax and report temperature-1 logprobs. Sampled rows draw
    one uniform number from their own generator and invert the CDF of their (top-p truncated)
    distribution, so a row's draw never depends on the other rows in the batch.
    """
    scaled = logits.float()
    temperatures = [r.sampling.temperature or 1.0 for r in requests]
    if any(t != 1.0 for t in temperatures):
        scaled = scaled / torch.tensor(temperatures, dtype=scaled.dtype, device=scaled.device)[:, None]
    log_total = torch.logsumexp(scaled, dim=-1, keepdim=True)
    tokens = scaled.argmax(dim=-1)
    sampled = [i for i, r in enumerate(requests) if r.sampling.temperature > 0]
    if sampled:
        probs = (scaled[sampled] - log_total[sampled]).exp_()
        tokens[sampled] = _draw(probs, [requests[i] for i in sampled])
    chosen = scaled.gather(1, tokens[:, None]) - log_total
    return tokens.tolist(), chosen[:, 0].tolist()


def _draw(probs: torch.Tensor, requests: list[_Request]) -> torch.Tensor:
    """Inverse-CDF sampling of ``probs [rows, vocab]`` with one uniform draw per request."""
    top_p = [r.sampling.top_p for r in requests]
    order = None
    if min(top_p) < 1.0:
        probs, order = probs.sort(dim=-1, descending=True)
        limit = torch.tensor(top_p, dtype=probs.dtype, device=probs.device)[:, None]
        probs = probs.masked_fill(probs.cumsum(-1) - probs >= limit, 0.0)
    cdf = probs.cumsum(dim=-1)
    uniform = torch.cat([torch.rand(1, generator=r.generator, device=r.generator.device) for r in requests])
    picked = torch.searchsorted(cdf, (uniform.to(cdf.device) * cdf[:, -1])[:, None], right=True)
    picked = picked.clamp_(max=probs.shape[-1] - 1)
    return picked[:, 0] if order is None else order.gather(1, picked)[:, 0]


# ---------------------------------------------------------------------------------------------------
# the engine
# ---------------------------------------------------------------------------------------------------


class HFEngine:
    """A transformers causal LM behind the `Engine` protocol, batched across all callers.

    ``max_batch_size`` rows decode together; more requests wait in a FIFO queue. ``max_model_len``
    caps prompt + output (a request reaching it ends with ``length``; a prompt at or past it returns
    no tokens with ``length``). ``max_prefill_tokens`` caps the prompt tokens admitted in one pass
    (at least one request is always admitted), bounding how long running rows wait for a prefill.
    """

    def __init__(self, model_folder: Path | str, *, dtype: str | torch.dtype = "float32", max_model_len: int,
                 max_batch_size: int, device: str | torch.device | None = None,
                 eos_token_ids: list[int] | None = None, max_prefill_tokens: int = 2048, seed: int = 0) -> None:
        from transformers import AutoModelForCausalLM

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
        self._seeds = random.Random(seed)
        self._lock = threading.Condition()
        self._queue: deque[_Request] = deque()
        self._active: list[_Request] = []
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
                while (arrivals := self._next_arrivals()) is not None:
                    self._drop_cancelled()
                    if arrivals or self._active:
                        self._pass(arrivals)
        except BaseException as error:
            self._failure = error
            self._finish_all("abort", error)
            raise
        self._finish_all("abort")

    def _next_arrivals(self) -> list[_Request] | None:
        """Queued requests to admit in the next pass (sleeping while idle); None once closing."""
        with self._lock:
            while not self._queue and not self._active and not self._closing:
                self._lock.wait()
            if self._closing:
                return None
            arrivals: list[_Request] = []
            tokens = 0
            while self._queue and len(self._active) + len(arrivals) < self.max_batch_size:
                request = self._queue[0]
                if arrivals and tokens + len(request.prompt_ids) > self.max_prefill_tokens:
                    break
                self._queue.popleft()
                if request.cancelled:
                    self._in_flight -= 1
                    continue
                arrivals.append(request)
                tokens += len(request.prompt_ids)
        return arrivals

    def _pass(self, arrivals: list[_Request]) -> None:
        """One forward for every running row plus the arrivals' prompts, then sampling and retirement."""
        started = time.perf_counter()
        running = len(self._active)
        ids, positions, plan = self._plan(arrivals)
        last = torch.tensor(list(range(running)) + [start + length - 1 for _, start, length in plan.prefills],
                            device=self.device)
        logits = self._decoder.forward(ids, positions, plan, self._cache, last)
        for request in self._active:
            request.cached += 1
        for request in arrivals:
            request.cached = len(request.prompt_ids)
        self._active.extend(arrivals)
        self._append_samples(logits)
        self._count(running, arrivals, time.perf_counter() - started)

    def _plan(self, arrivals: list[_Request]) -> tuple[torch.Tensor, torch.Tensor, _Plan]:
        """Packed token ids and positions for a pass, and where each part reads and writes the cache."""
        running = self._active
        ids = [r.token_ids[-1] for r in running]
        positions = [r.cached for r in running]
        width = max(positions, default=-1) + 1
        prefills = []
        for slot, request in enumerate(arrivals, start=len(running)):
            prefills.append((slot, len(ids), len(request.prompt_ids)))
            ids.extend(request.prompt_ids)
            positions.extend(range(len(request.prompt_ids)))
        self._cache.ensure(len(running) + len(arrivals), max([width] + [n for _, _, n in prefills]))
        position_tensor = torch.tensor(positions, device=self.device)
        plan = _Plan(len(running), position_tensor[: len(running)], width, prefills)
        return torch.tensor(ids, device=self.device), position_tensor, plan

    def _count(self, running: int, arrivals: list[_Request], seconds: float) -> None:
        """Record one pass in the stats."""
        stats = self.stats
        stats.passes += 1
        stats.busy_seconds += seconds
        if running:
            stats.decode_steps += 1
            stats.rows_per_step[running] += 1
        if arrivals:
            stats.prefills += len(arrivals)
            stats.prompt_tokens += sum(len(r.prompt_ids) for r in arrivals)
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
        last = self._active.pop()
        if last is not request:
            self._cache.move(len(self._active), slot, last.cached)
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
            pending = [*self._active, *self._queue]
            self._active, self._queue = [], deque()
        for request in pending:
            self._deliver(request, reason, error)


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
