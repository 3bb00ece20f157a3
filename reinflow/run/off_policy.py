"""Bounded off-policy training (``train.max_off_policy_steps``): which rollouts may run ahead of the
update, and how stale the samples an update trains on are.

With ``k = max_off_policy_steps > 0``, while iteration ``N`` judges and updates, the engine rolls out
the iterations after it on the weights it serves then (those of update ``N - 1``), at most ``k``
iterations ahead, one after the other. The engine takes new weights only between rollouts. A sample
of iteration ``j`` drawn on the weights of update ``v`` is ``(j - 1) - v`` updates old when the update
of iteration ``j`` starts from the weights of update ``j - 1``: 0 on-policy, at most ``k`` here. Every
row of ``rollouts/iter_j.parquet`` records its ``policy_version`` ``v``. The truncated importance
weight of ``reinflow.training.grpo`` corrects the update for it.

With one engine and one trainer the steady state runs one rollout beside each update, so an
iteration takes about ``max(rollout, judge + update)`` instead of their sum; a larger ``k`` lets the
engine get further ahead when rollouts are the faster stage, not any faster.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq


def iterations_to_roll_ahead(iteration: int, last: int, max_ahead: int, ready: set[int]) -> list[int]:
    """The iterations whose rollouts should start beside iteration ``iteration``'s update, in order:
    ``iteration + 1 .. iteration + max_ahead`` (not past ``last``) without those ``ready`` already."""
    return [j for j in range(iteration + 1, min(iteration + max_ahead, last) + 1) if j not in ready]


def staleness_metrics(judged_path: Path, iteration: int) -> dict[str, float]:
    """``staleness_mean`` / ``staleness_max``: how many updates older than the update of
    ``iteration`` starts from (update ``iteration - 1``) the weights that sampled each episode of
    ``judged_path`` were; ``{}`` for a file without versions (written before they were recorded)."""
    if "policy_version" not in pq.read_schema(judged_path).names:
        return {}
    column = pq.read_table(judged_path, columns=["policy_version"]).column("policy_version")
    versions = [v for v in column.to_pylist() if v is not None]
    if not versions:
        return {}
    staleness = [iteration - 1 - version for version in versions]
    return {"staleness_mean": sum(staleness) / len(staleness), "staleness_max": float(max(staleness))}
