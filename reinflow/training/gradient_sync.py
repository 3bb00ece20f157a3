"""Keeping the ranks of a distributed update identical: the gradient all-reduce and the start broadcast.

With ``world_size > 1`` (the Ray backbone) every rank computes the gradients of its own shard of
the batch, each its share of the batch's loss (the global normaliser). ``sum_gradients_over_ranks``
adds them up over the default ``torch.distributed`` process group (initialised by the caller), in
flat buckets of about ``BUCKET_ELEMENTS`` elements (few collectives, none huge), so every rank then
holds the batch gradient and takes the single-process optimizer step. ``broadcast_parameters``
copies rank 0's parameters to every rank once, at start, so they begin identical.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import Tensor, nn

BUCKET_ELEMENTS = 1 << 24
"""Gradients are all-reduced in flat buckets of about this many elements (64 MiB in fp32)."""


def sum_gradients_over_ranks(params: list[nn.Parameter], world_size: int) -> None:
    """All-reduce (SUM) every parameter's gradient over the default process group when
    ``world_size > 1``. A parameter without a gradient (a rank with an empty shard) gets zeros
    first, whatever the world size, so every rank steps every parameter alike."""
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    if world_size == 1:
        return
    if dist.get_world_size() != world_size:
        raise RuntimeError(f"process group has {dist.get_world_size()} ranks, trainer expects {world_size}")
    for bucket in buckets([p.grad for p in params], BUCKET_ELEMENTS):
        flat = torch.cat([g.reshape(-1) for g in bucket])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for grad in bucket:
            grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
            offset += grad.numel()


def broadcast_parameters(params: Iterable[nn.Parameter]) -> None:
    """Overwrite every rank's ``params`` with rank 0's (in place, no grad)."""
    with torch.no_grad():
        for p in params:
            dist.broadcast(p.data, src=0)


def buckets(tensors: list[Tensor], elements: int) -> list[list[Tensor]]:
    """Consecutive groups of tensors of about ``elements`` elements each (a large one alone)."""
    groups: list[list[Tensor]] = [[]]
    size = 0
    for tensor in tensors:
        if groups[-1] and size + tensor.numel() > elements:
            groups.append([])
            size = 0
        groups[-1].append(tensor)
        size += tensor.numel()
    return [g for g in groups if g]
