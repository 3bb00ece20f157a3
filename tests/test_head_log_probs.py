"""reinflow.training.head_log_probs against slow loop references: the log-probability of each target
token and the entropy under ``softmax(hidden @ weight.T / τ)``, at the sampling temperature ``τ``."""

from __future__ import annotations

import math
import random

import pytest
import torch

from reinflow.training.head_log_probs import head_log_probs

SEEDS = [0, 1, 2, 3, 4]


def ref_log_prob(row: list[float], target: int, temperature: float) -> float:
    z = [x / temperature for x in row]
    m = max(z)
    return z[target] - (m + math.log(sum(math.exp(x - m) for x in z)))


def ref_entropy(row: list[float], temperature: float) -> float:
    z = [x / temperature for x in row]
    m = max(z)
    total = sum(math.exp(x - m) for x in z)
    probs = [math.exp(x - m) / total for x in z]
    return -sum(p * math.log(p) for p in probs if p > 0)


def random_head(seed: int):
    """``hidden [N, H]``, ``weight [V, H]`` and ``targets [N]`` of random small sizes."""
    g = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    N, H, V = rng.randint(1, 9), rng.randint(1, 5), rng.randint(2, 13)
    hidden = torch.randn(N, H, generator=g, dtype=torch.float64).float()
    weight = torch.randn(V, H, generator=g, dtype=torch.float64).float()
    return hidden, weight, torch.randint(0, V, (N,), generator=g)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("temperature", [1.0, 0.6, 1.7])
def test_log_probs_and_entropy_match_loop(seed, temperature):
    hidden, weight, targets = random_head(seed)
    logp, entropy = head_log_probs(hidden, weight, targets, temperature, with_entropy=True, saved_bytes=1 << 30)
    logits = (hidden.double() @ weight.double().T).tolist()
    expected = [ref_log_prob(row, int(t), temperature) for row, t in zip(logits, targets)]
    torch.testing.assert_close(logp, torch.tensor(expected, dtype=torch.float32), atol=1e-5, rtol=1e-5)
    expected_entropy = [ref_entropy(row, temperature) for row in logits]
    torch.testing.assert_close(entropy, torch.tensor(expected_entropy, dtype=torch.float32), atol=1e-5, rtol=1e-5)
    assert (entropy >= 0).all() and (entropy <= math.log(weight.shape[0]) + 1e-5).all()


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_gradients_match_log_softmax_of_whole_logits(seed, temperature):
    hidden, weight, targets = random_head(seed)
    upstream = torch.randn(hidden.shape[0], generator=torch.Generator().manual_seed(seed))
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    logp, _ = head_log_probs(h, w, targets, temperature, with_entropy=False, saved_bytes=1 << 30)
    grads = torch.autograd.grad((logp * upstream).sum(), (h, w))
    h2, w2 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    full = torch.log_softmax(h2 @ w2.T / temperature, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    expected = torch.autograd.grad((full * upstream).sum(), (h2, w2))
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_the_callers_tensors_are_left_alone():
    hidden, weight, targets = random_head(0)
    before = hidden.clone(), weight.clone()
    head_log_probs(hidden, weight, targets, 0.5, with_entropy=True, saved_bytes=1 << 30)
    assert torch.equal(hidden, before[0]) and torch.equal(weight, before[1])


def test_temperature_zero_is_refused():
    hidden, weight, targets = random_head(0)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        head_log_probs(hidden, weight, targets, 0.0, with_entropy=False, saved_bytes=1 << 30)
