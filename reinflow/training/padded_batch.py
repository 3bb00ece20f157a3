"""One micro-batch of training samples as right-padded tensors: what the trainer's forward passes read.

``collate(samples, device)`` pads ``samples`` (``train_batch.TrainSample``, as ``train_batch.
micro_batches`` groups them) on the right into a ``PaddedBatch`` of ``B`` rows and ``L`` columns,
``L`` the longest sample. The model reads ``input_ids`` under ``attention_mask``; everything scored
is shifted by one for next-token prediction: the hidden state at position ``t`` scores token
``t + 1``, so ``targets``, ``loss_mask`` and ``engine_logp`` are ``[B, L-1]`` and describe tokens
``1..L-1`` (a sample's first token is never trained). Padding is 0 in ``input_ids`` and
``attention_mask`` and ``False`` in ``loss_mask``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from reinflow.training.train_batch import TrainSample


@dataclass
class PaddedBatch:
    """A right-padded micro-batch; ``B`` rows, ``L`` the longest sample."""

    input_ids: Tensor  # [B, L] long (0 at padding)
    attention_mask: Tensor  # [B, L] long
    targets: Tensor  # [B, L-1] long: input_ids[:, 1:]
    loss_mask: Tensor  # [B, L-1] bool: sample loss_mask[1:], False at padding
    engine_logp: Tensor  # [B, L-1] fp32: sample engine_logprobs[1:]
    advantages: Tensor  # [B] fp32
    tokens: int  # real (unpadded) tokens


def collate(samples: list[TrainSample], device: torch.device) -> PaddedBatch:
    """Right-pad ``samples`` into one ``PaddedBatch`` on ``device``."""
    longest = max(len(s.token_ids) for s in samples)
    ids = torch.zeros(len(samples), longest, dtype=torch.long)
    mask = torch.zeros(len(samples), longest, dtype=torch.long)
    loss_mask = torch.zeros(len(samples), longest, dtype=torch.bool)
    engine = torch.zeros(len(samples), longest, dtype=torch.float32)
    for row, s in enumerate(samples):
        n = len(s.token_ids)
        ids[row, :n] = torch.tensor(s.token_ids)
        mask[row, :n] = 1
        loss_mask[row, :n] = torch.tensor(s.loss_mask, dtype=torch.bool)
        engine[row, :n] = torch.tensor(s.engine_logprobs, dtype=torch.float32)
    advantages = torch.tensor([s.advantage for s in samples], dtype=torch.float32)
    return PaddedBatch(ids.to(device), mask.to(device), ids[:, 1:].to(device), loss_mask[:, 1:].to(device),
                       engine[:, 1:].to(device), advantages.to(device), int(mask.sum()))
