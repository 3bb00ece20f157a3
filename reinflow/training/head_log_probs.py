"""Log-probs of the sampled tokens through the lm_head, in row chunks, without whole ``[N, V]`` logits.

The trainer needs ``log softmax(hidden @ W.T / τ)[target]`` at the ``N`` trained positions only, and
its gradient. Materialising ``[N, V]`` logits (and autograd's copies of them) costs ~1 GB and
gigabytes of page faults per step for the built-in model (V = 49k), so the logits are computed in
chunks of ``HEAD_CHUNK_ROWS`` rows, and only the per-row logsumexp is kept for the backward pass
(Liger-kernel's fused linear cross-entropy does the same).

The backward pass needs ``softmax(z)`` again. Two ways, chosen per call by size:

- **kept**: when ``N * V`` fp32 fits in ``saved_bytes`` (the trainer's ``train.head_saved_bytes``), the forward
  pass computes all logits in one GEMM into an ``[N, V]`` buffer, turns it into probabilities
  chunk by chunk in place, and the backward pass turns those into ``dz`` in place and takes both
  gradients as one GEMM each: no second lm_head matmul, and no chunk-sized GEMMs that stream the
  whole weight (and, for the weight gradient, read and write all of it) once per chunk;
- **recomputed**: otherwise both passes go chunk by chunk and the backward pass recomputes each
  chunk's logits (one extra lm_head matmul), so memory stays at one chunk.

The temperature divides the ``[N, H]`` hidden states, not the ``[N, V]`` logits (a pass over 49k
columns saved; the gradients scale alike), and each chunk's log-probabilities, probabilities and
entropy come from one ``log_softmax`` and one ``exp`` (the entropy ``-Σ p log p`` as a batched dot
product, no ``[C, V]`` product temporary).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from reinflow.training.packed_linear import packed_matmul

HEAD_CHUNK_ROWS = 128
"""Rows of lm_head output computed at once. ``[128, V]`` fp32 is 25 MB for V = 49k: below glibc's
32 MiB mmap threshold, so chunk buffers are reused from the heap. Whole ``[N, V]`` temporaries
(300 MB for 1.5k tokens, ~10 of them per step) were each mmapped and page-faulted anew: ~3 GB of
page faults per step of the built-in model, and ~1 GB of peak memory. With a fixed threshold below
25 MB (``train.heap_mmap_threshold_bytes``, 1 MiB by default) each chunk's buffers are mapped anew
too, but only a chunk's worth at a time: 12 chunks of 25 MB, ~0.3 GB of page faults, per 1.5k
trained tokens."""


def head_log_probs(hidden: Tensor, weight: Tensor, targets: Tensor, temperature: float,
                   with_entropy: bool, saved_bytes: int,
                   packed_weight: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``log softmax(hidden @ weight.T / τ)[target]`` per row, and the entropy of that softmax.

    Args:
        hidden: ``[N, H]`` final hidden states at the positions that predict ``targets``.
        weight: ``[V, H]`` the (bias-free) lm_head weight.
        targets: ``[N]`` long. temperature: the sampling temperature ``τ > 0``.
        with_entropy: compute the entropy too (else an empty tensor is returned for it).
        saved_bytes: keep the ``[N, V]`` probabilities for the backward pass when they fit in this
            many bytes, else recompute the logits there (see the module docstring).
        packed_weight: ``weight`` packed for oneDNN (``PackedLinear.packed``, same values), used
            for the logit GEMMs; ``None``: plain matmuls.

    Returns:
        ``(logp [N], entropy [N] or [0])``; ``logp`` is differentiable in ``hidden`` and ``weight``
        (once), the entropy is a metric (no gradient). Equal to ``log_softmax(z)[target]`` and
        ``-Σ softmax(z) log_softmax(z)`` on whole logits ``z = hidden @ weight.T / τ`` (fp32 rounding
        aside; ``tests/test_policy.py`` checks both and the gradients).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 to score tokens, got {temperature}")
    keep = hidden.requires_grad or weight.requires_grad
    keep = keep and hidden.shape[0] * weight.shape[0] * 4 <= saved_bytes
    return _HeadLogProbs.apply(hidden, weight, targets, float(temperature), with_entropy, keep, packed_weight)


def _chunks(rows: int) -> list[slice]:
    return [slice(start, min(start + HEAD_CHUNK_ROWS, rows)) for start in range(0, rows, HEAD_CHUNK_ROWS)]


def _logits(scaled_hidden: Tensor, weight: Tensor, packed_weight: Tensor | None) -> Tensor:
    """``z = scaled_hidden [C, H] @ weight.T`` → ``[C, V]`` fp32 (the temperature is in the hidden)."""
    return scaled_hidden @ weight.T if packed_weight is None else packed_matmul(scaled_hidden, packed_weight)


class _HeadLogProbs(torch.autograd.Function):
    """Autograd for ``head_log_probs``: saves ``hidden / τ``, ``weight``, ``targets``, the per-row
    logsumexp and, when kept, the ``[N, V]`` probabilities (``ctx.probs``)."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, targets: Tensor, temperature: float,
                with_entropy: bool, keep: bool, packed_weight: Tensor | None) -> tuple[Tensor, Tensor]:
        rows = hidden.shape[0]
        scaled = hidden if temperature == 1.0 else hidden / temperature  # [N, H]: z = scaled @ W.T
        logp, lse = hidden.new_empty(rows), hidden.new_empty(rows)
        entropy = hidden.new_empty(rows if with_entropy else 0)
        probs = _logits(scaled, weight, packed_weight) if keep else None  # [N, V]: one GEMM
        for chunk in _chunks(rows):
            z = probs[chunk] if keep else _logits(scaled[chunk], weight, packed_weight)  # [C, V]
            log_p = torch.log_softmax(z, dim=-1)
            logp[chunk] = log_p.gather(1, targets[chunk, None])[:, 0]
            lse[chunk] = z.gather(1, targets[chunk, None])[:, 0] - logp[chunk]
            if with_entropy or keep:
                p = torch.exp(log_p, out=z)  # z is ours; a kept chunk now holds softmax(z)
                if with_entropy:
                    entropy[chunk] = -torch.bmm(p[:, None, :], log_p[:, :, None])[:, 0, 0]  # -Σ p log p
        ctx.save_for_backward(scaled, weight, targets, lse)
        ctx.temperature, ctx.probs, ctx.packed_weight = temperature, probs, packed_weight
        ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_logp: Tensor, _grad_entropy: Tensor) -> tuple:
        """``d logp / d z = onehot(target) - softmax(z)``; ``z = (hidden / τ) @ weight.T``. Kept
        probabilities become ``dL/dz`` in place, then one GEMM per gradient; otherwise chunk by
        chunk. ``dL/d hidden = dL/dz @ weight / τ``, ``dL/d weight = dL/dz.T @ (hidden / τ)``."""
        scaled, weight, targets, lse = ctx.saved_tensors
        need_hidden, need_weight = ctx.needs_input_grad[:2]
        if ctx.probs is not None:
            dz = _logit_grad(ctx.probs, targets, grad_logp)
            grad_hidden = dz @ weight if need_hidden else None
            grad_weight = dz.T @ scaled if need_weight else None
        else:
            grad_hidden = torch.empty_like(scaled) if need_hidden else None
            grad_weight = torch.zeros_like(weight) if need_weight else None
            for chunk in _chunks(scaled.shape[0]):
                probs = _logits(scaled[chunk], weight, ctx.packed_weight).sub_(lse[chunk, None]).exp_()
                dz = _logit_grad(probs, targets[chunk], grad_logp[chunk])  # [C, V]
                if need_hidden:
                    torch.mm(dz, weight, out=grad_hidden[chunk])
                if need_weight:
                    grad_weight.addmm_(dz.T, scaled[chunk])
        ctx.probs = ctx.packed_weight = None
        if grad_hidden is not None and ctx.temperature != 1.0:
            grad_hidden.div_(ctx.temperature)
        return grad_hidden, grad_weight, None, None, None, None, None


def _logit_grad(probs: Tensor, targets: Tensor, grad_logp: Tensor) -> Tensor:
    """``dL/dz = (onehot(target) - softmax(z)) * g`` written over ``probs [C, V]`` (ours to modify)."""
    g = grad_logp[:, None]  # [C, 1]
    return probs.mul_(-g).scatter_add_(1, targets[:, None], g)
