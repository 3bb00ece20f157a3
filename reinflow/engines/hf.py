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

The pieces: `reinflow.engines.packed_decoder` (the forward pass over a packed batch: fused, oneDNN-
packed linear layers, decode attention; its docstring says why it is fast on a CPU),
`reinflow.engines.kv_cache` (the static KV cache and the parked rows kept for prefix reuse),
`reinflow.engines.prefix_reuse` (finding and copying an arriving prompt's cached prefix),
`reinflow.engines.sampling` (per-request seeded sampling), `reinflow.engines.hf_request` (one
request's state and checks, and handing its result back to its event loop),
`reinflow.engines.engine_stats` (the scheduler's counters) and `reinflow.engines.hf_model` (the
supported models, their EOS ids, loading new weights). Supported: ``llama``, ``qwen2`` and
``qwen3`` (full attention).

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
its episodes first. Packed (CPU, fp32), the decoder layers' linear weights live only in their
packed copies: the model's own are emptied after packing, and ``load_weights`` packs the new ones
straight from the tensors it is given (``hf_model.point_linear_weights``).
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path

import torch

from reinflow.engines.base import FinishReason, Generation, SamplingParams
from reinflow.engines.engine_stats import EngineStats
from reinflow.engines.hf_model import (
    DTYPES, check_supported, decoder_linear_weights, eos_ids, load_weights_into, point_linear_weights, read_weights_folder,
)
from reinflow.engines.hf_request import Request, set_exception, set_result, validate_request
from reinflow.engines.kv_cache import WIDTH_MULTIPLE, ParkedRows, new_cache, round_up
from reinflow.engines.packed_decoder import PackedDecoder, Plan, Prefill
from reinflow.engines.prefix_reuse import PrefixSource, copy_prefix, longest_cached_prefix, waits_for
from reinflow.engines.sampling import sample_rows
from reinflow.errors import RunInterrupted


class EngineClosedError(RunInterrupted):
    """``generate`` was called on an engine that is closed (or whose scheduler failed). A rollout
    stops at it (``reinflow.rollout.runner``): it is the engine's failure, not an episode's."""


class EngineBusyError(RuntimeError):
    """``load_weights`` was called while requests were in flight."""


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

        if isinstance(dtype, str) and dtype not in DTYPES:
            raise ValueError(f"dtype '{dtype}' is not one of {sorted(DTYPES)}")
        torch_dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        # read, not memory-mapped: the mapped file would stay resident after packing replaced its weights
        self.model = AutoModelForCausalLM.from_pretrained(
            model_folder, dtype=torch_dtype, disable_mmap=True).to(self.device).eval()
        check_supported(self.model.config)
        self.max_model_len, self.max_batch_size = max_model_len, max_batch_size
        self.max_prefill_tokens = max_prefill_tokens
        self.eos_token_ids = frozenset(eos_token_ids or eos_ids(self.model))
        self.stats = EngineStats()
        use_onednn = self.device.type == "cpu" and torch_dtype == torch.float32 and torch.backends.mkldnn.is_available()
        self._packed_rows = max_batch_size if use_onednn else None
        self._linear_shapes = {name: weight.shape for name, weight in decoder_linear_weights(self.model).items()}
        self._pack()
        self._cache = new_cache(self.model, max_batch_size, max_model_len, torch_dtype, self.device)
        parked = max_batch_size if prefix_cache_rows is None else prefix_cache_rows
        store = new_cache(self.model, max(parked, 1), max_model_len, torch_dtype, self.device)
        self._parked = ParkedRows(store, parked)
        self._seeds = random.Random(seed)
        self._lock = threading.Condition()
        self._queue: deque[Request] = deque()
        self._active: list[Request] = []
        self._admitting: list[Request] = []
        """Requests taken off the queue for the pass being computed (not active yet)."""
        self._in_flight = 0
        self._closing = False
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._serve, name="hf-engine-scheduler", daemon=True)
        self._thread.start()

    # ---- the caller's side (event loop thread) ------------------------------------------------

    async def generate(self, prompt_ids: list[int], sampling: SamplingParams) -> Generation:
        """Queue one request and await its result; safe to await from many tasks at once."""
        validate_request(prompt_ids, sampling)
        budget = min(sampling.max_new_tokens, self.max_model_len - len(prompt_ids))
        if budget <= 0:
            return Generation(token_ids=[], logprobs=[], finish_reason="length")
        loop = asyncio.get_running_loop()
        seed = self._seeds.getrandbits(63) if sampling.seed is None else sampling.seed
        generator = torch.Generator(device=self.device).manual_seed(seed)
        request = Request(list(prompt_ids), sampling, budget, generator, loop, loop.create_future())
        with self._lock:
            if self._failure is not None:  # name the cause, whichever episode hears of it first
                raise EngineClosedError(f"the hf engine's scheduler failed: {self._failure!r}") from self._failure
            if self._closing:
                raise EngineClosedError("the hf engine is closed")
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
        state = read_weights_folder(Path(weights)) if isinstance(weights, (str, Path)) else weights
        with self._lock:
            if self._in_flight:
                raise EngineBusyError(
                    f"load_weights with {self._in_flight} request(s) in flight: await every episode first"
                )
            if self._packed_rows is not None:  # the linear weights are packed from ``state`` itself
                point_linear_weights(self.model, self._linear_shapes, state)
            load_weights_into(self.model, state)
            self._pack()
            self._parked.clear()

    def _pack(self) -> None:
        """Build the decoder over the model's current weights; packed, then empty the plain copies of
        the linear weights (only the packed ones are read)."""
        with torch.inference_mode():
            self._decoder = PackedDecoder(self.model, self._packed_rows)
        if self._packed_rows is not None:
            point_linear_weights(self.model, self._linear_shapes, None)

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

    def _next_arrivals(self) -> list[tuple[Request, PrefixSource | None]] | None:
        """Queued requests to admit in the next pass, with their reusable prefixes (sleeping while
        idle); None once closing. Requests not admitted go back to the front of the queue."""
        candidates = self._take_queued()
        if candidates is None:
            return None
        arrivals: list[tuple[Request, PrefixSource | None]] = []
        new_tokens = 0
        for request in candidates:
            source = self._find_source(request.prompt_ids)
            new = len(request.prompt_ids) - (source.length if source else 0)
            if arrivals and (new_tokens + new > self.max_prefill_tokens
                             or waits_for(request.prompt_ids, source, [other.prompt_ids for other, _ in arrivals])):
                break
            arrivals.append((request, source))
            new_tokens += new
        if len(arrivals) < len(candidates):
            with self._lock:
                self._queue.extendleft(reversed(candidates[len(arrivals) :]))
        return arrivals

    def _take_queued(self) -> list[Request] | None:
        """Pop as many queued requests as there are free slots (waiting while idle); None once closing."""
        with self._lock:
            while not self._queue and not self._active and not self._closing:
                self._lock.wait()
            if self._closing:
                return None
            taken: list[Request] = []
            while self._queue and len(self._active) + len(taken) < self.max_batch_size:
                request = self._queue.popleft()
                if request.cancelled:
                    self._in_flight -= 1
                else:
                    taken.append(request)
        return taken

    def _find_source(self, prompt: list[int]) -> PrefixSource | None:
        """The running or parked row holding the longest prefix of ``prompt`` (``prefix_reuse``)."""
        running = [(request.prompt_ids + request.token_ids, request.cached) for request in self._active]
        return longest_cached_prefix(prompt, running, self._cache, self._parked)

    def _pass(self, arrivals: list[tuple[Request, PrefixSource | None]]) -> None:
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
        prefills = plan.prefills
        self.stats.record_pass(running, len(prefills), sum(p.length for p in prefills),
                               sum(p.reused for p in prefills), time.perf_counter() - started)

    def _plan(self, arrivals: list[tuple[Request, PrefixSource | None]]) -> tuple[torch.Tensor, torch.Tensor, Plan]:
        """Packed token ids and positions for a pass, and where each part reads and writes the cache;
        copies reused prefixes into the arrivals' slots."""
        running = self._active
        ids = [r.token_ids[-1] for r in running]
        positions = [r.cached for r in running]
        width = round_up(max(positions, default=-1) + 1, WIDTH_MULTIPLE)
        longest = max([width] + [len(r.prompt_ids) for r, _ in arrivals])
        self._cache.ensure(len(running) + len(arrivals), longest)
        prefills = []
        for slot, (request, source) in enumerate(arrivals, start=len(running)):
            prompt = request.prompt_ids
            reused = copy_prefix(source, self._cache, self._parked, slot)
            mask = None
            if reused:
                mask = torch.ones(len(prompt) - reused, len(prompt), dtype=torch.bool, device=self.device)
                mask = mask.tril_(diagonal=reused)
            prefills.append(Prefill(slot, len(ids), reused, len(prompt), mask))
            ids.extend(prompt[reused:])
            positions.extend(range(reused, len(prompt)))
        position_tensor = torch.tensor(positions, device=self.device)
        plan = Plan(len(running), position_tensor[: len(running)], width, prefills)
        return torch.tensor(ids, device=self.device), position_tensor, plan

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

    def _deliver(self, request: Request, reason: FinishReason, error: BaseException | None = None) -> None:
        """Hand the result (or the scheduler's failure) to the request's event loop."""
        self.stats.finish_reasons[reason] += 1
        with self._lock:
            self._in_flight -= 1
        if request.loop.is_closed():
            return
        if error is not None:
            failure = EngineClosedError(f"the hf engine's scheduler failed: {error!r}")
            request.loop.call_soon_threadsafe(set_exception, request.future, failure)
            return
        result = Generation(token_ids=request.token_ids, logprobs=request.logprobs, finish_reason=reason)
        request.loop.call_soon_threadsafe(set_result, request.future, result)

    def _finish_all(self, reason: FinishReason, error: BaseException | None = None) -> None:
        """End every queued and active request (on close, or with the scheduler's failure)."""
        with self._lock:
            self._closing = True
            pending = [*self._active, *self._admitting, *self._queue]
            self._active, self._admitting, self._queue = [], [], deque()
        for request in pending:
            self._deliver(request, reason, error)
