"""The warm start: supervised fine-tuning of the in-process policy on demonstrations.

Cross-entropy on the tokens the policy is to generate, nothing else: each sample's ``loss_mask``
is 1 on assistant tokens only (``reinflow.rollout.demonstration``; an earlier run's episodes carry
the masks of their rollout), so the system prompt, user turns, tool results and template tokens
carry no loss. The loss of one optimizer step over its batch ``b`` of samples::

    loss = -Σ_{s in b} Σ_{t: mask[s,t]} log π(x[s,t] | x[s,<t]) / N_b,    N_b = Σ_s Σ_t mask[s,t]

the token mean over the batch (the same aggregation as GRPO's default ``token_mean``), computed by
micro-batches of ``train.micro_batch_tokens`` padded tokens with ``N_b`` as the common
normaliser, so their gradients sum to the batch's. Log-probs are at temperature 1 (the model's own
distribution; the rollout's sampling temperature is not applied).

Where it departs from a plain SFT loop: it has its **own AdamW** (``warmup.lr``, constant, with
``train.weight_decay`` and ``train.max_grad_norm``), dropped at the end, so GRPO starts with a
fresh optimizer state and its LR schedule untouched. Batches are ``warmup.batch_size`` samples,
shuffled each epoch by a generator seeded with ``train.seed`` (a re-run gives the same steps).
Only single-process trainers warm-start (``world_size`` 1).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from reinflow.config import WarmupConfig
from reinflow.faults import crash_point
from reinflow.training.padded_batch import collate
from reinflow.training.policy import PolicyTrainer
from reinflow.training.train_batch import TrainSample, micro_batches

SFT_TEMPERATURE = 1.0
"""The temperature of the warm start's log-probs: the model's own distribution."""


@dataclass
class WarmupResult:
    """What a warm start did."""

    losses: list[float] = field(default_factory=list)
    """Token-mean cross-entropy of each optimizer step, before the step."""
    grad_norms: list[float] = field(default_factory=list)
    """Pre-clip gradient norm of each step."""
    trained_tokens: int = 0
    """Tokens that carried loss, summed over steps (so over epochs)."""
    seconds: float = 0.0


def sft_loss(logp: Tensor, loss_mask: Tensor, normalizer: float) -> Tensor:
    """``-Σ logp[loss_mask] / normalizer``: ``logp`` and ``loss_mask`` are ``[B, T]``; masked
    positions contribute nothing, whatever they hold (``torch.where``, not a product)."""
    if normalizer <= 0:
        raise ValueError(f"normalizer must be > 0, got {normalizer}")
    return -torch.where(loss_mask.bool(), logp, 0.0).sum() / normalizer


def sft_batches(samples: Sequence[TrainSample], batch_size: int, epochs: int, seed: int) -> list[list[TrainSample]]:
    """The optimizer steps' batches: each epoch shuffles the samples (``random.Random(seed)``, one
    shuffle per epoch in turn) and cuts them into batches of ``batch_size`` (the last may be smaller).

    >>> [len(b) for b in sft_batches(list(range(5)), batch_size=2, epochs=2, seed=0)]
    [2, 2, 1, 2, 2, 1]
    """
    rng = random.Random(seed)
    batches = []
    for _ in range(epochs):
        order = list(samples)
        rng.shuffle(order)
        batches.extend(order[start : start + batch_size] for start in range(0, len(order), batch_size))
    return batches


def supervised_fine_tune(
    trainer: PolicyTrainer, samples: Sequence[TrainSample], warmup: WarmupConfig, seed: int,
    on_step: Callable[[int, int], None] | None = None,
) -> WarmupResult:
    """Train ``trainer``'s weights on ``samples`` for ``warmup.epochs`` (see the module docstring);
    ``on_step(done, total)`` after each optimizer step. Samples without a trained token are left out."""
    if trainer.world_size > 1:
        raise ValueError("the warm start runs on a single-process trainer (world_size 1)")
    started = time.perf_counter()
    usable = [sample for sample in samples if sample.trained_tokens]
    batches = sft_batches(usable, warmup.batch_size, warmup.epochs, seed)
    parameters = list(trainer.parameters.values())
    optimizer = torch.optim.AdamW(parameters, lr=warmup.lr, weight_decay=trainer.train.weight_decay, fused=True)
    result = WarmupResult()
    for step, batch in enumerate(batches, start=1):
        loss, tokens = _accumulate_gradients(trainer, batch, optimizer)
        grad_norm = nn.utils.clip_grad_norm_(parameters, trainer.train.max_grad_norm)
        optimizer.step()
        trainer.weights_changed()
        result.losses.append(loss)
        result.grad_norms.append(float(grad_norm))
        result.trained_tokens += tokens
        crash_point("warmup", step)  # fault-injection tests: killed in the middle of the warm start
        if on_step is not None:
            on_step(step, len(batches))
    optimizer.zero_grad(set_to_none=True)
    result.seconds = time.perf_counter() - started
    return result


def _accumulate_gradients(trainer: PolicyTrainer, batch: list[TrainSample],
                          optimizer: torch.optim.Optimizer) -> tuple[float, int]:
    """Backward of one step's loss, micro-batch by micro-batch; ``(loss, trained tokens)``."""
    optimizer.zero_grad(set_to_none=True)
    normalizer = sum(sample.trained_tokens for sample in batch)
    total = 0.0
    for group in micro_batches(batch, trainer.train.micro_batch_tokens):
        padded = collate(group, trainer.device)
        loss = sft_loss(trainer.log_probs(padded, SFT_TEMPERATURE), padded.loss_mask, normalizer)
        loss.backward()
        total += float(loss.detach())
    return total, normalizer
