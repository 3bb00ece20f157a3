"""Slow loop references of ``reinflow.training.grpo`` (plain Python over groups, sequences and
tokens) and the random inputs ``tests/test_grpo.py`` compares the two on.
"""

from __future__ import annotations

import math
import random

import torch


# ----------------------------------------------------------------------------- loop references


def ref_group_advantages(rewards: list[float], ids: list[int], normalize_std: bool, eps: float):
    members: dict[int, list[int]] = {}
    for i, g in enumerate(ids):
        members.setdefault(g, []).append(i)
    adv = [0.0] * len(rewards)
    no_signal = 0
    for idx in members.values():
        vals = [rewards[i] for i in idx if not math.isnan(rewards[i])]
        if not vals or max(vals) == min(vals):
            no_signal += 1
            continue
        mean = sum(vals) / len(vals)
        std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
        for i in idx:
            if not math.isnan(rewards[i]):
                adv[i] = (rewards[i] - mean) / (std + eps) if normalize_std else rewards[i] - mean
    return adv, no_signal


def ref_normalizer(mask: list[list[bool]], aggregation: str) -> int:
    """What the aggregation divides by: trained tokens, or sequences with a trained token."""
    if aggregation == "token_mean":
        return sum(1 for row in mask for keep in row if keep)
    return sum(1 for row in mask if any(row))


def ref_aggregate(values: list[list[float]], mask: list[list[bool]], aggregation: str, normalizer=None):
    """Works on floats and on torch scalars alike."""
    if aggregation == "token_mean":
        terms = [v for row, m in zip(values, mask) for v, keep in zip(row, m) if keep]
        return sum(terms) / (normalizer or max(len(terms), 1))
    seq_means = []
    for row, m in zip(values, mask):
        terms = [v for v, keep in zip(row, m) if keep]
        if terms:
            seq_means.append(sum(terms) / len(terms))
    return sum(seq_means) / (normalizer or max(len(seq_means), 1))


def ref_surrogate_tokens(lp, olp, adv, lo, hi):
    """(loss term, clipped?, approx_kl k3, ratio) of one token, math floats."""
    r = math.exp(lp - olp)
    unclipped, clipped = -r * adv, -min(max(r, 1 - lo), 1 + hi) * adv
    return max(unclipped, clipped), float(clipped > unclipped), r - 1 - math.log(r), r


def ref_loss_torch(logp, old, adv, mask, lo, hi, aggregation, kl_coef=0.0, ref=None, normalizer=None):
    """The loss built token by token from torch scalars, so autograd gives the reference gradient."""
    B, T = logp.shape
    pg = [[None] * T for _ in range(B)]
    kl = [[None] * T for _ in range(B)]
    for b in range(B):
        for t in range(T):
            if mask[b][t]:
                r = torch.exp(logp[b, t] - old[b, t])
                a = float(adv[b])
                pg[b][t] = -torch.minimum(r * a, torch.clamp(r, 1 - lo, 1 + hi) * a)
                if ref is not None:
                    d = ref[b, t] - logp[b, t]
                    kl[b][t] = torch.exp(d) - d - 1
    loss = ref_aggregate(pg, mask, aggregation, normalizer)
    if kl_coef > 0:
        loss = loss + kl_coef * ref_aggregate(kl, mask, aggregation, normalizer)
    return torch.as_tensor(loss)


# ----------------------------------------------------------------------------- random inputs


def random_batch(seed: int, max_b: int = 7, max_t: int = 9):
    g = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    B, T = rng.randint(2, max_b), rng.randint(1, max_t)
    old = -3 * torch.rand(B, T, generator=g)
    logp = old + 0.3 * torch.randn(B, T, generator=g)
    ref = old + 0.3 * torch.randn(B, T, generator=g)
    adv = torch.randn(B, generator=g)
    adv[rng.randrange(B)] = 0.0
    mask = torch.rand(B, T, generator=g) < rng.uniform(0.3, 0.9)
    mask[rng.randrange(B)] = False  # a row with nothing trained
    mask[rng.randrange(B), rng.randrange(T)] = True  # at least one trained token
    return logp, old, ref, adv, mask


def random_rewards(seed: int):
    rng = random.Random(seed)
    rewards, ids = [], []
    for group in range(rng.randint(1, 8)):
        for _ in range(rng.randint(1, 6)):
            rewards.append(math.nan if rng.random() < 0.15 else rng.choice([0.0, 0.5, 1.0, rng.uniform(-2, 2)]))
            ids.append(7 * group + 3)  # not contiguous
    order = list(range(len(rewards)))
    rng.shuffle(order)
    return [rewards[i] for i in order], [ids[i] for i in order]
