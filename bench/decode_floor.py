"""The decode floor of bench/rollout_engine.py: the best time of one pass of a batch of rows through
every linear layer of a model (lm_head included; no attention, no sampling), the model's own
``nn.Linear`` layers or the `hf` engine's fused, packed ones.
"""

from __future__ import annotations

import time

import torch

from reinflow.engines.hf import HFEngine


def linear_floor(model, rows: int, passes: int) -> float:
    """Best time (s) of one pass of a ``rows``-row input through every nn.Linear (lm_head included)."""
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    return best_pass([(m, m.in_features) for m in linears], rows, passes, model.lm_head.weight)


def engine_floor(engine: HFEngine, rows: int, passes: int) -> float:
    """Best time (s) of one pass through the engine's own (fused, packed) linear layers."""
    decoder = engine._decoder  # the engine's internals: measured, not changed
    hidden = engine.model.config.hidden_size
    intermediate = engine.model.config.intermediate_size
    linears = [(getattr(layer, name), intermediate if name == "down" else hidden)
               for layer in decoder.layers for name in ("qkv", "o", "gate_up", "down")]
    return best_pass(linears + [(decoder.lm_head, hidden)], rows, passes, engine.model.lm_head.weight)


def best_pass(linears: list, rows: int, passes: int, like: torch.Tensor) -> float:
    """Best time (s) of calling every ``(linear, in_features)`` on a ``rows``-row input (of ``like``'s
    device and dtype)."""
    inputs = {width: torch.randn(rows, width, device=like.device, dtype=like.dtype) for _, width in linears}
    best = float("inf")
    with torch.inference_mode():
        for _ in range(passes + 1):
            started = time.perf_counter()
            for linear, width in linears:
                linear(inputs[width])
            _synchronize(like.device)
            best = min(best, time.perf_counter() - started)
    return best


def _synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
