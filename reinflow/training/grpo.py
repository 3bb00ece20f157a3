"""GRPO maths as pure torch functions: advantages, the clipped loss, the KL, the aggregation.

No model, no optimiser, no Prefect or Ray: every function takes tensors and returns tensors, and
``tests/test_grpo.py`` checks each one against a slow loop version. Shapes in docstrings use
``B`` = sequences in the (micro-)batch, ``T`` = token positions. The log-probs and entropies they
take come from ``reinflow.training.head_log_probs`` (at the rollout's sampling temperature).

The objective of the GRPO paper (Shao et al. 2024, DeepSeekMath, eq. 3, outcome supervision)::

    J(θ) = E[ 1/G Σ_i 1/|o_i| Σ_t { min(r_it A_i, clip(r_it, 1-ε, 1+ε) A_i) - β D_KL[π_θ || π_ref] } ]
    r_it = π_θ(o_it | q, o_i<t) / π_θold(o_it | q, o_i<t),   A_i = (R_i - mean(R)) / std(R)
    D_KL = π_ref/π_θ - log(π_ref/π_θ) - 1           (per token, the k3 estimator)

Where reinflow departs from it (each default lives in ``reinflow.config.TrainConfig``):

1. **No std normalisation by default** (``normalize_std=False``): Dr. GRPO (Liu et al. 2025)
   shows dividing by the group std up-weights near-solved and near-failed tasks (a difficulty
   bias). ``normalize_std=True`` restores the paper's ``A_i``.
2. **Token-level aggregation by default** (``aggregation="token_mean"``): the paper's
   ``1/G Σ_i 1/|o_i| Σ_t`` (our ``"sequence_mean"``) gives each token of a short answer more weight
   than each token of a long one, so long wrong answers are punished too little (Dr. GRPO's length
   bias). ``"token_mean"`` divides the sum over every trained token of the batch by one number,
   the batch's trained-token count, as DAPO (Yu et al. 2025) does; within a batch this is Dr. GRPO's
   "divide by a constant", up to the per-batch scale.
3. **Asymmetric clipping is available** (``train.clip_ratio_high``): DAPO's clip-higher, the range
   ``[1-ε_low, 1+ε_high]`` with ``ε_high >= ε_low``, so a token the old policy found unlikely can
   gain more probability per update when its episode was rewarded (DAPO: against entropy
   collapse); ``None`` keeps the paper's symmetric ``ε``. With ``A > 0`` only the upper bound
   can clip, with ``A < 0`` only the lower one, so ``ε_high`` acts on rewarded sequences only.
4. **The KL term is optional** (``kl_coef=0`` disables it, as DAPO, Dr. GRPO and nanochat do). When
   on, it is the paper's k3 estimator, added to the *loss* (not to the reward) and aggregated
   exactly like the policy term.
5. **Excluded episodes**: a reward of NaN (e.g. the judge failed) marks an episode that takes part
   in no group statistic and gets advantage 0. The paper has no such case.
6. **Groups without signal** (all valid rewards equal, including groups with one or no valid
   reward) get advantage exactly 0 and are counted, so a run can report how much of the batch
   taught nothing (DAPO's dynamic sampling would drop and resample them; we keep them, and with
   ``token_mean`` their tokens still count in the normaliser).
7. **Training-token masks**: only tokens the policy generated carry loss (agent episodes interleave
   prompts, tool outputs and several generated turns), so every sum runs over ``loss_mask``.
8. **Truncated importance sampling** (``train.importance_sampling_cap``): each trained token's
   loss is weighted by ``min(π_θold / π_behaviour, C)``, the policy the update starts from over
   the one that sampled (the engine's recorded log-probs). The paper samples from ``π_θold``
   itself; reinflow's rollout may run ahead of the update (``train.max_off_policy_steps``), and
   even on-policy the engine's numerics differ from the trainer's (vLLM, bf16).

Gradient accumulation: pass as ``normalizer`` what ``aggregate`` divides by for the *whole* batch
(its trained tokens, or its sequences with a trained token: ``train_batch.batch_normalizer``,
summed over workers) to every micro-batch, and the sum of the micro-batch losses is the
full-batch loss, gradients included. Metrics are aggregated the same way, so they sum too.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

Aggregation = Literal["token_mean", "sequence_mean"]


# ----------------------------------------------------------------------------- advantages


def group_advantages(
    rewards: Tensor, group_ids: Tensor, normalize_std: bool, eps: float = 1e-6
) -> tuple[Tensor, int]:
    """Group-relative advantages, one per episode.

    Args:
        rewards: ``[B]`` float, one reward per episode; NaN marks an excluded episode.
        group_ids: ``[B]`` long, the task (group) each episode belongs to; any integers, not
            necessarily contiguous or sorted.
        normalize_std: divide by ``(group std + eps)`` as in the GRPO paper (True) or not, as in
            Dr. GRPO (False).
        eps: added to the std before dividing.

    Returns:
        ``(advantages [B], no_signal_groups)``. ``advantages[i] = rewards[i] - mean(group)``,
        optionally ``/ (std(group) + eps)``, where mean and std run over the group's non-NaN
        rewards. NaN-reward episodes get 0. Groups whose valid rewards are all equal (including
        groups with one or no valid reward) get exactly 0 — not a rounding residue such as
        ``0.1 - mean(0.1, 0.1, 0.1)`` — and their number is ``no_signal_groups``.

    The std is the *unbiased* one (Bessel, divides by ``n - 1``), like ``torch.std``, which TRL's
    and verl's GRPO use, so numbers compare with theirs; the paper does not say. Any group that
    reaches the division has at least two distinct valid rewards, so ``n - 1 >= 1``.

    Statistics are computed in float64 (cheap: ``[B]``) and returned in ``rewards.dtype``.
    Vectorised: ``torch.unique`` + ``scatter_add``/``scatter_reduce``, no loop over groups.
    """
    if rewards.shape != group_ids.shape or rewards.dim() != 1:
        raise ValueError(f"rewards {tuple(rewards.shape)} and group_ids {tuple(group_ids.shape)} must both be [B]")
    _, group = torch.unique(group_ids, return_inverse=True)  # [B], contiguous 0..G-1
    num_groups = int(group.max()) + 1 if group.numel() else 0
    r = rewards.detach().to(torch.float64)
    valid = ~torch.isnan(r)
    r0 = torch.where(valid, r, 0.0)

    def per_group_sum(x: Tensor) -> Tensor:
        return torch.zeros(num_groups, dtype=x.dtype, device=x.device).scatter_add_(0, group, x)

    count = per_group_sum(valid.to(torch.float64))  # [G]
    mean = per_group_sum(r0) / count.clamp(min=1)  # [G]
    inf = torch.full((num_groups,), torch.inf, dtype=torch.float64, device=r.device)
    gmax = (-inf).scatter_reduce(0, group, torch.where(valid, r, -torch.inf), "amax")
    gmin = inf.scatter_reduce(0, group, torch.where(valid, r, torch.inf), "amin")
    no_signal = (count == 0) | (gmax == gmin)  # [G]

    centred = torch.where(valid, r - mean[group], 0.0)  # [B]
    if normalize_std:
        var = per_group_sum(centred.square()) / (count - 1).clamp(min=1)  # [G], unbiased
        centred = centred / (var.sqrt()[group] + eps)
    advantages = torch.where(valid & ~no_signal[group], centred, 0.0)
    return advantages.to(rewards.dtype), int(no_signal.sum())


# ----------------------------------------------------------------------------- aggregation


def aggregate(
    per_token: Tensor, loss_mask: Tensor, aggregation: Aggregation, normalizer: float | None = None
) -> Tensor:
    """Reduce ``per_token [B, T]`` over the trained tokens of ``loss_mask [B, T]`` to a scalar.

    - ``token_mean``: ``Σ_{b,t trained} x[b,t] / N`` with ``N`` the number of trained tokens.
    - ``sequence_mean``: ``Σ_b (Σ_t x[b,t] / n_b) / S`` over sequences with ``n_b >= 1`` trained
      tokens, ``S`` their number (the paper's ``1/G Σ_i 1/|o_i| Σ_t``).

    ``normalizer`` replaces ``N`` or ``S`` (``None``: this batch's own; at least 1), so
    micro-batch results sum to the full-batch result. Masked tokens contribute nothing, not even
    a NaN (``torch.where``, not a multiplication). A batch with no trained token gives 0.
    """
    if normalizer is not None and normalizer <= 0:
        raise ValueError(f"normalizer must be > 0, got {normalizer}")
    trained = loss_mask.bool()
    x = torch.where(trained, per_token, 0.0)
    if aggregation == "token_mean":
        total, own = x.sum(), int(trained.sum())
    elif aggregation == "sequence_mean":
        total, own = (x.sum(dim=-1) / trained.sum(dim=-1).clamp(min=1)).sum(), int(trained.any(dim=-1).sum())
    else:
        raise ValueError(f"aggregation must be 'token_mean' or 'sequence_mean', got {aggregation!r}")
    return total / (max(own, 1) if normalizer is None else normalizer)


# ----------------------------------------------------------------------------- losses


def kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Per-token k3 estimate of ``KL(π_θ || π_ref)`` from tokens sampled from ``π_θ``.

    ``k3 = exp(d) - d - 1`` with ``d = ref_logp - logp`` (Schulman, "Approximating KL
    divergence", 2020; the GRPO paper's eq. 4). Unbiased, and ``>= 0`` per token, unlike ``-d``.
    Computed as ``expm1(d) - d`` (exact for tiny ``d``, where ``exp(d) - 1`` rounds) and clamped
    at 0 against the last rounding.

    Args: ``logp, ref_logp``: ``[B, T]``. Returns: ``[B, T]``.
    """
    d = ref_logp - logp
    return (torch.expm1(d) - d).clamp(min=0.0)


def clipped_surrogate_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    loss_mask: Tensor,
    clip_ratio: float,
    clip_ratio_high: float | None,
    aggregation: Aggregation,
    normalizer: float | None = None,
    behaviour_logp: Tensor | None = None, importance_sampling_cap: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The PPO clipped objective per token, negated to a loss and aggregated.

    Args:
        logp: ``[B, T]`` log-probs of the sampled tokens under the policy being trained (grad).
        old_logp: ``[B, T]`` the same under the policy that sampled them (the rollout's).
        advantages: ``[B]`` one per sequence, broadcast over its tokens.
        loss_mask: ``[B, T]`` bool or 0/1, True where the policy generated the token.
        clip_ratio, clip_ratio_high: ``ε_low`` and ``ε_high`` (``train.clip_ratio``, ``train.clip_ratio_high``;
            ``None``: ``ε_low``). aggregation (``train.loss_aggregation``), normalizer: see ``aggregate``.
        behaviour_logp, importance_sampling_cap: the engine's recorded log-probs of the tokens and
            ``C`` of the weight ``w`` (``truncated_is_weight``); either ``None``: ``w = 1``.

    Per trained token, with ``ratio = exp(logp - old_logp)``::

        loss = -w * min(ratio * A, clip(ratio, 1 - ε_low, 1 + ε_high) * A)

    Masked tokens are replaced by ``logp = old_logp = 0`` before anything is computed, so garbage
    (``-inf``, NaN) there yields neither a NaN loss nor a NaN gradient.

    Returns:
        ``(loss, metrics)``; ``loss`` a scalar with grad. ``metrics`` are detached scalars,
        aggregated like the loss (so they too sum over micro-batches):

        - ``policy_loss``: the loss itself.
        - ``clip_fraction``: share of trained tokens whose clipped term is the smaller one, i.e.
          whose gradient is zero (verl's ``pg_clipfrac``).
        - ``approx_kl``: k3 estimate of ``KL(π_old || π_θ)`` on the sampled tokens,
          ``ratio - 1 - log(ratio)`` (non-negative, lower variance than ``old_logp - logp``).
        - ``ratio_mean``: mean importance ratio.
        - ``is_weight_mean``, ``is_capped_fraction`` (with ``w``): mean ``w``, share cut to ``C``.
    """
    _check_shapes(logp, old_logp, advantages, loss_mask)
    high, trained = clip_ratio if clip_ratio_high is None else clip_ratio_high, loss_mask.bool()
    log_ratio = torch.where(trained, logp.float(), 0.0) - torch.where(trained, old_logp.float(), 0.0)
    ratio = torch.exp(log_ratio)  # [B, T]
    adv = advantages.float().unsqueeze(-1)  # [B, 1]
    unclipped = -ratio * adv
    clipped = -torch.clamp(ratio, 1.0 - clip_ratio, 1.0 + high) * adv
    per_token = torch.maximum(unclipped, clipped)  # = -min(ratio A, clip(ratio) A)
    weight = None
    if behaviour_logp is not None and importance_sampling_cap is not None:
        weight = truncated_is_weight(old_logp, behaviour_logp, trained, importance_sampling_cap)
    loss = aggregate(per_token if weight is None else weight * per_token, trained, aggregation, normalizer)
    reported = {"clip_fraction": clipped > unclipped, "ratio_mean": ratio,
                "approx_kl": kl_k3(torch.zeros_like(log_ratio), log_ratio)}  # ratio - 1 - log(ratio)
    if weight is not None:
        reported |= {"is_weight_mean": weight, "is_capped_fraction": weight >= importance_sampling_cap}
    metrics = {name: aggregate(x.detach().float(), trained, aggregation, normalizer) for name, x in reported.items()}
    return loss, {"policy_loss": loss.detach()} | metrics


def truncated_is_weight(old_logp: Tensor, behaviour_logp: Tensor, loss_mask: Tensor, cap: float) -> Tensor:
    """``[B, T]`` ``min(exp(old_logp - behaviour_logp), cap)`` at trained tokens, 1 elsewhere; no grad.

    The truncated importance-sampling correction from the policy the update starts from
    (``old_logp``) to the one that sampled (``behaviour_logp``, the rollout engine's: an older policy
    when the rollout ran ahead of the update, ``train.max_off_policy_steps``; the same one up to
    numerics otherwise). Ionides 2008; verl's ``tis_imp_ratio_cap`` (PR #2953). The clipped ratio
    keeps the step near the starting policy, ``w`` corrects for the tokens having been drawn from
    another one, and the cap bounds its variance.

    The exponent is clamped at ``log(cap)`` before ``exp`` (same result, no overflow to ``inf``)."""
    if cap <= 0:
        raise ValueError(f"the importance-sampling cap must be > 0, got {cap}")
    trained = loss_mask.bool()
    log_w = torch.where(trained, old_logp.detach().float() - behaviour_logp.detach().float(), 0.0)
    return torch.exp(log_w.clamp(max=math.log(cap)))


def _check_shapes(logp: Tensor, old_logp: Tensor, advantages: Tensor, loss_mask: Tensor) -> None:
    """``logp``, ``old_logp`` and ``loss_mask`` are ``[B, T]`` and ``advantages`` is ``[B]``."""
    if not (logp.shape == old_logp.shape == loss_mask.shape and advantages.shape == logp.shape[:1]):
        raise ValueError(
            f"expected logp, old_logp, loss_mask [B, T] and advantages [B]; got {tuple(logp.shape)}, "
            f"{tuple(old_logp.shape)}, {tuple(loss_mask.shape)} and {tuple(advantages.shape)}"
        )


def grpo_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    loss_mask: Tensor,
    *,
    clip_ratio: float,
    clip_ratio_high: float | None,
    kl_coef: float,
    aggregation: Aggregation,
    ref_logp: Tensor | None = None,
    normalizer: float | None = None,
    entropy: Tensor | None = None,
    behaviour_logp: Tensor | None = None,
    importance_sampling_cap: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The GRPO loss: ``clipped_surrogate_loss + kl_coef * aggregate(kl_k3(logp, ref_logp))``.

    Args:
        logp, old_logp, advantages, loss_mask, clip_ratio, clip_ratio_high, aggregation,
            normalizer: as in ``clipped_surrogate_loss``.
        kl_coef: weight ``β`` of the KL to the reference policy; 0 leaves it out.
        ref_logp: ``[B, T]`` log-probs under the reference policy; required when ``kl_coef > 0``;
            when given with ``kl_coef = 0`` the KL is only reported.
        entropy: ``[B, T]`` per-token entropy (``head_log_probs(..., with_entropy=True)``), only reported.
        behaviour_logp, importance_sampling_cap: the truncated importance-sampling weight of
            ``clipped_surrogate_loss`` (the KL term is not weighted).

    Returns:
        ``(loss, metrics)``: the metrics of ``clipped_surrogate_loss`` plus ``kl`` (when
        ``ref_logp`` is given) and ``entropy`` (when given), all aggregated like the loss.
    """
    if kl_coef > 0 and ref_logp is None:
        raise ValueError("kl_coef > 0 needs ref_logp (log-probs under the reference policy)")
    loss, metrics = clipped_surrogate_loss(
        logp, old_logp, advantages, loss_mask, clip_ratio, clip_ratio_high, aggregation, normalizer,
        behaviour_logp=behaviour_logp, importance_sampling_cap=importance_sampling_cap,
    )
    trained = loss_mask.bool()
    if ref_logp is not None:
        kl = aggregate(
            kl_k3(torch.where(trained, logp.float(), 0.0), torch.where(trained, ref_logp.float(), 0.0)),
            trained,
            aggregation,
            normalizer,
        )
        metrics["kl"] = kl.detach()
        if kl_coef > 0:
            loss = loss + kl_coef * kl
    if entropy is not None:
        metrics["entropy"] = aggregate(entropy.detach().float(), trained, aggregation, normalizer)
    return loss, metrics
