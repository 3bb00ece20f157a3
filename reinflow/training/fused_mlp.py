"""The SwiGLU MLP as one autograd node over packed weights, for the trainer: less activation memory.

transformers' ``LlamaMLP`` (and Mistral's, Qwen2's, Qwen3's) computes
``down(silu(gate(x)) * up(x))``. Autograd then keeps four ``[B, L, I]`` tensors per layer for the
backward pass (``gate(x)`` for the SiLU, ``silu(gate(x))`` and ``up(x)`` for the product, the
product for ``down``'s weight gradient): 1440 MiB of the 2351 MiB of activations of
``bench/update_step.py``'s batch (2048 tokens, 30 layers, ``I`` = 1536). `fuse_mlps` gives those
modules a forward under one autograd node that keeps only ``x``, ``gate(x)`` and ``up(x)`` and
recomputes ``silu(gate(x)) * up(x)`` (one element-wise pass) in the backward pass: half of that
memory is not held.

The GEMMs are `packed_linear`'s (the projections must be `PackedLinear` without bias, so it
applies after `packed_linear.pack_linears`), and every value is computed by the same operations
as the unfused modules (``F.silu``, the product, ``aten.silu_backward``, the packed GEMMs, the
input gradient summed over both branches as autograd does): results equal bit for bit. Modules
with another activation, a bias, or unpacked projections (LoRA's) are left alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from reinflow.training.packed_linear import PackedLinear, packed_matmul

FUSABLE_MLPS = frozenset({"LlamaMLP", "MistralMLP", "Qwen2MLP", "Qwen3MLP"})
"""transformers classes whose forward is exactly ``down_proj(act_fn(gate_proj(x)) * up_proj(x))``."""

_FUSED_CLASSES: dict[type, type] = {}


def fusable(module: nn.Module) -> bool:
    """Whether `fuse_mlps` applies to ``module``: a class of ``FUSABLE_MLPS`` with a SiLU and three
    bias-free `PackedLinear` projections that pack the transposed weight too."""
    if type(module).__name__ not in FUSABLE_MLPS:
        return False
    act = getattr(module, "act_fn", None)  # transformers' SiLUActivation computes F.silu, as nn.SiLU does
    if not (isinstance(act, nn.SiLU) or type(act).__name__ == "SiLUActivation"):
        return False
    projections = [getattr(module, name, None) for name in ("gate_proj", "up_proj", "down_proj")]
    return all(type(p) is PackedLinear and p.bias is None and p.transposed for p in projections)


def fuse_mlps(model: nn.Module) -> int:
    """Give every `fusable` MLP of ``model`` the fused forward; returns how many."""
    fused = 0
    for module in model.modules():
        if fusable(module):
            module.__class__ = _fused_class(type(module))
            fused += 1
    return fused


def _fused_class(cls: type) -> type:
    if cls not in _FUSED_CLASSES:
        _FUSED_CLASSES[cls] = type(f"Fused{cls.__name__}", (cls,), {"forward": _fused_forward})
    return _FUSED_CLASSES[cls]


def _fused_forward(self: nn.Module, x: Tensor) -> Tensor:
    return _SwiGluMlpFunction.apply(x, self.gate_proj.weight, self.up_proj.weight, self.down_proj.weight, self)


class _SwiGluMlpFunction(torch.autograd.Function):
    """``y = (silu(x @ Wg.T) * (x @ Wu.T)) @ Wd.T``; saves ``x``, both projections and the weights."""

    @staticmethod
    def forward(ctx, x: Tensor, w_gate: Tensor, w_up: Tensor, w_down: Tensor, mlp: nn.Module) -> Tensor:
        gate = packed_matmul(x, mlp.gate_proj.packed)
        up = packed_matmul(x, mlp.up_proj.packed)
        ctx.save_for_backward(x, gate, up)
        ctx.packed_transposed = tuple(p.packed_transposed for p in (mlp.gate_proj, mlp.up_proj, mlp.down_proj))
        return packed_matmul(F.silu(gate) * up, mlp.down_proj.packed)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple:
        x, gate, up = ctx.saved_tensors
        gate_t, up_t, down_t = ctx.packed_transposed
        ctx.packed_transposed = None
        need_x, need_gate, need_up, need_down = ctx.needs_input_grad[:4]
        act = F.silu(gate)
        flat = grad.reshape(-1, grad.shape[-1])
        grad_down = flat.t() @ (act * up).reshape(-1, up.shape[-1]) if need_down else None
        d_hidden = packed_matmul(grad, down_t)
        d_up = d_hidden * act
        del act
        d_gate = torch.ops.aten.silu_backward(d_hidden * up, gate)
        del d_hidden
        rows = x.reshape(-1, x.shape[-1])
        grad_gate = d_gate.reshape(-1, d_gate.shape[-1]).t() @ rows if need_gate else None
        grad_up = d_up.reshape(-1, d_up.shape[-1]).t() @ rows if need_up else None
        grad_x = packed_matmul(d_gate, gate_t) + packed_matmul(d_up, up_t) if need_x else None
        return grad_x, grad_gate, grad_up, grad_down, None
