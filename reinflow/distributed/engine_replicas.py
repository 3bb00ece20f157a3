"""Rollout engine replicas on Ray: ``rollout.engine_replicas`` copies of the engine, spread over the nodes.

``RayEngineReplicas(config, model_folder)`` is an ``Engine`` (``generate``, ``load_weights``,
``close``) that the rollout uses exactly like the one in-process engine; ``run.rollout_runtime.engine_for``
builds it when ``rollout.engine_replicas > 1``. It is built once per process (the rollout
runtime is cached) and lives as long as the runtime:

1. **Ray.** Connected the way ``RayPolicyGroup`` connects (``ray_cluster.init_ray``): a Ray
   already initialised in this process is used as it is; ``train.ray_address`` (else
   ``$RAY_ADDRESS``) joins that cluster; otherwise a private, quiet local Ray starts with enough
   logical CPUs for the replicas *and* the policy workers of ``backbone: ray`` (the engine is
   built first, so its Ray is the one the policy group then finds). ``close`` shuts down only a
   Ray it started.
2. **Placement.** One placement group, one bundle per replica (``rollout.cpus_per_engine`` CPUs,
   ``rollout.gpus_per_engine`` GPUs), strategy ``SPREAD`` (or ``$REINFLOW_RAY_PLACEMENT``, the
   same override as the policy workers'): on a multi-node cluster the replicas go to different
   nodes, as evenly as Ray can; on one machine they all land there. The cluster has
   ``train.ray_start_timeout_seconds`` to grant the bundles and load the engines.
3. **Replicas.** One async Ray actor per bundle (``_EngineReplica``), each holding the configured
   engine (``factory.create_engine``, ``rollout.max_batch_size`` rows of its own) with
   ``torch.set_num_threads`` = its CPU share, set up with the environment the driver forwards
   (``ray_cluster.forwarded_env``). The model folder is the driver's where it exists on the
   replica's node; elsewhere the replica resolves ``model.path`` itself. ``nodes`` lists, per
   replica, its node id, IP, pid, threads and device.

Routing (``reinflow.distributed.replica_router.ReplicaRouter``, on the driver): a request goes to the replica with the fewest requests
in flight (ties: the one that was sent fewer so far), except that a prompt *extending* a prompt
recently sent to a replica (it starts with that whole prompt: the same GRPO group's prompt, or an
agent's next turn re-sending its conversation) goes to that replica, whose prefix cache holds it,
as long as that replica has fewer than ``max_batch_size`` requests in flight (a full replica
would queue it: then the least busy one takes it). Requests without a seed get one from the
driver's own generator (seed 0, like ``HFEngine``), so unseeded replicas never repeat each other's
draws; a seeded request gives what one in-process ``HFEngine`` gives (seeded samples do not depend
on the batch). A caller that stops waiting (episode timeout) cancels the replica's request.

Weights: ``load_weights(state_dict)`` ships the weights to the object store **once** (NumPy arrays,
read zero-copy by replicas on the same node) and waits until every replica has copied them in; a
folder path is handed over as a path, read by each replica on its own node. Like ``HFEngine`` it
refuses while requests are in flight (``EngineBusyError``).

Failures: a replica that dies (killed, out of memory, its node lost) makes the current or next call
raise ``EngineReplicaLost`` (a ``RunInterrupted``: the rollout stops, the run resumes) as soon as Ray
reports it; a replica's engine failing (``EngineClosedError`` inside it) does the same. The engine
is then unusable: every replica is killed and its resources freed at once, and every later call
raises ``EngineReplicaLost``. An error that is the request's (a prompt the engine rejects) is
re-raised as it is. Replicas are also killed when the engine is garbage-collected.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
import weakref
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reinflow.config import ExperimentConfig
from reinflow.distributed.ray_cluster import (
    forwarded_env,
    from_numpy,
    init_ray,
    lost_actor_errors,
    lost_actor_line,
    placement_strategy,
    release,
    reserve_bundles,
    shutdown_ray,
    to_numpy,
    wait_for_all,
)
from reinflow.distributed.replica_router import ReplicaRouter
from reinflow.errors import RunInterrupted

if TYPE_CHECKING:
    import torch
    from ray.exceptions import RayTaskError

    from reinflow.engines.base import Generation, SamplingParams

# torch is imported lazily: a replica process imports this module before ``_EngineReplica.__init__``
# has set the forwarded environment that OpenMP reads when torch loads.

CLOSE_TIMEOUT_S = 30.0
"""How long ``close`` waits for the replicas to stop their engines before killing them."""

_log = logging.getLogger(__name__)


class EngineReplicaLost(RunInterrupted):
    """An engine replica died (or its engine failed) and the replicas can no longer serve.

    The rollout stops at it; a resumed run rebuilds the engine."""


# ----------------------------------------------------------------------------- the replica actor


class _EngineReplica:
    """One engine inside an async Ray actor process, alive as long as the driver's engine."""

    def __init__(self, threads: int, env: dict[str, str]) -> None:
        os.environ.update(env)  # before torch loads OpenMP (see the imports above)
        import torch

        torch.set_num_threads(threads)
        self.threads = threads
        self.engine = None

    async def setup(self, kind: str, model_folder: str, model_path: str, dtype: str, max_model_len: int,
                    max_batch_size: int, device: str | None, vllm_memory_fraction: float) -> dict[str, Any]:
        """Load the engine; returns where this replica runs (node id, IP, pid, threads, device) and
        how long loading took."""
        import ray
        import torch

        from reinflow.config.models import resolve_model
        from reinflow.engines.factory import create_engine

        started = time.perf_counter()
        torch.set_num_threads(self.threads)
        folder = Path(model_folder)
        if not (folder / "config.json").is_file():
            folder = resolve_model(model_path)
        self.engine = create_engine(kind, folder, dtype=dtype, max_model_len=max_model_len,
                                    max_batch_size=max_batch_size, device=device,
                                    vllm_memory_fraction=vllm_memory_fraction)
        return {"node_id": ray.get_runtime_context().get_node_id(), "ip": ray.util.get_node_ip_address(),
                "pid": os.getpid(), "threads": torch.get_num_threads(),
                "device": str(getattr(self.engine, "device", device)), "setup_seconds": time.perf_counter() - started}

    async def generate(self, prompt_ids: list[int], sampling: SamplingParams) -> Generation:
        """The engine's ``generate``, awaited here (many at once: the actor is async)."""
        return await self.engine.generate(prompt_ids, sampling)

    async def load_weights(self, weights: dict[str, Any] | str) -> None:
        """The engine's ``load_weights`` from NumPy arrays or a folder path."""
        self.engine.load_weights(Path(weights) if isinstance(weights, str) else from_numpy(weights))

    async def close(self) -> None:
        """Stop the engine (once it was loaded)."""
        if self.engine is not None:
            await self.engine.close()


# ----------------------------------------------------------------------------- the engine


class RayEngineReplicas:
    """``rollout.engine_replicas`` engines on Ray behind the ``Engine`` protocol; see the module docstring.

    ``placement``: the placement group strategy (default ``$REINFLOW_RAY_PLACEMENT`` or ``SPREAD``).
    How long the cluster may take to grant the replicas' resources and load their engines is
    ``train.ray_start_timeout_seconds``."""

    def __init__(self, config: ExperimentConfig, model_folder: Path, *, placement: str | None = None) -> None:
        rollout = config.rollout
        self.replicas = rollout.engine_replicas
        self.placement = placement_strategy(placement)
        self.router = ReplicaRouter(self.replicas, rollout.max_batch_size)
        self.nodes: list[dict[str, Any]] = []  # per replica, once the engines are loaded
        self._seeds = random.Random(0)
        self._broken: str | None = None
        self._handles: dict[str, Any] = {"actors": [], "pg": None}
        self._finalizer = weakref.finalize(self, release, self._handles)
        self.started_ray = init_ray(_cpus_needed(config), config.train.ray_address)
        try:
            self._start(config)
            device = "cpu" if rollout.gpus_per_engine == 0 else None
            self.nodes = self._wait(
                [actor.setup.remote(rollout.engine, str(model_folder), config.model.path, config.model.dtype,
                                    rollout.max_model_len, rollout.max_batch_size, device,
                                    rollout.vllm_memory_fraction)
                 for actor in self._actors],
                "start", config.train.ray_start_timeout_seconds,
            )
        except BaseException:
            self._finalizer()
            self._shutdown_ray()
            raise
        _log.info("engine replicas: %d on %d node(s)", self.replicas, len({n["node_id"] for n in self.nodes}))

    # ---- the Engine interface -----------------------------------------------------------------

    async def generate(self, prompt_ids: list[int], sampling: SamplingParams) -> Generation:
        """Route the request to a replica (see the module docstring) and await its result there."""
        import ray

        self._check()
        if sampling.seed is None:
            sampling = replace(sampling, seed=self._seeds.getrandbits(63))
        replica = self.router.pick(prompt_ids)
        ref = self._actors[replica].generate.remote(list(prompt_ids), sampling)
        try:
            return await ref
        except asyncio.CancelledError:
            ray.cancel(ref)
            raise
        except lost_actor_errors() as error:
            raise EngineReplicaLost(self._fail(self._lost("generate", replica, error))) from error
        except ray.exceptions.RayTaskError as error:
            raise self._task_error("generate", replica, error) from None
        finally:
            self.router.done(replica)

    def load_weights(self, weights: Mapping[str, torch.Tensor] | Path) -> None:
        """Hand the weights (a state dict, put in the object store once, or a folder path) to every
        replica and wait until all have loaded them."""
        import ray

        from reinflow.engines.hf import EngineBusyError

        self._check()
        if self.router.busy:
            raise EngineBusyError(f"load_weights with {self.router.busy} request(s) in flight: await every episode first")
        ref = ray.put(str(weights) if isinstance(weights, (str, Path)) else to_numpy(dict(weights)))
        self._wait([actor.load_weights.remote(ref) for actor in self._actors], "load_weights", None)

    async def close(self) -> None:
        """Stop the replicas' engines (waiting up to ``CLOSE_TIMEOUT_S``), kill the replicas, free
        their placement group and disconnect from Ray if this engine connected. Safe to call twice."""
        import ray

        if self._actors and self._broken is None:
            refs = [actor.close.remote() for actor in self._actors]
            try:
                await asyncio.wait_for(asyncio.gather(*refs), CLOSE_TIMEOUT_S)
            except (TimeoutError, ray.exceptions.RayError):  # a replica dead, failing or slow: killed below
                pass
        self._broken = self._broken or "closed"
        self._finalizer()
        self._shutdown_ray()

    @property
    def requests_per_replica(self) -> list[int]:
        """Requests sent to each replica so far (logs, tests)."""
        return list(self.router.sent)

    # ---- plumbing -----------------------------------------------------------------------------

    @property
    def _actors(self) -> list[Any]:
        return self._handles["actors"]

    def _start(self, config: ExperimentConfig) -> None:
        """Reserve one bundle per replica (waiting up to ``train.ray_start_timeout_seconds``) and start
        one async ``_EngineReplica`` actor in each (the engines load in ``setup``)."""
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        rollout = config.rollout
        bundle: dict[str, float] = {"CPU": rollout.cpus_per_engine} | (
            {"GPU": rollout.gpus_per_engine} if rollout.gpus_per_engine else {})
        pg = reserve_bundles(self._handles, self.replicas, bundle, self.placement,
                             f"reinflow-engine-{os.getpid()}-{id(self):x}", config.train.ray_start_timeout_seconds,
                             what="engine replica(s)", remedy="lower rollout.engine_replicas / cpus_per_engine / "
                             "gpus_per_engine or add nodes")
        env, threads = forwarded_env(), max(1, int(rollout.cpus_per_engine))
        actor_class = ray.remote(_EngineReplica)
        for index in range(self.replicas):
            self._actors.append(actor_class.options(
                num_cpus=rollout.cpus_per_engine, num_gpus=rollout.gpus_per_engine, max_restarts=0,
                max_concurrency=max(1000, 2 * rollout.concurrency),
                scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=pg,
                                                                     placement_group_bundle_index=index),
                name=f"reinflow-engine-{index}-{os.getpid()}-{id(self):x}",
            ).remote(threads, env))

    def _check(self) -> None:
        if self._broken is not None:
            raise EngineReplicaLost(f"the engine replicas can no longer be used ({self._broken}); rebuild the engine")

    def _fail(self, reason: str) -> str:
        """Mark the engine unusable and free every replica and the placement group at once."""
        self._broken = reason
        self._finalizer()
        return reason

    def _lost(self, what: str, index: int, error: BaseException) -> str:
        """One line naming the dead replica (index, pid, node) and the first line of Ray's report."""
        return lost_actor_line(what, f"engine replica {index} of {self.replicas}", self.nodes, index, error)

    def _task_error(self, what: str, index: int, error: RayTaskError) -> BaseException:
        """The exception a replica's call raised, as the caller should see it: the engine's own failure
        (a ``RunInterrupted``) breaks the replicas; anything else (a rejected request) is the request's."""
        cause = error.cause or error
        if isinstance(cause, RunInterrupted):
            return EngineReplicaLost(self._fail(self._lost(what, index, cause)))
        return cause

    def _wait(self, refs: list, what: str, timeout_s: float | None) -> list:
        """Every ref's result, in order; a lost replica (or the timeout) raises ``EngineReplicaLost``
        at once, without waiting for the others."""
        return wait_for_all(
            refs, timeout_s,
            on_timeout=lambda late: EngineReplicaLost(
                self._fail(f"{what}: no answer from engine replica(s) {late} within {timeout_s} s")),
            on_lost=lambda index, error: EngineReplicaLost(self._fail(self._lost(what, index, error))),
            on_task_error=lambda index, error: self._task_error(what, index, error),
        )

    def _shutdown_ray(self) -> None:
        """Disconnect from Ray if this engine connected it (see ``ray_cluster.shutdown_ray``)."""
        shutdown_ray(self.started_ray)
        self.started_ray = False


def _cpus_needed(config: ExperimentConfig) -> float:
    """Logical CPUs a private local Ray needs: the replicas', plus the policy workers' on ``backbone: ray``."""
    needed = config.rollout.engine_replicas * config.rollout.cpus_per_engine
    if config.backbone == "ray":
        needed += config.train.workers * config.train.cpus_per_worker
    return needed
