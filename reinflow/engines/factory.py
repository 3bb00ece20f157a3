"""Build one in-process engine: ``hf`` (transformers, any device) or ``vllm`` (GPU, optional extra).

Replicas of it as Ray actors across the nodes (``rollout.engine_replicas > 1``) are
``reinflow.distributed.engine_replicas``; ``reinflow.run.rollout_runtime.engine_for`` picks one or the other."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch

from reinflow.engines.base import Engine

EngineKind = Literal["hf", "vllm"]


def create_engine(kind: EngineKind, model_folder: Path | str, *, dtype: str = "float32", max_model_len: int,
                  max_batch_size: int, device: str | torch.device | None = None,
                  vllm_memory_fraction: float | None = None, lora_rank: int | None = None) -> Engine:
    """An engine serving ``model_folder``; vLLM is imported only when asked for (``vllm_memory_fraction``:
    its ``gpu_memory_utilization``, vLLM's own default where None; ``lora_rank``: the `vllm` engine
    serves `LoraAdapter` versions up to that rank, see :func:`serves_adapters`)."""
    if kind == "hf":
        from reinflow.engines.hf import HFEngine

        return HFEngine(model_folder, dtype=dtype, max_model_len=max_model_len, max_batch_size=max_batch_size,
                        device=device)
    if kind == "vllm":
        from reinflow.engines.vllm import VLLMEngine

        return VLLMEngine(model_folder, dtype=dtype, max_model_len=max_model_len, max_batch_size=max_batch_size,
                          device=device, memory_fraction=vllm_memory_fraction, lora_rank=lora_rank)
    raise ValueError(f"unknown engine kind '{kind}': use 'hf' or 'vllm'")


def serves_adapters(kind: EngineKind, lora: bool) -> bool:
    """Whether an engine of ``kind`` takes LoRA policy versions as adapters (`LoraAdapter`) rather
    than merged weights: `vllm` does (one new ``LoRARequest`` per version), `hf` merges."""
    return kind == "vllm" and lora
