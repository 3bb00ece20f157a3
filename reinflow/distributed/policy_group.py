"""The Ray backbone of the policy update: long-lived policy workers with one process group.

``RayPolicyGroup(config, model_folder)`` has the interface of ``reinflow.training.policy.PolicyTrainer``
that the training flow uses (``train_step``, ``engine_weights``, ``state``, ``load_state``) plus
``close``. It is built **once per training run**:

1. **Ray.** ``ray_cluster.init_ray``: when Ray is already initialised in this process (a user's
   own ``ray.init``) it uses that; with ``config.train.ray_address`` set (or else
   ``$RAY_ADDRESS``) it connects to that cluster (``auto``, ``host:port`` or ``ray://host:port``;
   ``ray start --head`` elsewhere, see ``docs/RAY.md``); otherwise it starts a private local
   instance, quiet (no dashboard, worker logs not forwarded, Ray's own logging at ERROR) with
   ``max(cpu_count, workers * cpus_per_worker)`` CPUs. ``close`` undoes only what the group did:
   a local instance it started shuts down, a cluster it joined keeps running, a Ray that was
   already initialised stays as it was.
2. **Placement.** One placement group, one bundle per worker (``cpus_per_worker`` CPUs,
   ``gpus_per_worker`` GPUs). The strategy is ``SPREAD`` by default: on a multi-node cluster the
   workers go to different nodes, as evenly as Ray can (two nodes, four workers: two each), and
   share nodes only where there are more workers than nodes with room; on one machine they all
   land there. ``placement="PACK"`` (or ``$REINFLOW_RAY_PLACEMENT``) keeps them on one node
   where they fit (the all-reduce stays on the machine); ``STRICT_PACK`` / ``STRICT_SPREAD``
   insist. The cluster has ``train.ray_start_timeout_seconds`` to grant the bundles and start the
   workers; past it the group fails with the cluster's resources in the message.
3. **Workers.** ``config.train.workers`` actors (``reinflow.distributed.policy_worker.PolicyWorker``),
   each holding a ``PolicyTrainer(rank=r, world_size=n)`` with ``torch.set_num_threads`` = its
   CPU share. Rank 0 picks a free TCP port on its own node's IP; every rank joins one
   ``torch.distributed`` group there (``gloo`` on CPU, ``nccl`` when ``gpus_per_worker >= 1``;
   a rank waits ``train.ray_collective_timeout_seconds`` for the others in a collective). The
   trainers broadcast rank 0's weights at start, so every rank begins identical. The model folder
   is the driver's resolved ``model_folder`` where it exists on the worker's node; elsewhere the
   worker resolves ``config.model.path`` itself (a built-in or hub model is built / downloaded on
   that node).

Per iteration, ``train_step(samples)``:

- computes the **global** loss normaliser (``batch_normalizer`` over all samples, exactly what
  one process would divide by; or takes it as ``train_step(samples, normalizer)`` like
  ``PolicyTrainer``) and splits the samples into ``workers`` shards balanced by tokens
  (``shard_samples``: longest first onto the lightest shard; deterministic);
- runs every rank's ``PolicyTrainer.train_step(shard, normaliser)`` at once. Each rank's
  gradients are its share of the batch gradient; they are all-reduced (SUM), so every rank takes
  the single-process optimizer step and holds the same parameters afterwards;
- returns one metrics dict (``combine_metrics``): the additive GRPO metrics are summed over ranks
  (each rank's share used the global normaliser, so the sum is the batch value: ``loss``,
  ``policy_loss``, ``kl``, ``entropy``, ``clip_fraction``, ``approx_kl``, ``ratio_mean``,
  ``is_weight_mean``, ``is_capped_fraction``) and so is
  ``trained_tokens``; ``logprob_mismatch`` is the token-weighted mean over ranks; ``grad_norm`` and
  ``lr`` are global (rank 0's); ``update_seconds`` is the slowest rank's compute time and
  ``update_tokens_per_second`` = all ranks' processed tokens / that time (the group's rate). Two
  keys are added: ``update_wall_seconds`` (the driver's wall time of the call) and
  ``update_overhead_seconds`` = wall − slowest rank's compute (dispatch, serialisation, waiting:
  the Ray backbone's fixed cost per iteration, see ``bench/ray_overhead.py``).

``engine_weights()`` and ``state()`` come from rank 0 (all ranks hold the same parameters);
``state()`` adds ``rank_rng``, the other ranks' RNG states, so a resume is exact with dropout too.
Weights travel as NumPy arrays through Ray's object store and are read zero-copy here: the
returned tensors are **read-only** views of the object store (the engine's ``load_weights``
copies them into its own parameters; copy before writing to them). ``load_state(state)`` puts the
state into the object store once and restores it on every rank.

Failures: an actor that dies (killed, out of memory, its node lost) makes the current or next
call raise ``RayWorkerLost`` (a ``RunInterrupted``) as soon as Ray reports it, without waiting for
the surviving ranks (which may be blocked in the all-reduce). The group is then unusable: its
workers are killed and their resources freed at once, every later call raises ``RayWorkerLost``
too, and a resumed run builds a new group (in this process or another) and loads the last
checkpoint; ``close()`` still disconnects Ray. An exception inside ``train_step`` on any rank
breaks the group the same way (its ranks may disagree after it); one inside ``load_state`` (e.g.
a checkpoint of another model) is re-raised and leaves the group usable. Workers are also killed
when the group is garbage-collected; Ray kills them anyway when the driver process exits.

Rollout engine replicas (``rollout.engine_replicas > 1``, ``reinflow.distributed.engine_replicas``) join
Ray through the same ``ray_cluster.init_ray`` and use the same placement convention, in a placement
group of their own.
"""

from __future__ import annotations

import logging
import os
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reinflow.config import ExperimentConfig
from reinflow.distributed.policy_worker import PolicyWorker
from reinflow.distributed.ray_cluster import (
    forwarded_env,
    from_numpy,
    init_ray,
    lost_actor_line,
    placement_strategy,
    release,
    reserve_bundles,
    shutdown_ray,
    wait_for_all,
)
from reinflow.errors import RunInterrupted

if TYPE_CHECKING:
    import torch

    from reinflow.training.train_batch import TrainSample

# torch (and everything that imports it) is imported lazily, as in ``policy_worker``.

SUMMED_METRICS = frozenset(
    {"loss", "policy_loss", "kl", "entropy", "clip_fraction", "approx_kl", "ratio_mean", "is_weight_mean",
     "is_capped_fraction", "trained_tokens"}
)
"""Metrics that are each rank's share of the batch value (the global normaliser): summed."""

_log = logging.getLogger(__name__)


class RayWorkerLost(RunInterrupted):
    """A policy worker died (or stopped answering) and the group can no longer train.

    Close the group; a resumed run rebuilds it from the last checkpoint."""


# ----------------------------------------------------------------------------- pure helpers


def shard_samples(samples: Sequence[TrainSample], shards: int) -> list[list[TrainSample]]:
    """Split ``samples`` into ``shards`` lists balanced by tokens (``len(token_ids)``).

    Longest first (ties: the earlier sample), each onto the shard with the fewest tokens so far
    (ties: the lower rank): the classic greedy, within one longest sample of the best split.
    Each shard keeps the samples' original order. Deterministic; every sample appears once;
    shards may be empty when there are fewer samples than shards.
    """
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    loads = [0] * shards
    members: list[list[int]] = [[] for _ in range(shards)]
    for index in sorted(range(len(samples)), key=lambda i: (-len(samples[i].token_ids), i)):
        target = min(range(shards), key=lambda r: (loads[r], r))
        loads[target] += len(samples[index].token_ids)
        members[target].append(index)
    return [[samples[i] for i in sorted(indices)] for indices in members]


def combine_metrics(per_rank: Sequence[dict[str, float]]) -> dict[str, float]:
    """One metrics dict from every rank's ``train_step`` metrics (see the module docstring)."""
    combined = dict(per_rank[0])
    for key in SUMMED_METRICS:
        if any(key in m for m in per_rank):
            combined[key] = float(sum(m.get(key, 0.0) for m in per_rank))
    tokens = [m.get("trained_tokens", 0.0) for m in per_rank]
    if "logprob_mismatch" in combined:
        total = sum(tokens)
        combined["logprob_mismatch"] = (
            sum(m.get("logprob_mismatch", 0.0) * t for m, t in zip(per_rank, tokens)) / total if total else 0.0
        )
    seconds = [m["update_seconds"] for m in per_rank]
    processed = sum(m["update_tokens_per_second"] * s for m, s in zip(per_rank, seconds))
    combined["update_seconds"] = max(seconds)
    combined["update_tokens_per_second"] = processed / max(seconds) if max(seconds) > 0 else 0.0
    return combined



# ----------------------------------------------------------------------------- the group


class RayPolicyGroup:
    """``config.train.workers`` long-lived policy workers on Ray; see the module docstring.

    ``placement``: the placement group strategy (default ``$REINFLOW_RAY_PLACEMENT`` or ``SPREAD``).
    ``timeout_s``: how long any call waits for its workers before declaring them lost (``None``:
    no limit; a long update is not a failure). How long the cluster may take to grant the
    workers' resources and start them is ``train.ray_start_timeout_seconds``.
    """

    def __init__(self, config: ExperimentConfig, model_folder: Path, *, placement: str | None = None,
                 timeout_s: float | None = None) -> None:
        train = config.train
        self.config = config
        self.workers = train.workers
        self.timeout_s = timeout_s
        self.placement = placement_strategy(placement)
        self._broken: str | None = None
        self.nodes: list[dict[str, Any]] = []  # per rank, once the workers are set up
        self._handles: dict[str, Any] = {"actors": [], "pg": None}
        self._finalizer = weakref.finalize(self, release, self._handles)  # also when garbage-collected
        self.started_ray = init_ray(train.workers * train.cpus_per_worker, train.ray_address)
        try:
            self._start_workers()
            backend = "nccl" if train.gpus_per_worker >= 1 else "gloo"
            self.nodes = self._setup_workers(model_folder, backend)
        except BaseException:
            self.close()
            raise
        _log.info("policy group: %d worker(s) on %d node(s), %s", self.workers,
                  len({n["node_id"] for n in self.nodes}), backend)

    def _start_workers(self) -> None:
        """Reserve one bundle per worker (waiting up to ``train.ray_start_timeout_seconds``) and start
        one ``PolicyWorker`` actor in each."""
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        train = self.config.train
        bundle: dict[str, float] = {"CPU": train.cpus_per_worker} | (
            {"GPU": train.gpus_per_worker} if train.gpus_per_worker else {})
        pg = reserve_bundles(self._handles, self.workers, bundle, self.placement,
                             f"reinflow-policy-{os.getpid()}-{id(self):x}", train.ray_start_timeout_seconds,
                             what="worker(s)", remedy="lower train.workers / cpus_per_worker / gpus_per_worker "
                             "or add nodes")
        env, threads = forwarded_env(), max(1, int(train.cpus_per_worker))
        actor_class = ray.remote(PolicyWorker)
        for rank in range(self.workers):
            strategy = PlacementGroupSchedulingStrategy(placement_group=pg, placement_group_bundle_index=rank)
            self._actors.append(actor_class.options(
                num_cpus=train.cpus_per_worker, num_gpus=train.gpus_per_worker, max_restarts=0,
                scheduling_strategy=strategy, name=f"reinflow-policy-rank{rank}-{os.getpid()}-{id(self):x}",
            ).remote(threads, env))

    def _setup_workers(self, model_folder: Path, backend: str) -> list[dict[str, Any]]:
        """Rank 0's rendezvous, then every rank's ``setup`` at once (they broadcast); returns where
        each rank runs. Both wait up to ``train.ray_start_timeout_seconds``."""
        start_timeout_s = self.config.train.ray_start_timeout_seconds
        device = "cuda" if self.config.train.gpus_per_worker > 0 else "cpu"
        master = self._call([self._actors[0].endpoint.remote()], "start", start_timeout_s)[0]
        return self._call(
            [actor.setup.remote(self.config, str(model_folder), rank, self.workers, master, backend, device)
             for rank, actor in enumerate(self._actors)],
            "start", start_timeout_s,
        )

    # ---- the PolicyTrainer interface ----------------------------------------------------------

    def train_step(
        self, samples: list[TrainSample], normalizer: float | None = None,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> dict[str, float]:
        """One iteration's update on the whole batch, split over the workers; merged metrics.

        ``normalizer``: the batch's loss normaliser, as for ``PolicyTrainer.train_step``; ``None``
        uses ``batch_normalizer`` over all ``samples`` (what one process would use).
        ``on_progress(1, 1)`` is called once, when the step is done (the workers report no progress)."""
        import ray

        from reinflow.training.train_batch import batch_normalizer

        self._check()
        started = time.perf_counter()
        if normalizer is None:
            normalizer = batch_normalizer(samples, self.config.train.loss_aggregation)
        normalizer = float(normalizer)
        shards = shard_samples(samples, self.workers)
        try:
            per_rank = self._call(
                [actor.train_step.remote(shard, normalizer) for actor, shard in zip(self._actors, shards)],
                "train_step", self.timeout_s,
            )
        except RayWorkerLost:
            raise
        except ray.exceptions.RayError as error:  # an exception inside a rank: the ranks may now disagree
            self._fail(f"train_step failed on a worker: {error}")
            raise
        metrics = combine_metrics(per_rank)
        if on_progress is not None:
            on_progress(1, 1)
        wall = time.perf_counter() - started
        metrics["update_wall_seconds"] = wall
        metrics["update_overhead_seconds"] = max(0.0, wall - metrics["update_seconds"])
        return metrics

    def engine_weights(self) -> dict[str, torch.Tensor]:
        """The full policy's weights from rank 0, as read-only tensors (see the module docstring)."""
        return self.engine_weights_later()()

    def engine_weights_later(self) -> Callable[[], dict[str, torch.Tensor]]:
        """:meth:`engine_weights` as they are now: rank 0 puts them into its object store before its
        next step (its calls run in order); the returned function ships them here and waits for them."""
        self._check()
        ref = self._actors[0].engine_weights.remote()
        return lambda: from_numpy(self._call([ref], "engine_weights", self.timeout_s)[0])

    def state(self) -> dict:
        """Rank 0's ``PolicyTrainer.state()`` (on the CPU) plus ``rank_rng``: the RNG states of
        ranks 1.. (they differ from rank 0's where dropout draws random numbers)."""
        self._check()
        refs = [self._actors[0].state.remote()] + [actor.rng_state.remote() for actor in self._actors[1:]]
        state, *rank_rng = self._call(refs, "state", self.timeout_s)
        return state | {"rank_rng": rank_rng}

    def hold_state(self, until: Callable[[], object]) -> None:
        """Nothing to hold: ``state()`` returned copies fetched from the workers."""

    def load_state(self, state: dict) -> None:
        """Restore ``state`` on every rank (shipped to the object store once). Ranks 1.. get their
        own RNG state from ``rank_rng`` when it has one per rank, else rank 0's (a checkpoint of
        the debug backbone, say)."""
        import ray

        self._check()
        ref = ray.put({key: value for key, value in state.items() if key != "rank_rng"})
        rank_rng = state.get("rank_rng") or []
        own = [None] + (list(rank_rng) if len(rank_rng) == self.workers - 1 else [None] * (self.workers - 1))
        self._call([actor.load_state.remote(ref, rng) for actor, rng in zip(self._actors, own)],
                   "load_state", self.timeout_s)

    def close(self) -> None:
        """Kill the workers, free their placement group and disconnect from Ray if this group
        connected (a local Ray it started shuts down). Safe to call twice."""
        self._finalizer()
        self._broken = self._broken or "closed"
        shutdown_ray(self.started_ray)
        self.started_ray = False

    def __enter__(self) -> RayPolicyGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- plumbing -----------------------------------------------------------------------------

    @property
    def _actors(self) -> list[Any]:
        return self._handles["actors"]

    def _fail(self, reason: str) -> str:
        """Mark the group unusable and free its workers and resources at once (a resumed run can
        build a new group in this process even before ``close``); returns ``reason``."""
        self._broken = reason
        self._finalizer()
        return reason

    def _lost(self, what: str, index: int, error: BaseException) -> str:
        """One line naming the dead worker (rank, pid, node) and the first line of Ray's report."""
        return lost_actor_line(what, f"policy worker {index} of {self.workers}", self.nodes, index, error)

    def _check(self) -> None:
        if self._broken is not None:
            raise RayWorkerLost(f"the policy group can no longer be used ({self._broken}); close it and rebuild")

    def _call(self, refs: list, what: str, timeout_s: float | None) -> list:
        """Wait for every ref; the first lost worker (or the timeout) raises ``RayWorkerLost`` at
        once, without waiting for the other ranks."""
        return wait_for_all(
            refs, timeout_s,
            on_timeout=lambda ranks: RayWorkerLost(
                self._fail(f"{what}: no answer from policy worker(s) {ranks} within {timeout_s} s")),
            on_lost=lambda index, error: RayWorkerLost(self._fail(self._lost(what, index, error))),
        )
