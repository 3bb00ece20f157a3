"""``reinflow runs``: each run's status, iteration, held-out pass@1 and, for a run that stopped
before its end, the command that resumes it.

The crashed run is a real process that starts a run as the training flow does (``new_run``, then
``experiment.yaml``), writes an iteration's files and then waits; the test SIGKILLs it by pid
(``os.kill``: never a process group) and runs the command as a user does.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from reinflow.config import load_config
from reinflow.run.run_listing import run_rows
from reinflow.run.run_state import RUN_FILE, effective_status, find_run_to_resume

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "tests" / "configs" / "tiny_e2e.yaml"  # tracking.run_dir: runs, train.iterations: 2
REINFLOW = [sys.executable, "-c", "from cli.app import main; main()"]

OWNER = textwrap.dedent("""
    import sys, time, yaml
    from pathlib import Path
    from reinflow.config import load_config
    from reinflow.run.run_state import new_run
    config = load_config(Path(sys.argv[1]))
    run_dir, _ = new_run(config, Path.cwd())
    (run_dir / "experiment.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    print(run_dir, flush=True)
    time.sleep(600)
""")


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "250", "PYTHONPATH": str(ROOT)}
    return subprocess.run([*REINFLOW, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def episodes(path: Path, successes: dict[str, bool]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"task_id": list(successes), "is_success": list(successes.values())}), path)


@pytest.fixture
def owner(tmp_path: Path):
    """A live process owning a fresh run with iteration 1 judged and checkpointed, and the baseline
    evaluated (1 of 4 held-out tasks solved): ``(process, run folder)``; killed at the end whatever happens."""
    process = subprocess.Popen([sys.executable, "-c", OWNER, str(CONFIG)], cwd=tmp_path, stdout=subprocess.PIPE,
                               text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        run_dir = Path(process.stdout.readline().strip())
        assert (run_dir / RUN_FILE).is_file(), "the owner did not start its run"
        episodes(run_dir / "judged" / "iter_1.parquet", {"a": True, "b": False})
        episodes(run_dir / "eval" / "iter_0" / "greedy_judged.parquet", {"t1": True, "t2": False, "t3": False, "t4": False})
        (run_dir / "eval" / "iter_2").mkdir()  # an evaluation still running: no judged file yet
        (run_dir / "checkpoints" / "iter_1").mkdir(parents=True)
        (run_dir / "checkpoints" / "iter_1" / "COMPLETE").write_text("")
        yield process, run_dir
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def finished_run(tmp_path: Path) -> Path:
    """A run that finished both iterations, with its final evaluation (3 of 4 solved)."""
    run_dir = tmp_path / "runs" / "tiny_e2e" / "run-20000101-000000"
    run_dir.mkdir(parents=True)
    (run_dir / RUN_FILE).write_text(json.dumps({"name": run_dir.name, "experiment": "tiny_e2e", "status": "finished"}))
    (run_dir / "experiment.yaml").write_text(yaml.safe_dump(load_config(CONFIG).model_dump(mode="json")))
    for iteration in (1, 2):
        episodes(run_dir / "judged" / f"iter_{iteration}.parquet", {"a": True})
    episodes(run_dir / "eval" / "iter_2" / "greedy_judged.parquet", {"t1": True, "t2": True, "t3": True, "t4": False})
    return run_dir


def table_line(stdout: str, run_name: str) -> list[str]:
    (line,) = [line for line in stdout.splitlines() if run_name in line and "│" in line]
    return [cell.strip() for cell in line.split("│")]


def test_a_sigkilled_run_is_listed_as_crashed_with_its_resume_command(owner, tmp_path):
    process, run_dir = owner
    done = finished_run(tmp_path)

    alive = run_cli("runs", cwd=tmp_path)  # the default runs folder: the config default, runs/
    assert alive.returncode == 0, alive.stderr
    assert table_line(alive.stdout, run_dir.name) == ["tiny_e2e", run_dir.name, "running", "1/2", "1", "0.250 (0)"]
    assert table_line(alive.stdout, done.name) == ["tiny_e2e", done.name, "finished", "2/2", "-", "0.750 (2)"]
    assert "to resume" not in alive.stdout  # a live run goes on by itself; a finished one has nothing left

    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    deadline = time.monotonic() + 10
    while effective_status(json.loads((run_dir / RUN_FILE).read_text())) != "crashed" and time.monotonic() < deadline:
        time.sleep(0.05)

    listed = run_cli("runs", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert table_line(listed.stdout, run_dir.name)[2:] == ["crashed", "1/2", "1", "0.250 (0)"]
    command = f"reinflow train --conf runs/tiny_e2e/{run_dir.name}/experiment.yaml --resume {run_dir.name}"
    assert f"tiny_e2e/{run_dir.name} (crashed): {command}" in listed.stdout
    assert done.name not in listed.stdout.split("to resume:")[1]

    # the command works: typed in the project folder, its config is the run's, and --resume takes the run
    conf = shlex.split(command)[3]
    assert find_run_to_resume(load_config(tmp_path / conf), tmp_path, run_dir.name)[0] == run_dir

    # from anywhere else, --runs-dir finds the runs, and the command first goes to the project folder
    elsewhere = run_cli("runs", "--runs-dir", str(tmp_path / "runs"), cwd=ROOT)
    assert f"cd {tmp_path} && {command}" in elsewhere.stdout


def test_rows_without_config_or_status(tmp_path):
    run_dir = tmp_path / "runs" / "exp" / "run-1"
    run_dir.mkdir(parents=True)
    (run_dir / RUN_FILE).write_text("{not json")
    (row,) = run_rows(tmp_path / "runs", tmp_path)
    assert (row.status, row.iteration, row.iterations, row.pass_at_1) == ("unknown", None, None, None)
    assert row.resume == "reinflow train --conf '<the config the run was made with>' --resume run-1"


def test_missing_runs_dir_is_one_line(tmp_path):
    result = run_cli("runs", "--runs-dir", str(tmp_path / "nope"), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: runs: --runs-dir {tmp_path / 'nope'}: no such folder ({tmp_path / 'nope'}); give a config's "
        "tracking.run_dir, where training writes its runs"]
