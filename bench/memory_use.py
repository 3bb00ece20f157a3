"""Memory of a quickstart training run: is it flat across iterations, and how high does it go?

    .venv/bin/python bench/memory_use.py                                  # 12 iterations (~8 min, 2 cores)
    .venv/bin/python bench/memory_use.py train.iterations=70 data.eval_tasks=200   # the full quickstart
    .venv/bin/python bench/memory_use.py --project /tmp/reinflow-disk-use-XXXX     # a run kept by disk_use.py --keep
    .venv/bin/python bench/memory_use.py train.iterations=14 --against train.release_free_memory=false
    .venv/bin/python bench/memory_use.py train.activation_checkpointing=true --against train.activation_checkpointing=false \
        --against "train.activation_checkpointing=false train.heap_mmap_threshold_bytes=null"

Runs the quickstart in a throwaway folder as ``bench/disk_use.py`` does (or reads a project folder
that one kept), then prints, from the run's MLflow history (``memory/*``, logged after every
iteration by ``reinflow/tracking/memory_use.py``):

- the training process's resident set at iteration 10 and at the last one, and their ratio;
- its peak resident set (``VmHWM``) at both;
- the run's whole process tree (Prefect's server, Ray workers) at both.

``--against "OVERRIDE ..."`` (repeatable) then runs the same quickstart with those overrides added
(a baseline) and prints the ratios of both runs' figures at the last iteration, and of their wall
times. Each run also prints its seconds in rollouts, updates and evaluations (summed over iterations; ratios
too) and its held-out pass@1 at the first and last evaluation.

The goal (issue 19, item 2): peak at most 3 GB, and the figure at iteration 70 within 5% of the
figure at iteration 10.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.disk_use import run  # noqa: E402
from reinflow.tracking.disk_use import gigabytes  # noqa: E402
from reinflow.tracking.memory_use import PEAK_RSS_BYTES, RSS_BYTES, TREE_RSS_BYTES  # noqa: E402

PASS_AT_1 = "eval/pass_at_1"
STAGE_SECONDS = ("seconds/rollout", "seconds/update", "seconds/evaluate")
DEFAULT_OVERRIDES = ["train.iterations=12", "data.eval_tasks=16"]
EARLY_ITERATION = 10


def histories(project: Path) -> dict[str, dict[int, float]]:
    """``{metric: {iteration: bytes}}`` of the one quickstart run in ``project``."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'runs' / 'mlflow.db'}")
    (run_,) = client.search_runs([client.get_experiment_by_name("quickstart").experiment_id])
    return {key: {m.step: m.value for m in client.get_metric_history(run_.info.run_id, key)}
            for key in (RSS_BYTES, PEAK_RSS_BYTES, TREE_RSS_BYTES, PASS_AT_1, *STAGE_SECONDS)}


def report(project: Path) -> dict[str, float]:
    """Print the figures at iteration 10 and the last; return the last ones."""
    figures = histories(project)
    steps = sorted(figures[RSS_BYTES])
    if not steps:
        raise SystemExit(f"{project}: the run logged no memory/* metrics (a run from before they were logged?)")
    early, last = min(steps, key=lambda step: abs(step - EARLY_ITERATION)), steps[-1]
    print(f"iterations logged: {steps[0]}..{last}")
    for key, label in ((RSS_BYTES, "resident, training process"), (PEAK_RSS_BYTES, "peak resident (VmHWM)"),
                       (TREE_RSS_BYTES, "resident, whole process tree")):
        at_early, at_last = figures[key][early], figures[key][last]
        print(f"  {label:30s} iter {early}: {gigabytes(at_early)}   iter {last}: {gigabytes(at_last)}   "
              f"ratio {at_last / at_early:.3f}")
    stages = {key: sum(figures.pop(key).values()) for key in STAGE_SECONDS}
    print("  seconds in all                 " + "   ".join(f"{key.removeprefix('seconds/')} {value:.0f}"
                                                          for key, value in stages.items()))
    held_out = figures.pop(PASS_AT_1)
    if held_out:
        print(f"  held-out pass@1                iter {min(held_out)}: {held_out[min(held_out)]:.3f}   "
              f"iter {max(held_out)}: {held_out[max(held_out)]:.3f}")
    return {key: values[last] for key, values in figures.items()} | stages


def run_and_report(overrides: list[str]) -> dict[str, float]:
    """The quickstart with ``overrides`` in a throwaway folder; its last figures and ``seconds``."""
    project = Path(tempfile.mkdtemp(prefix="reinflow-memory-use-"))
    try:
        _, seconds, result = run(project, overrides)
        if result.returncode != 0:
            raise SystemExit(f"reinflow train failed ({result.returncode}):\n{result.stderr[-3000:]}")
        print(f"quickstart, {' '.join(overrides)}: {seconds / 60:.1f} min")
        return report(project) | {"seconds": seconds}
    finally:
        shutil.rmtree(project, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="config overrides after the bench's own")
    parser.add_argument("--project", type=Path, help="read this kept project folder instead of running")
    parser.add_argument("--against", metavar="OVERRIDES", action="append", default=[],
                        help="also run a baseline with these (space-separated) overrides; print ratios (repeatable)")
    args = parser.parse_args()
    if args.project:
        report(args.project)
        return
    measured = run_and_report(DEFAULT_OVERRIDES + args.overrides)
    for against in args.against:
        baseline = run_and_report(DEFAULT_OVERRIDES + args.overrides + against.split())
        print(f"ratios to the baseline ({against}), last iteration: " + ", ".join(
            f"{key.removeprefix('memory/')} {measured[key] / baseline[key]:.3f}" for key in baseline))


if __name__ == "__main__":
    main()
