"""reinflow.training.grpo against slow loop references (plain Python over groups, sequences and tokens)."""

from __future__ import annotations

import math
import random

import pytest
import torch
from helpers.grpo_reference import (
    random_batch,
    random_rewards,
    ref_aggregate,
    ref_group_advantages,
    ref_loss_torch,
    ref_normalizer,
    ref_surrogate_tokens,
)

from reinflow.training.grpo import aggregate, clipped_surrogate_loss, group_advantages, grpo_loss, kl_k3

SEEDS = [0, 1, 2, 3, 4]
AGGREGATIONS = ["token_mean", "sequence_mean"]


# ----------------------------------------------------------------------------- advantages


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("normalize_std", [False, True])
def test_group_advantages_match_loop(seed, normalize_std):
    rewards, ids = random_rewards(seed)
    r = torch.tensor(rewards, dtype=torch.float32)
    adv, no_signal = group_advantages(r, torch.tensor(ids), normalize_std=normalize_std)
    expected, expected_no_signal = ref_group_advantages(r.tolist(), ids, normalize_std, 1e-6)
    assert no_signal == expected_no_signal
    assert adv.dtype == torch.float32 and not torch.isnan(adv).any()
    torch.testing.assert_close(adv, torch.tensor(expected, dtype=torch.float32), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("normalize_std", [False, True])
def test_equal_reward_groups_get_exactly_zero_and_are_counted(normalize_std):
    rewards = torch.tensor([0.1, 0.1, 0.1, 0.7, 0.7, 0.0, 1.0, 1.0], dtype=torch.float32)
    ids = torch.tensor([0, 0, 0, 5, 5, 2, 2, 9])  # group 9 has a single episode
    adv, no_signal = group_advantages(rewards, ids, normalize_std=normalize_std)
    assert no_signal == 3
    assert (adv[[0, 1, 2, 3, 4, 7]] == 0).all()  # exactly, not approximately
    assert adv[5] < 0 < adv[6]


def test_nan_rewards_are_excluded():
    rewards = torch.tensor([1.0, 0.0, math.nan, 1.0, math.nan, math.nan, math.nan, 0.5])
    ids = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2])
    for normalize_std in (False, True):
        adv, no_signal = group_advantages(rewards, ids, normalize_std=normalize_std)
        assert no_signal == 2  # group 1: no valid reward; group 2: one valid reward
        assert adv[2] == 0 and (adv[4:] == 0).all()
        # The same as if the NaN episode had never been there.
        kept, _ = group_advantages(rewards[[0, 1, 3]], ids[[0, 1, 3]], normalize_std=normalize_std)
        torch.testing.assert_close(adv[[0, 1, 3]], kept)
    adv, _ = group_advantages(rewards, ids, normalize_std=False)
    torch.testing.assert_close(adv[[0, 1, 3]], torch.tensor([1 / 3, -2 / 3, 1 / 3]))


def test_group_advantages_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"\[B\]"):
        group_advantages(torch.zeros(3), torch.zeros(4, dtype=torch.long), normalize_std=False)


# ----------------------------------------------------------------------------- KL


@pytest.mark.parametrize("seed", SEEDS)
def test_kl_k3_matches_loop_and_is_non_negative(seed):
    logp, _, ref, _, _ = random_batch(seed)
    kl = kl_k3(logp, ref)
    expected = [
        [math.exp(r - p) - (r - p) - 1 for p, r in zip(lrow, rrow)] for lrow, rrow in zip(logp.tolist(), ref.tolist())
    ]
    torch.testing.assert_close(kl, torch.tensor(expected), atol=1e-6, rtol=1e-5)
    assert (kl >= 0).all()
    assert (kl_k3(logp, logp) == 0).all()
    tiny = torch.tensor([1e-8, -1e-8, 3e-7, -3e-7, 1e-4])
    assert (kl_k3(torch.zeros(5), tiny) >= 0).all()


# ----------------------------------------------------------------------------- surrogate loss


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize("clip", [(0.2, None), (0.2, 0.28), (0.1, 0.5)])
def test_clipped_surrogate_loss_matches_loop(seed, aggregation, clip):
    logp, old, _, adv, mask = random_batch(seed)
    lo, hi = clip
    x = logp.clone().requires_grad_()
    loss, metrics = clipped_surrogate_loss(x, old, adv, mask, lo, hi, aggregation)
    (grad,) = torch.autograd.grad(loss, x)

    hi = lo if hi is None else hi
    per_token = [
        [ref_surrogate_tokens(lp, olp, float(adv[b]), lo, hi) for lp, olp in zip(logp[b].tolist(), old[b].tolist())]
        for b in range(logp.shape[0])
    ]
    m = mask.tolist()
    for k, name in enumerate(["policy_loss", "clip_fraction", "approx_kl", "ratio_mean"]):
        expected = ref_aggregate([[tok[k] for tok in row] for row in per_token], m, aggregation)
        assert metrics[name].item() == pytest.approx(expected, abs=1e-5), name
    assert loss.item() == pytest.approx(metrics["policy_loss"].item())

    y = logp.double().requires_grad_()
    ref_loss = ref_loss_torch(y, old.double(), adv, m, lo, hi, aggregation)
    (expected_grad,) = torch.autograd.grad(ref_loss, y)
    torch.testing.assert_close(grad, expected_grad.float(), atol=1e-6, rtol=1e-5)
    assert (grad[~mask] == 0).all()


def test_clipped_tokens_get_zero_gradient():
    # Ratios per token: 1.5, 1.0, 0.5, 1.1 (inside the clip range).
    old = torch.zeros(2, 4)
    logp = torch.log(torch.tensor([[1.5, 1.0, 0.5, 1.1], [1.5, 1.0, 0.5, 1.1]])).requires_grad_()
    adv = torch.tensor([1.0, -1.0])
    mask = torch.ones(2, 4, dtype=torch.bool)
    loss, metrics = clipped_surrogate_loss(logp, old, adv, mask, 0.2, None, "token_mean")
    (grad,) = torch.autograd.grad(loss, logp)
    # A > 0: ratio above 1 + eps is clipped (no gradient); below 1 - eps is not (pessimistic bound).
    assert grad[0, 0] == 0 and grad[0, 2] != 0 and grad[0, 1] != 0 and grad[0, 3] != 0
    # A < 0: ratio below 1 - eps is clipped; above 1 + eps is not.
    assert grad[1, 2] == 0 and grad[1, 0] != 0 and grad[1, 1] != 0 and grad[1, 3] != 0
    assert metrics["clip_fraction"].item() == pytest.approx(2 / 8)
    # Clip-higher widens the upper side only: ratio 1.5 is inside [0.8, 1.6].
    loss, _ = clipped_surrogate_loss(logp, old, adv, mask, 0.2, 0.6, "token_mean")
    (grad,) = torch.autograd.grad(loss, logp)
    assert grad[0, 0] != 0 and grad[1, 2] == 0


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_clip_higher_changes_exactly_the_rewarded_tokens_between_the_two_upper_bounds(seed, aggregation):
    """DAPO's asymmetric clip, ``[1 - ε_low, 1 + ε_high]`` with ``ε_high > ε_low``, against the loop
    reference; and against the symmetric clip it changes the gradient of exactly the trained tokens
    of positive-advantage sequences whose ratio lies in ``(1 + ε_low, 1 + ε_high]``: clipped (zero
    gradient) by the symmetric range, trained by the asymmetric one. Negative advantages only ever
    meet the lower bound, which is the same in both."""
    g = torch.Generator().manual_seed(seed)
    B, T, lo, hi = 6, 10, 0.1, 0.3
    old = -2 * torch.rand(B, T, generator=g)
    logp = old + (0.6 + 0.9 * torch.rand(B, T, generator=g)).log()  # ratios spread over [0.6, 1.5]
    adv = torch.tensor([1.0, -1.0, 0.7, -0.4, 2.0, 0.0])
    mask = torch.rand(B, T, generator=g) < 0.8
    grads, metrics = {}, {}
    for high in (None, hi):
        x = logp.clone().requires_grad_()
        loss, metrics[high] = clipped_surrogate_loss(x, old, adv, mask, lo, high, aggregation)
        (grads[high],) = torch.autograd.grad(loss, x)
        y = logp.double().requires_grad_()
        expected = ref_loss_torch(y, old.double(), adv, mask.tolist(), lo, lo if high is None else high, aggregation)
        (expected_grad,) = torch.autograd.grad(expected, y)
        assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
        torch.testing.assert_close(grads[high], expected_grad.float(), atol=1e-6, rtol=1e-5)

    ratio = torch.exp(logp - old)
    window = mask & (adv > 0).unsqueeze(-1) & (ratio > 1 + lo) & (ratio <= 1 + hi)
    assert window.any()
    assert torch.equal(grads[None] != grads[hi], window)
    assert (grads[None][window] == 0).all() and (grads[hi][window] < 0).all()  # -dL/dlogp = ratio * A > 0
    raised = mask & (adv > 0).unsqueeze(-1) & (ratio > 1 + lo)  # each term -min(r, cap) A drops
    assert raised.any() and metrics[hi]["policy_loss"] < metrics[None]["policy_loss"]
    assert metrics[hi]["clip_fraction"] < metrics[None]["clip_fraction"]


def test_masked_garbage_gives_no_nan():
    logp, old, ref, adv, mask = random_batch(3)
    old = old.masked_fill(~mask, float("nan"))
    ref = ref.masked_fill(~mask, -float("inf"))
    x = logp.masked_fill(~mask, -float("inf")).requires_grad_()
    for aggregation in AGGREGATIONS:
        loss, metrics = grpo_loss(
            x, old, adv, mask, clip_ratio=0.2, clip_ratio_high=None, kl_coef=0.1, ref_logp=ref, aggregation=aggregation
        )
        (grad,) = torch.autograd.grad(loss, x)
        assert torch.isfinite(loss) and torch.isfinite(grad).all() and (grad[~mask] == 0).all()
        assert all(torch.isfinite(v) for v in metrics.values())


def test_nothing_trained_gives_zero_loss():
    logp = torch.randn(3, 4, requires_grad=True)
    nothing = torch.zeros(3, 4, dtype=torch.bool)
    loss, _ = clipped_surrogate_loss(logp, torch.zeros(3, 4), torch.ones(3), nothing, 0.2, None, "token_mean")
    loss.backward()
    assert loss.item() == 0 and (logp.grad == 0).all()


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="advantages"):
        clipped_surrogate_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(3), torch.ones(2, 3), 0.2, None, "token_mean")


# ----------------------------------------------------------------------------- grpo_loss, aggregation


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_grpo_loss_matches_loop(seed, aggregation):
    logp, old, ref, adv, mask = random_batch(seed)
    entropy = torch.rand(logp.shape, generator=torch.Generator().manual_seed(seed))
    x = logp.clone().requires_grad_()
    loss, metrics = grpo_loss(
        x, old, adv, mask, clip_ratio=0.2, clip_ratio_high=0.3, kl_coef=0.05, ref_logp=ref,
        aggregation=aggregation, entropy=entropy,
    )
    (grad,) = torch.autograd.grad(loss, x)
    y = logp.double().requires_grad_()
    m = mask.tolist()
    expected = ref_loss_torch(y, old.double(), adv, m, 0.2, 0.3, aggregation, kl_coef=0.05, ref=ref.double())
    (expected_grad,) = torch.autograd.grad(expected, y)
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)
    torch.testing.assert_close(grad, expected_grad.float(), atol=1e-6, rtol=1e-5)
    kl = [[math.exp(r - p) - (r - p) - 1 for p, r in zip(lr, rr)] for lr, rr in zip(logp.tolist(), ref.tolist())]
    assert metrics["kl"].item() == pytest.approx(ref_aggregate(kl, m, aggregation), abs=1e-6)
    assert metrics["entropy"].item() == pytest.approx(ref_aggregate(entropy.tolist(), m, aggregation), abs=1e-6)
    assert loss.item() == pytest.approx(metrics["policy_loss"].item() + 0.05 * metrics["kl"].item(), abs=1e-6)


def test_grpo_loss_needs_ref_for_kl():
    logp, old, _, adv, mask = random_batch(0)
    kw = dict(clip_ratio=0.2, clip_ratio_high=None, aggregation="token_mean")
    with pytest.raises(ValueError, match="ref_logp"):
        grpo_loss(logp, old, adv, mask, kl_coef=0.1, **kw)
    _, metrics = grpo_loss(logp, old, adv, mask, kl_coef=0.0, **kw)
    assert "kl" not in metrics and "entropy" not in metrics


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_aggregate_matches_loop(seed, aggregation):
    values, _, _, _, mask = random_batch(seed)
    expected = ref_aggregate(values.tolist(), mask.tolist(), aggregation)
    assert aggregate(values, mask, aggregation).item() == pytest.approx(expected, abs=1e-6)
    assert aggregate(values, mask, aggregation, normalizer=3.0).item() == pytest.approx(
        ref_aggregate(values.tolist(), mask.tolist(), aggregation, normalizer=3.0), abs=1e-6
    )


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_micro_batches_sum_to_the_full_batch(seed, aggregation):
    logp, old, ref, adv, mask = random_batch(seed, max_b=12)
    kw = dict(clip_ratio=0.2, clip_ratio_high=None, kl_coef=0.1, ref_logp=ref, aggregation=aggregation)
    x = logp.clone().requires_grad_()
    full_loss, full_metrics = grpo_loss(x, old, adv, mask, **kw)
    full_loss.backward()

    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, logp.shape[0]), k=min(2, logp.shape[0] - 1)))
    bounds = list(zip([0, *cuts], [*cuts, logp.shape[0]]))
    normalizer = sum(ref_normalizer(mask[a:b].tolist(), aggregation) for a, b in bounds)
    assert normalizer == ref_normalizer(mask.tolist(), aggregation)
    y = logp.clone().requires_grad_()
    total_loss, total_metrics = 0.0, dict.fromkeys(full_metrics, 0.0)
    for a, b in bounds:
        loss, metrics = grpo_loss(
            y[a:b], old[a:b], adv[a:b], mask[a:b], **{**kw, "ref_logp": ref[a:b]}, normalizer=normalizer
        )
        loss.backward()  # gradients accumulate in y.grad as in a training step
        total_loss += loss.item()
        for k, v in metrics.items():
            total_metrics[k] += v.item()
    assert total_loss == pytest.approx(full_loss.item(), abs=1e-6)
    torch.testing.assert_close(y.grad, x.grad, atol=1e-7, rtol=1e-5)
    for k, v in full_metrics.items():
        assert total_metrics[k] == pytest.approx(v.item(), abs=1e-6), k


def test_aggregate_divides_by_the_batch_own_count_and_refuses_unknown_aggregations():
    values = torch.tensor([[1.0, 2.0, 7.0], [5.0, 5.0, 5.0], [0.0, 3.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [0, 0, 0], [0, 1, 0]])
    assert aggregate(values, mask, "token_mean").item() == pytest.approx((1 + 2 + 3) / 3)
    assert aggregate(values, mask, "sequence_mean").item() == pytest.approx((1.5 + 3) / 2)
    assert aggregate(values, torch.zeros_like(mask), "token_mean").item() == 0
    with pytest.raises(ValueError, match="token_mean"):
        aggregate(values, mask, "sum")
    with pytest.raises(ValueError, match="normalizer must be > 0"):
        aggregate(values, mask, "token_mean", normalizer=0)


# ----------------------------------------------------------------------------- truncated importance sampling


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize("cap", [1.0, 1.3, 2.0])
def test_truncated_importance_weight_matches_loop(seed, aggregation, cap):
    logp, old, behaviour, adv, mask = random_batch(seed)  # the third tensor: a behaviour policy 0.3 away
    x = logp.clone().requires_grad_()
    loss, metrics = clipped_surrogate_loss(x, old, adv, mask, 0.2, 0.28, aggregation,
                                           behaviour_logp=behaviour, importance_sampling_cap=cap)
    (grad,) = torch.autograd.grad(loss, x)

    m = mask.tolist()
    weights = [[min(math.exp(o - b), cap) for o, b in zip(old[r].tolist(), behaviour[r].tolist())]
               for r in range(logp.shape[0])]
    y = logp.double().requires_grad_()
    terms = [[None] * logp.shape[1] for _ in range(logp.shape[0])]
    for r in range(logp.shape[0]):
        for t in range(logp.shape[1]):
            if m[r][t]:
                ratio = torch.exp(y[r, t] - float(old[r, t]))
                a = float(adv[r])
                terms[r][t] = -weights[r][t] * torch.minimum(ratio * a, torch.clamp(ratio, 0.8, 1.28) * a)
    expected = ref_aggregate(terms, m, aggregation)
    (expected_grad,) = torch.autograd.grad(torch.as_tensor(expected), y)
    assert loss.item() == pytest.approx(float(expected), abs=1e-5)
    torch.testing.assert_close(grad, expected_grad.float(), atol=1e-6, rtol=1e-5)
    assert metrics["is_weight_mean"].item() == pytest.approx(ref_aggregate(weights, m, aggregation), abs=1e-5)
    capped = [[float(w >= cap) for w in row] for row in weights]
    assert metrics["is_capped_fraction"].item() == pytest.approx(ref_aggregate(capped, m, aggregation), abs=1e-6)


def test_importance_weight_is_one_on_policy_and_capped_far_off_it():
    logp, old, _, adv, mask = random_batch(3)
    on_policy, on_metrics = clipped_surrogate_loss(logp, old, adv, mask, 0.2, None, "token_mean",
                                                   behaviour_logp=old.clone(), importance_sampling_cap=2.0)
    plain, _ = clipped_surrogate_loss(logp, old, adv, mask, 0.2, None, "token_mean")
    assert on_policy.item() == pytest.approx(plain.item(), abs=1e-7)
    assert on_metrics["is_weight_mean"].item() == pytest.approx(1.0)
    far = old - 50.0  # the sampler found every token e^50 times less likely: weight cut to the cap, no inf
    loss, metrics = clipped_surrogate_loss(logp, old, adv, mask, 0.2, None, "token_mean",
                                           behaviour_logp=far, importance_sampling_cap=2.0)
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(2.0 * plain.item(), rel=1e-5)
    assert metrics["is_capped_fraction"].item() == pytest.approx(1.0)


def test_grpo_loss_passes_the_importance_weight_and_leaves_the_kl_unweighted():
    logp, old, ref, adv, mask = random_batch(4)
    behaviour = old - 0.5
    weighted, metrics = grpo_loss(logp, old, adv, mask, clip_ratio=0.2, clip_ratio_high=None, kl_coef=0.1,
                                  aggregation="token_mean", ref_logp=ref, behaviour_logp=behaviour,
                                  importance_sampling_cap=10.0)
    policy, _ = clipped_surrogate_loss(logp, old, adv, mask, 0.2, None, "token_mean",
                                       behaviour_logp=behaviour, importance_sampling_cap=10.0)
    assert weighted.item() == pytest.approx(policy.item() + 0.1 * metrics["kl"].item(), abs=1e-6)
    assert metrics["is_weight_mean"].item() == pytest.approx(math.exp(0.5), rel=1e-5)
