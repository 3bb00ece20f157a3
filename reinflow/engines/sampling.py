"""Seeded per-request sampling for the `hf` engine: temperature, top-p, one generator per request,
and the sampled token's logprob; a row's result depends on its own logits and draw only."""

from __future__ import annotations

from typing import Protocol

import torch

from reinflow.engines.base import SamplingParams


class SamplingRow(Protocol):
    """What the sampler reads of a request."""

    sampling: SamplingParams
    generator: torch.Generator


def sample_rows(logits: torch.Tensor, requests: list[SamplingRow]) -> tuple[list[int], list[float]]:
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


def _draw(weights: torch.Tensor, cdf: torch.Tensor, requests: list[SamplingRow]) -> torch.Tensor:
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


