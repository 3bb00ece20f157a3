"""Build the configured engine: ``hf`` (transformers, any device) or ``vllm`` (GPU, optional extra), in this
process or, with ``rollout.engine_replicas > 1``, as Ray actors spread over the nodes (``engines.ray_replicas``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch

from reinflow.engines.base import Engine

if TYPE_CHECKING:
    from reinflow.config import ExperimentConfig

EngineKind = Literal["hf", "vllm"]


def create_engine(kind: EngineKind, model_folder: Path | str, *, dtype: str = "float32", max_model_len: int,
                  max_batch_size: int, device: str | torch.device | None = None,
                  vllm_memory_fraction: float | None = None) -> Engine:
    """An engine serving ``model_folder``; vLLM is imported only when asked for (``vllm_memory_fraction``:
    its ``gpu_memory_utilization``, vLLM's own default where None)."""
    if kind == "hf":
        from reinflow.engines.hf import HFEngine

        return HFEngine(model_folder, dtype=dtype, max_model_len=max_model_len, max_batch_size=max_batch_size,
                        device=device)
    if kind == "vllm":
        from reinflow.engines.vllm import VLLMEngine

        return VLLMEngine(model_folder, dtype=dtype, max_model_len=max_model_len, max_batch_size=max_batch_size,
                          device=device, memory_fraction=vllm_memory_fraction)
    raise ValueError(f"unknown engine kind '{kind}': use 'hf' or 'vllm'")


def engine_for(config: ExperimentConfig, model_folder: Path) -> Engine:
    """The rollout engine ``config`` asks for: one in-process engine, or ``rollout.engine_replicas``
    Ray actors (each holding ``create_engine(...)``) placed across the nodes of ``train.ray_address``."""
    rollout = config.rollout
    if rollout.engine_replicas > 1:
        from reinflow.engines.ray_replicas import RayEngineReplicas

        return RayEngineReplicas(config, model_folder)
    return create_engine(rollout.engine, model_folder, dtype=config.model.dtype, max_model_len=rollout.max_model_len,
                         max_batch_size=rollout.max_batch_size, vllm_memory_fraction=rollout.vllm_memory_fraction)
