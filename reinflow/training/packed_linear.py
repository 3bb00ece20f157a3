"""Linear layers whose GEMMs run on weights packed once for oneDNN, for training on CPU in fp32.

``nn.Linear`` on CPU calls MKL's sgemm, which re-packs the weight into its blocked layout on every
call. oneDNN takes a weight packed once (``torch.ops.mkldnn._reorder_linear_weight``) and reuses it,
which makes the forward GEMM of the built-in model's layers (2k rows) noticeably faster on this
kind of CPU (``bench/update_step.py`` measures a whole step). A `PackedLinear` packs its weight
twice: ``W`` for the forward pass ``y = x @ W.T + b`` and ``W.T`` for the backward pass's
``dx = dy @ W``; the weight gradient ``dW = dy.T @ x`` stays a plain matmul (both operands change
every step).

A layer packed ``forward_only`` (the lm_head, whose input gradient is a GEMM with a 49k-long
reduction that packing does not speed up) keeps only ``W`` packed; its ``dx`` is a plain matmul.
`packed_matmul` runs the packed forward GEMM on its own (``head_log_probs`` uses it).

The packed copies are snapshots: after changing the weights in place (an optimizer step, loading a
checkpoint, a broadcast) call `repack`, which re-packs the layers whose weight requires a gradient
(frozen ones, e.g. LoRA's base, never change). Memory: one more copy of the packed layers' weights
per packed orientation.

Results equal ``nn.Linear``'s up to fp32 rounding (another summation order), not bit for bit.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

MIN_PACKED_FEATURES = 64
"""Layers with fewer input or output features (LoRA's rank-r adapters) stay plain ``nn.Linear``."""


def supported(model: nn.Module) -> bool:
    """Whether `pack_linears` applies: fp32 weights on the CPU and a oneDNN-enabled torch build."""
    weight = next(model.parameters())
    return weight.device.type == "cpu" and weight.dtype == torch.float32 and torch.backends.mkldnn.is_available()


def pack_linears(model: nn.Module, rows: int, forward_only: nn.Module | None = None) -> list[PackedLinear]:
    """Turn every wide ``nn.Linear`` of ``model`` into a `PackedLinear` packed for about ``rows``
    input rows (``forward_only``: that layer without the transposed copy); returns them (pass them
    to `repack`)."""
    packed = []
    for module in model.modules():
        wide = min(getattr(module, "in_features", 0), getattr(module, "out_features", 0)) >= MIN_PACKED_FEATURES
        if type(module) is nn.Linear and wide:
            module.__class__ = PackedLinear
            module.rows, module.transposed = rows, module is not forward_only
            module.pack()
            packed.append(module)
    return packed


def repack(layers: list[PackedLinear]) -> None:
    """Re-pack the layers whose weights may have changed (those that require a gradient)."""
    for layer in layers:
        if layer.weight.requires_grad:
            layer.pack()


class PackedLinear(nn.Linear):
    """An ``nn.Linear`` computed on packed copies of its weight (see the module docstring).
    Created from an ``nn.Linear`` by `pack_linears`; its parameters and state dict are unchanged."""

    rows: int
    transposed: bool
    packed: Tensor
    packed_transposed: Tensor | None

    @torch.no_grad()
    def pack(self) -> None:
        """Snapshot the current weight into the packed layouts (``W``, and ``W.T`` if ``transposed``)."""
        weight = self.weight.detach()
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, self.rows)
        self.packed_transposed = (
            torch.ops.mkldnn._reorder_linear_weight(weight.t(), self.rows) if self.transposed else None
        )

    def forward(self, x: Tensor) -> Tensor:
        return _PackedLinearFunction.apply(x, self.weight, self.bias, self)


def packed_matmul(x: Tensor, packed: Tensor, bias: Tensor | None = None) -> Tensor:
    """``x @ W.T (+ bias)`` with oneDNN on ``packed`` = a `PackedLinear`'s ``packed`` (its ``W``)."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


class _PackedLinearFunction(torch.autograd.Function):
    """``x @ W.T + b`` with oneDNN on the layer's packed weights; gradients for ``x``, ``W``, ``b``."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, layer: PackedLinear) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.packed_transposed = layer.packed_transposed
        return packed_matmul(x, layer.packed, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple:
        x, weight = ctx.saved_tensors
        need_x, need_weight, need_bias = ctx.needs_input_grad[:3]
        grad_x = None
        if need_x:
            packed = ctx.packed_transposed
            grad_x = grad @ weight if packed is None else packed_matmul(grad, packed)
        flat_grad = grad.reshape(-1, grad.shape[-1])
        grad_weight = flat_grad.t() @ x.reshape(-1, x.shape[-1]) if need_weight else None
        grad_bias = flat_grad.sum(0) if need_bias else None
        return grad_x, grad_weight, grad_bias, None
