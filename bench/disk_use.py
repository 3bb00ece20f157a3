"""Disk use of a short quickstart training run: bytes written and bytes left.

    .venv/bin/python bench/disk_use.py                      # 4 iterations, 16 held-out tasks (~5 min, 2 cores)
    .venv/bin/python bench/disk_use.py train.iterations=8   # any config override

Runs ``reinflow train --conf configs/quickstart.yaml train.iterations=4 data.eval_tasks=16 ...`` in a
throwaway project folder (data, runs, MLflow and Prefect's home all inside it; the repo's agents and
judges importable), then prints

- written: bytes the whole command tree wrote to disk (this process's ``/proc/self/io``
  ``write_bytes - cancelled_write_bytes`` over the run: a reaped child's writes count into its
  parent's, so the CLI, Prefect's server and every other finished descendant are in it);
- left: the sizes of the files left in the project folder, by part (run folder, MLflow artifacts, MLflow
  and Prefect databases, data shards), and the checkpoints kept.

The goal (issue 20, item 4) is for the full quickstart (70 iterations): at most 2.5 GB left and at most
10 GB written. This bench runs a short run; the per-checkpoint size it prints scales the estimate.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from reinflow.tracking.disk_use import folder_bytes, gigabytes, written_bytes  # noqa: E402

DEFAULT_OVERRIDES = ["train.iterations=4", "data.eval_tasks=16"]


def run(project: Path, overrides: list[str]) -> tuple[int, float, subprocess.CompletedProcess]:
    """``reinflow train`` in ``project``; returns (bytes written, seconds, the process)."""
    (project / "configs").mkdir(parents=True)
    shutil.copy(ROOT / "configs" / "quickstart.yaml", project / "configs" / "quickstart.yaml")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PREFECT_HOME": str(project / "prefect"), "COLUMNS": "200",
           "OMP_WAIT_POLICY": "PASSIVE", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "MLFLOW_DISABLE_TELEMETRY": "true", "RAY_USAGE_STATS_ENABLED": "0"}
    command = [sys.executable, "-c", "from cli.app import main; main()", "train", "--conf", "configs/quickstart.yaml",
               *overrides]
    before, start = written_bytes(), time.monotonic()
    result = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, check=False)
    seconds = time.monotonic() - start
    after = written_bytes()
    if before is None or after is None:
        raise SystemExit("/proc/self/io is not readable here: written bytes cannot be measured")
    return after - before, seconds, result


def report(project: Path, written: int, seconds: float, overrides: list[str]) -> None:
    runs = project / "runs"
    (run_dir,) = (runs / "quickstart").iterdir()
    parts = {
        "run folder": folder_bytes(run_dir),
        "MLflow artifacts (final policy, config, trajectories, plots)": folder_bytes(runs / "mlartifacts"),
        "MLflow database": (runs / "mlflow.db").stat().st_size,
        "Prefect home (database)": folder_bytes(project / "prefect"),
        "data shards": folder_bytes(project / "data"),
    }
    print(f"quickstart, {' '.join(overrides)}: {seconds / 60:.1f} min")
    print(f"written: {gigabytes(written)} (the whole command tree, /proc/self/io write_bytes - cancelled)")
    print(f"left:    {gigabytes(folder_bytes(project))} in the project folder")
    for name, size in parts.items():
        print(f"  {name:58s} {gigabytes(size)}")
    checkpoints = sorted(p for p in (run_dir / "checkpoints").iterdir() if p.name.startswith("iter_"))
    for checkpoint in checkpoints:
        files = ", ".join(f"{p.name} {gigabytes(p.stat().st_size)}" for p in sorted(checkpoint.iterdir()) if p.stat().st_size)
        print(f"  checkpoint {checkpoint.name}: {gigabytes(folder_bytes(checkpoint))} ({files})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="config overrides after the bench's own")
    parser.add_argument("--keep", action="store_true", help="keep the project folder (its path is printed)")
    args = parser.parse_args()
    overrides = DEFAULT_OVERRIDES + args.overrides
    project = Path(tempfile.mkdtemp(prefix="reinflow-disk-use-"))
    try:
        written, seconds, result = run(project, overrides)
        if result.returncode != 0:
            raise SystemExit(f"reinflow train failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        print("\n".join(line for line in result.stdout.splitlines() if line.startswith(("disk:", "memory:", "held-out", "wall"))))
        report(project, written, seconds, overrides)
    finally:
        if args.keep:
            print(f"project folder kept: {project}")
        else:
            shutil.rmtree(project, ignore_errors=True)


if __name__ == "__main__":
    main()
