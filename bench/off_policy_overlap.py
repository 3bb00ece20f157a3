"""Wall time per iteration with the rollout one iteration ahead of the update
(``train.max_off_policy_steps: 1``) against strictly on-policy (``0``), on the Ray backbone of a
two-node cluster simulated on this machine.

    .venv/bin/python bench/off_policy_overlap.py            # ~12 minutes on 2 cores

The cluster (``ray.cluster_utils.Cluster``): a head node that offers Ray no CPU, where the driver
runs and with it the rollout engine (``rollout.engine_replicas: 1``, in the driver process, one torch
thread: ``OMP_NUM_THREADS=1``), and a second node of one CPU, the only place the policy worker
(``train.workers: 1``, ``cpus_per_worker: 1``) fits. Each node is pinned to a core of its own
(``os.sched_setaffinity``, inherited by what it starts: the head node and the driver, with the
Prefect and MLflow work in it, on the first core; the second node's raylet and the policy worker on
the other; ``--no-pin`` lets the OS share the cores), and each node has an object store of
``OBJECT_STORE_BYTES``. So the engine and the trainer each have one core, on different nodes, as on
a cluster where rollout and training live on different machines and the weights shipped between
them cost each side its own CPU.

Each run is ``reinflow train --conf configs/quickstart.yaml --backbone ray`` for ``--iterations``
iterations (built-in SmolLM2-135M, 8 tasks x 4 episodes an iteration), with a small held-out set
evaluated only at the start and the end and no checkpoint until the end, so that the iterations in
between are rollout, judge and update alone. The figure is the median ``seconds/iteration`` (MLflow)
of iterations 2 .. N-1: the first has nothing to overlap with, the last evaluates. ``--rounds``
rounds each run both settings, in alternating order (a shared machine drifts). Reported: each run's
median, where it went (the flow thread's seconds per stage, the rollout's and the trainer's own
seconds, the staleness), and the ratio on-policy / ahead of the two settings' medians over all
rounds. Overlap needs a free core for each side: on a machine busy with other work it cannot help.

The run's held-out success is not what this measures (a few iterations); the quickstart's full
run with ``train.max_off_policy_steps=1`` is (README, "Throughput").
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"on-policy (k=0)": 0, "ahead (k=1)": 1}
OBJECT_STORE_BYTES = 2 << 30
"""Each node's object store. ``ray.cluster_utils`` gives a node 150 MB, less than one copy of the
model's 540 MB of weights, so every hand-over spilled to disk (2-3 s); Ray's default on a real node
is 30% of its memory (``ray.init`` on this machine: ~7 GB)."""


STAGES = ("seconds/iteration", "seconds/rollout", "seconds/judge", "seconds/update", "rollout_seconds",
          "update_seconds", "update_overhead_seconds", "weight_take_seconds", "weight_sync_seconds",
          "staleness_max")


@contextmanager
def on_cores(cores: set[int] | None) -> Iterator[None]:
    """Run the block (and what it starts) pinned to ``cores``; ``None``: as it is."""
    before = os.sched_getaffinity(0)
    if cores is not None:
        os.sched_setaffinity(0, cores)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def run_once(address: str, steps: int, iterations: int, workdir: Path, cores: set[int] | None) -> dict[str, list[float]]:
    """One ``reinflow train`` run; returns, per metric of ``STAGES``, its values at iterations 1..N
    (``seconds/*``: the flow's thread; ``rollout_seconds``, ``update_seconds``: the rollout's and
    the trainer's own time, wherever they ran)."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    command = [str(Path(sys.executable).parent / "reinflow"), "train", "--conf", "configs/quickstart.yaml",
               "--backbone", "ray",
               f"train.ray_address={address}", "train.workers=1", "train.cpus_per_worker=1",
               f"train.iterations={iterations}", f"train.max_off_policy_steps={steps}", "train.eval_interval=1000",
               f"train.checkpoint_interval={iterations}", "data.eval_tasks=8", f"tracking.mlflow_uri={uri}",
               f"tracking.run_dir={workdir / 'runs'}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "120"}
    with (workdir / "train.log").open("w") as log, on_cores(cores):
        subprocess.run(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("quickstart").experiment_id])
    histories = {key: client.get_metric_history(run.info.run_id, key) for key in STAGES}
    return {key: [m.value for m in sorted(history, key=lambda m: m.step) if m.step > 0]
            for key, history in histories.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--no-pin", action="store_true", help="do not pin each node to a core of its own")
    args = parser.parse_args()
    from ray.cluster_utils import Cluster

    cores = sorted(os.sched_getaffinity(0))
    head, worker = ({cores[0]}, {cores[1]}) if len(cores) >= 2 and not args.no_pin else (None, None)
    store = {"object_store_memory": OBJECT_STORE_BYTES}
    with on_cores(head):
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False} | store)
    with on_cores(worker):
        cluster.add_node(num_cpus=1, **store)
    cluster.wait_for_nodes()
    runs: dict[str, list[float]] = {name: [] for name in SETTINGS}
    try:
        for round_index in range(args.rounds):
            order = list(SETTINGS.items())[:: 1 if round_index % 2 == 0 else -1]
            for name, steps in order:
                with tempfile.TemporaryDirectory(prefix="overlap-") as workdir:
                    metrics = run_once(cluster.address, steps, args.iterations, Path(workdir), head)
                medians = {key: statistics.median(values[1:-1]) for key, values in metrics.items() if values[1:-1]}
                runs[name].append(medians["seconds/iteration"])
                seconds = metrics["seconds/iteration"]
                print(f"round {round_index + 1}, {name}: median {medians['seconds/iteration']:.2f} s/iteration "
                      f"(iterations 2..{args.iterations - 1}; all: {', '.join(f'{s:.1f}' for s in seconds)}); medians: "
                      + ", ".join(f"{key} {value:.2f}" for key, value in medians.items() if key != "seconds/iteration"),
                      flush=True)
    finally:
        cluster.shutdown()
    on, ahead = (statistics.median(runs[name]) for name in SETTINGS)
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, load average now {load}; "
          "engine and policy worker on 1 core each, 2 nodes, "
          + (f"pinned: head node and driver on core {min(head)}, policy worker's node on core {min(worker)}"
             if head else "not pinned"))
    print(f"on-policy {on:.2f} s/iteration, ahead {ahead:.2f} s/iteration: ahead is {on / ahead:.2f}x faster")
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "ratio": on / ahead}, indent=2))


if __name__ == "__main__":
    main()
