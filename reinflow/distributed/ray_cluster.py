"""The Ray plumbing the policy workers (``policy_group``) and the engine replicas (``engine_replicas``) share.

- **Connecting.** ``init_ray`` joins the Ray this process should use: one already initialised here
  (a user's own ``ray.init``) as it is; else the cluster at ``train.ray_address`` or
  ``$RAY_ADDRESS`` (``cluster_address``); else a private, quiet local instance (no dashboard,
  worker logs not forwarded, Ray's own logging at ERROR), with a ``ray_reaper`` child so that none
  of its processes outlives a SIGKILLed driver. It says whether it connected, so that the caller's
  ``shutdown_ray`` undoes only what it did.
- **Placing.** ``reserve_bundles`` asks for one placement group, one bundle per actor, with the
  strategy ``placement_strategy`` resolves: the caller's, else ``$REINFLOW_RAY_PLACEMENT``, else
  ``SPREAD`` (actors on different nodes of a cluster, as evenly as Ray can; on one machine all
  land there). ``forwarded_env`` is the environment an actor sets before it imports torch, so
  that it also reaches actors on other nodes.
- **Moving tensors.** ``to_numpy`` / ``from_numpy``: state dicts travel through Ray's object store
  as NumPy arrays (shipped and read zero-copy; the tensors read back are read-only views), a tied
  tensor once (``SameAs``).
- **Watching actors.** ``wait_for_all`` collects results and fails fast on the first lost actor
  (``LOST_ACTOR_ERRORS``) or on the deadline, without waiting for the others; ``lost_actor_line``
  names the lost actor in one line; ``release`` kills actors and frees their placement group.

Ray, torch and NumPy are imported inside the functions: an actor process imports this module
before it has set the forwarded environment, and OpenMP reads ``OMP_WAIT_POLICY`` when torch loads
it.
"""

from __future__ import annotations

import logging
import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from reinflow.distributed import ray_reaper
from reinflow.errors import one_line
from reinflow.faults import CRASH_ENV

if TYPE_CHECKING:
    import torch

PLACEMENT_ENV = "REINFLOW_RAY_PLACEMENT"
PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
DEFAULT_PLACEMENT = "SPREAD"
"""Actors on different nodes of a cluster where it has several (see the module docstring)."""
FORWARDED_ENV = ("OMP_WAIT_POLICY", "GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME", "HF_HUB_OFFLINE",
                 "REINFLOW_CACHE_DIR", "TOKENIZERS_PARALLELISM", CRASH_ENV)
"""Environment variables the driver hands to its actors (where set here), so that they also reach
actors on other nodes of a cluster. ``OMP_WAIT_POLICY`` defaults to ``PASSIVE`` (spinning OpenMP
threads are 3-6x slower on a small CPU)."""
REAPERS: list = []
"""The ``ray_reaper`` child of the local Ray this process started (``init_ray``), ended by ``shutdown_ray``."""


# ----------------------------------------------------------------------------- connecting


def cluster_address(configured: str | None) -> str | None:
    """The Ray cluster to join: ``train.ray_address`` when set, else ``$RAY_ADDRESS``, else ``None``
    (start a private local Ray)."""
    return configured or os.environ.get("RAY_ADDRESS") or None


def init_ray(cpus_needed: float = 0, address: str | None = None) -> bool:
    """Make sure this process is connected to Ray; returns whether this call connected it.

    Already initialised: nothing to do (``False``). A cluster address (``address``, i.e.
    ``train.ray_address``, else ``$RAY_ADDRESS``; see ``cluster_address``): connect to that
    cluster, quietly. Otherwise start a private, quiet local instance with ``max(cpu_count,
    cpus_needed)`` logical CPUs (never an existing ``ray start`` instance: use ``auto`` for that)."""
    import ray

    if ray.is_initialized():
        return False
    quiet = {"log_to_driver": False, "logging_level": logging.ERROR, "configure_logging": True}
    cluster = cluster_address(address)
    if cluster:
        ray.init(address=cluster, **quiet)
        return True
    ray.init(address="local", num_cpus=max(os.cpu_count() or 1, math.ceil(cpus_needed)), include_dashboard=False,
             **quiet)
    REAPERS.append(ray_reaper.start(os.path.dirname(ray.__file__)))  # its agents end with this process too
    return True


def shutdown_ray(started_ray: bool) -> None:
    """Disconnect from Ray when ``started_ray`` (what ``init_ray`` returned) says this caller connected
    it (a local Ray it started shuts down); a Ray someone else initialised stays as it is."""
    import ray

    if started_ray and ray.is_initialized():
        ray.shutdown()
    while started_ray and REAPERS:
        reaper = REAPERS.pop()
        reaper.terminate()
        reaper.wait(timeout=30)


# ----------------------------------------------------------------------------- placing


def placement_strategy(placement: str | None) -> str:
    """The placement group strategy: ``placement``, else ``$REINFLOW_RAY_PLACEMENT``, else ``SPREAD``
    (upper-cased; one of ``PLACEMENT_STRATEGIES`` or ``ValueError``)."""
    strategy = (placement or os.environ.get(PLACEMENT_ENV) or DEFAULT_PLACEMENT).upper()
    if strategy not in PLACEMENT_STRATEGIES:
        raise ValueError(f"placement must be one of {PLACEMENT_STRATEGIES}, got {strategy!r}")
    return strategy


def forwarded_env() -> dict[str, str]:
    """The ``FORWARDED_ENV`` variables set in this process, with ``OMP_WAIT_POLICY=PASSIVE`` where unset."""
    env = {key: os.environ[key] for key in FORWARDED_ENV if key in os.environ}
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


def reserve_bundles(handles: dict[str, Any], count: int, bundle: dict[str, float], strategy: str, name: str,
                    timeout_s: float, *, what: str, remedy: str) -> Any:
    """One placement group of ``count`` copies of ``bundle``, kept in ``handles["pg"]`` (so that
    ``release`` frees it whatever happens next) and returned once the cluster grants it.

    Waits up to ``timeout_s``; then ``RuntimeError`` naming ``count`` ``what`` (e.g. "policy
    worker(s)"), the cluster's resources and ``remedy`` (which settings to lower)."""
    import ray
    from ray.util.placement_group import placement_group

    pg = handles["pg"] = placement_group([dict(bundle) for _ in range(count)], strategy=strategy, name=name)
    if not pg.wait(timeout_seconds=timeout_s):
        raise RuntimeError(
            f"Ray could not reserve {count} {what} of {bundle} ({strategy}) within {timeout_s:.0f} s; "
            f"the cluster has {ray.cluster_resources()} ({remedy})"
        )
    return pg


# ----------------------------------------------------------------------------- moving tensors


@dataclass(frozen=True)
class SameAs:
    """An entry of a dict ``to_numpy`` made: the same tensor as entry ``name`` (tied weights, such
    as an ``lm_head`` sharing the embeddings, travel once)."""

    name: str


def to_numpy(weights: dict[str, torch.Tensor]) -> dict[str, Any]:
    """CPU NumPy arrays where the dtype allows (Ray ships those zero-copy), tensors otherwise
    (bfloat16); a tensor that is an earlier one again (same memory, shape, strides, dtype) as
    ``SameAs`` that one."""
    import torch

    out: dict[str, Any] = {}
    seen: dict[tuple, str] = {}
    for name, tensor in weights.items():
        tensor = tensor.detach().cpu()
        key = (tensor.data_ptr(), tuple(tensor.shape), tuple(tensor.stride()), tensor.dtype)
        if key in seen and tensor.numel():
            out[name] = SameAs(seen[key])
            continue
        seen[key] = name
        out[name] = tensor.numpy() if tensor.dtype != torch.bfloat16 else tensor
    return out


def from_numpy(weights: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Tensors over the (read-only) arrays ``to_numpy`` made, without copying; a ``SameAs`` entry
    is the very tensor it names."""
    import numpy as np
    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)
        tensors = {name: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for name, v in weights.items()}
    return {name: tensors[v.name] if isinstance(v, SameAs) else v for name, v in tensors.items()}


# ----------------------------------------------------------------------------- watching actors


def lost_actor_errors() -> tuple[type[BaseException], ...]:
    """Ray's errors that mean the actor behind a call is gone (killed, out of memory, its node lost)."""
    import ray.exceptions as rex

    return (rex.RayActorError, rex.WorkerCrashedError, rex.NodeDiedError, rex.OutOfMemoryError, rex.ObjectLostError)


def wait_for_all(refs: list, timeout_s: float | None, *, on_timeout: Callable[[list[int]], Exception],
                 on_lost: Callable[[int, BaseException], Exception],
                 on_task_error: Callable[[int, BaseException], Exception] | None = None) -> list:
    """Every ref's result, in order, failing fast: when ``timeout_s`` passes with refs pending,
    ``on_timeout(their indices)`` is raised; when an actor behind a ref is lost
    (``lost_actor_errors``), ``on_lost(index, error)``; when the remote call raised,
    ``on_task_error(index, error)`` (or the ``RayTaskError`` itself). The other refs are not
    waited for."""
    import ray

    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    results: dict[int, Any] = {}
    pending = list(refs)
    while pending:
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        ready, pending = ray.wait(pending, num_returns=1, timeout=remaining)
        if not ready:
            raise on_timeout([refs.index(ref) for ref in pending])
        index = refs.index(ready[0])
        try:
            results[index] = ray.get(ready[0])
        except lost_actor_errors() as error:
            raise on_lost(index, error) from error
        except ray.exceptions.RayTaskError as error:
            if on_task_error is None:
                raise
            raise on_task_error(index, error) from None
    return [results[i] for i in range(len(refs))]


def lost_actor_line(what: str, actor: str, nodes: list[dict[str, Any]], index: int, error: BaseException) -> str:
    """``"<what>: <actor> (pid P on IP) was lost: <first line of Ray's report>"``; the pid and node
    come from ``nodes[index]`` when the actor got as far as reporting them."""
    node = nodes[index] if index < len(nodes) else {}
    where = f" (pid {node['pid']} on {node['ip']})" if node else ""
    return f"{what}: {actor}{where} was lost: {one_line(error)}"


def release(handles: dict[str, Any]) -> None:
    """Kill the actors and remove the placement group in ``handles`` (``{"actors": [...], "pg": ...}``,
    emptied here); errors are ignored: the actors may be dead already, or Ray gone."""
    actors, pg = handles["actors"], handles["pg"]
    handles["actors"], handles["pg"] = [], None
    try:
        import ray
        from ray.util.placement_group import remove_placement_group

        if not ray.is_initialized():
            return
        for actor in actors:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # noqa: BLE001 - already dead
                pass
        if pg is not None:
            remove_placement_group(pg)
    except Exception:  # noqa: BLE001 - at interpreter exit (a weakref finalizer) Ray may be half shut down
        pass
