"""The engine interface every rollout talks to: token ids in, token ids and logprobs out."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import torch

FinishReason = Literal["stop", "length", "abort"]
"""`stop`: the model emitted EOS (included in the ids); `length`: hit max_new_tokens or the model
length; `abort`: the engine was shut down or the request cancelled."""


@dataclass(frozen=True)
class SamplingParams:
    """How one request is sampled."""

    max_new_tokens: int
    temperature: float
    top_p: float
    seed: int | None = None
    """Per-request seed for reproducible sampling; None draws from the engine's generator."""


@dataclass(frozen=True)
class Generation:
    """What the policy produced for one request: exactly the sampled ids and their logprobs
    (under the sampling temperature, before top-p truncation)."""

    token_ids: list[int]
    logprobs: list[float]
    finish_reason: FinishReason


@dataclass(frozen=True)
class LoraAdapter:
    """One policy version as a LoRA adapter over the engine's base weights (an engine that serves
    adapters, `vllm`, takes this instead of merged weights): the trainable adapter tensors under
    peft's parameter names (``...q_proj.lora_A.<adapter>.weight``) and the adapter's shape."""

    tensors: Mapping[str, torch.Tensor]
    rank: int
    alpha: float
    target_modules: tuple[str, ...]


@runtime_checkable  # Prefect builds a parameter schema of the live objects a subflow receives
class Engine(Protocol):
    """Serves many concurrent requests through one batching loop."""

    async def generate(self, prompt_ids: list[int], sampling: SamplingParams) -> Generation:
        """Generate a continuation of ``prompt_ids``; safe to await from many tasks at once."""
        ...

    def load_weights(self, weights: Mapping[str, torch.Tensor] | Path) -> None:
        """Replace the policy weights (a state dict or a checkpoint folder) between iterations."""
        ...

    async def close(self) -> None:
        """Stop the batching loop; pending requests finish with ``abort``."""
        ...
