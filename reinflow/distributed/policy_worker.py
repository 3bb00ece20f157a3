"""One rank of the Ray backbone: the actor class ``RayPolicyGroup`` starts once per worker.

``PolicyWorker`` holds a ``PolicyTrainer(rank=r, world_size=n)`` inside a Ray actor process, alive
for the whole run. Its constructor sets the environment the driver forwards (``ray_cluster.
forwarded_env``) before torch loads, then ``torch.set_num_threads`` = its CPU share. Rank 0 is
asked for the rendezvous (``endpoint``: its node's IP and a free TCP port there); ``setup`` then
joins every rank to one ``torch.distributed`` group (collective timeout
``train.ray_collective_timeout_seconds``) and builds the trainer, which broadcasts rank 0's weights.
The model folder is the driver's where it exists on the worker's node; elsewhere the worker
resolves ``config.model.path`` itself (a built-in or hub model is built / downloaded on that node).

Everything the driver reads back crosses the object store on the CPU: weights and gradients as
NumPy arrays (``ray_cluster.to_numpy``), the trainer's state with every tensor moved to the CPU.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reinflow.config import ExperimentConfig
from reinflow.distributed.ray_cluster import to_numpy
from reinflow.faults import crash_point
from reinflow.training.memory_release import releasing_memory

if TYPE_CHECKING:
    from reinflow.training.train_batch import TrainSample

# torch (and everything that imports it) is imported lazily: a worker process imports this module
# before ``PolicyWorker.__init__`` has set the forwarded environment, and OpenMP reads
# ``OMP_WAIT_POLICY`` when torch loads it.


class PolicyWorker:
    """One rank: a ``PolicyTrainer`` inside a Ray actor process, alive for the whole run."""

    def __init__(self, threads: int, env: dict[str, str]) -> None:
        late = [key for key in env if key == "OMP_WAIT_POLICY" and "torch" in sys.modules
                and os.environ.get(key) != env[key]]
        os.environ.update(env)  # before torch loads OpenMP (see the imports above)
        import torch

        if late:
            logging.getLogger(__name__).warning("torch was loaded before OMP_WAIT_POLICY=%s was set: "
                                                "export it before `ray start` on this node", env["OMP_WAIT_POLICY"])
        torch.set_num_threads(threads)
        self.trainer = None
        self.rank, self.world_size, self.updates = 0, 1, 0

    def endpoint(self) -> tuple[str, int]:
        """``(this node's IP, a free TCP port on it)``: the rendezvous, asked of rank 0 only."""
        import ray

        return ray.util.get_node_ip_address(), free_port()

    def setup(self, config: ExperimentConfig, model_folder: str, rank: int, world_size: int,
              master: tuple[str, int], backend: str, device: str) -> dict[str, Any]:
        """Join the process group and build the trainer (all ranks at once: it broadcasts); returns
        where this rank runs (node id, IP, pid, threads, device) and how long it took."""
        import ray
        import torch
        import torch.distributed as dist

        from reinflow.config.models import resolve_model
        from reinflow.training.policy import PolicyTrainer

        started = time.perf_counter()
        self.rank, self.world_size = rank, world_size
        if world_size > 1:
            timeout = timedelta(seconds=config.train.ray_collective_timeout_seconds)
            dist.init_process_group(backend, init_method=f"tcp://{master[0]}:{master[1]}", rank=rank,
                                    world_size=world_size, timeout=timeout)
        folder = Path(model_folder)
        if not (folder / "config.json").is_file():
            folder = resolve_model(config.model.path)
        self.trainer = PolicyTrainer(config, folder, rank=rank, world_size=world_size, device=device)
        return {"rank": rank, "node_id": ray.get_runtime_context().get_node_id(),
                "ip": ray.util.get_node_ip_address(), "pid": os.getpid(), "threads": torch.get_num_threads(),
                "device": str(self.trainer.device), "setup_seconds": time.perf_counter() - started}

    def train_step(self, samples: list[TrainSample], normalizer: float) -> dict[str, float]:
        """``PolicyTrainer.train_step`` on this rank's shard with the batch's global normaliser."""
        self.updates += 1
        if self.rank == self.world_size - 1:  # fault-injection tests: the last rank dies mid-update
            crash_point("worker_update", self.updates)
        with releasing_memory(self.trainer.train.release_free_memory):
            return self.trainer.train_step(samples, normalizer)

    def engine_weights(self) -> dict[str, Any]:
        """``PolicyTrainer.engine_weights`` as NumPy arrays (see ``ray_cluster.to_numpy``)."""
        return to_numpy(self.trainer.engine_weights())

    def trainable_weights(self, gradients: bool = False) -> dict[str, Any]:
        """This rank's trainable parameters, or their last gradients (tests compare with them)."""
        params = self.trainer.parameters.items()
        if gradients:
            return to_numpy({name: p.grad for name, p in params if p.grad is not None})
        return to_numpy(dict(params))

    def state(self) -> dict:
        """``PolicyTrainer.state`` with every tensor on the CPU."""
        return to_cpu(self.trainer.state())

    def rng_state(self) -> dict:
        """This rank's RNG states (``reinflow.training.rng_state.rng_state``)."""
        from reinflow.training.rng_state import rng_state

        return rng_state()

    def load_state(self, state: dict, rng: dict | None = None) -> None:
        """``PolicyTrainer.load_state``, then this rank's own RNG state where one is given."""
        from reinflow.training.rng_state import set_rng_state

        self.trainer.load_state(state)
        if rng is not None:
            set_rng_state(rng)

    def ping(self) -> int:
        """This actor's pid (tests find and kill it)."""
        return os.getpid()


def to_cpu(value: Any) -> Any:
    """``value`` with every tensor moved to the CPU (dicts, lists and tuples walked)."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_cpu(v) for v in value)
    return value


def free_port() -> int:
    """A TCP port free on this node right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]
