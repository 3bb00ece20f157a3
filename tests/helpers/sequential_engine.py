"""A small real engine for tests: one request at a time, a plain sampling loop with a KV cache.

It implements ``reinflow.engines.base.Engine`` with a transformers causal LM (the tiny random
Llama in tests). No batching: requests are served one after another under a lock, each in a worker
thread so the event loop stays free. Logprobs are those of the sampled token under the sampling
temperature, before top-p truncation (greedy when the temperature is 0, with logprobs of the raw
logits), as the engine protocol asks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path

import torch

from reinflow.engines.base import Generation, SamplingParams


class SequentialEngine:
    """Serves one request at a time with ``model`` (a causal LM in eval mode)."""

    def __init__(self, model, eos_token_ids: set[int]) -> None:
        self.model = model.eval()
        self.eos_token_ids = set(eos_token_ids)
        self.generations: list[Generation] = []
        self._lock = asyncio.Lock()

    async def generate(self, prompt_ids: list[int], sampling: SamplingParams) -> Generation:
        """Sample a continuation of ``prompt_ids``."""
        async with self._lock:
            generation = await asyncio.to_thread(self._generate, list(prompt_ids), sampling)
        self.generations.append(generation)
        return generation

    @torch.no_grad()
    def _generate(self, prompt_ids: list[int], sampling: SamplingParams) -> Generation:
        generator = torch.Generator().manual_seed(sampling.seed if sampling.seed is not None else 0)
        ids, logprobs = [], []
        step_input = torch.tensor([prompt_ids])
        past = None
        for _ in range(sampling.max_new_tokens):
            out = self.model(input_ids=step_input, past_key_values=past, use_cache=True)
            past = out.past_key_values
            token, logprob = _pick(out.logits[0, -1].float(), sampling, generator)
            ids.append(token)
            logprobs.append(logprob)
            if token in self.eos_token_ids:
                return Generation(token_ids=ids, logprobs=logprobs, finish_reason="stop")
            step_input = torch.tensor([[token]])
        return Generation(token_ids=ids, logprobs=logprobs, finish_reason="length")

    def load_weights(self, weights: Mapping[str, torch.Tensor] | Path) -> None:
        """Load a state dict (checkpoint folders are not needed in tests)."""
        assert not isinstance(weights, Path), "the test engine loads state dicts only"
        self.model.load_state_dict(weights)

    async def close(self) -> None:
        """Nothing runs in the background."""


def _pick(logits: torch.Tensor, sampling: SamplingParams, generator: torch.Generator) -> tuple[int, float]:
    """(token, its logprob) from one position's logits."""
    if sampling.temperature == 0:
        logprobs = torch.log_softmax(logits, dim=-1)
        token = int(torch.argmax(logprobs))
        return token, float(logprobs[token])
    logprobs = torch.log_softmax(logits / sampling.temperature, dim=-1)
    probs = logprobs.exp()
    if sampling.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < sampling.top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    token = int(torch.multinomial(probs, 1, generator=generator))
    return token, float(logprobs[token])
