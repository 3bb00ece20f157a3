"""A SIGKILLed driver leaves no Ray process behind: ``reinflow.distributed.ray_reaper`` kills what
Ray's own kernel fate-sharing misses (raylet's agents), and nothing that is not Ray's.

The fast test stands in for Ray with a fake package folder: the "driver" starts a "raylet" from it
(which starts an "agent" that outlives it, as Ray's agents do) and an unrelated child. The slow
test starts a real local Ray through ``init_ray``. Only the driver's own pid is SIGKILLed (``os.kill``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]

RAYLET = "import subprocess, sys, time\nsubprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\ntime.sleep(600)\n"
DRIVER = textwrap.dedent("""
    import subprocess, sys, time
    from reinflow.distributed import ray_reaper
    ray_dir = sys.argv[1]
    subprocess.Popen([sys.executable, "-u", ray_dir + "/raylet.py"])
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])  # not Ray's
    ray_reaper.start(ray_dir)
    print("up", flush=True)
    time.sleep(600)
""")
REAL_DRIVER = textwrap.dedent("""
    import time, ray
    from reinflow.distributed.ray_cluster import init_ray
    init_ray(1)
    assert ray.get(ray.remote(num_cpus=0)(lambda: 1).remote()) == 1
    print("up", flush=True)
    time.sleep(600)
""")


def alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def kill_driver_and_wait(driver: subprocess.Popen, watched: list[psutil.Process], within_s: float) -> list[psutil.Process]:
    """SIGKILL the driver alone; the watched processes still alive ``within_s`` later."""
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait(timeout=30)
    deadline = time.monotonic() + within_s
    while any(map(alive, watched)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return [process for process in watched if alive(process)]


def start(code: str, *args: str) -> tuple[subprocess.Popen, psutil.Process]:
    driver = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert driver.stdout.readline().strip() == "up"
    return driver, psutil.Process(driver.pid)


def test_the_reaper_kills_the_drivers_ray_processes_and_nothing_else(tmp_path):
    ray_dir = tmp_path / "site-packages" / "ray"
    ray_dir.mkdir(parents=True)
    (ray_dir / "raylet.py").write_text(RAYLET)
    driver, tree = start(DRIVER, str(ray_dir))
    children: list[psutil.Process] = []
    try:
        time.sleep(2.5)  # the agent is up and the reaper has noted it
        children = tree.children(recursive=True)
        ray_side = [p for p in children if "raylet.py" in " ".join(p.cmdline()) or p.ppid() != driver.pid]
        other = [p for p in children if p.ppid() == driver.pid and "sleep(600)" in " ".join(p.cmdline())]
        assert len(ray_side) == 2 and len(other) == 1, [p.cmdline() for p in children]
        assert kill_driver_and_wait(driver, ray_side, 10) == []
        assert alive(other[0]), "the reaper killed a process that is not Ray's"
    finally:
        for process in children:
            if alive(process):
                process.kill()
        if driver.poll() is None:
            os.kill(driver.pid, signal.SIGKILL)
            driver.wait()


@pytest.mark.slow
def test_a_sigkilled_driver_leaves_no_ray_process():
    driver, tree = start(REAL_DRIVER)
    children = tree.children(recursive=True)
    try:
        names = {p.name() for p in children}
        assert {"raylet", "gcs_server", "ray::DashboardAgent"} <= names, names
        left = kill_driver_and_wait(driver, children, 20)
        assert left == [], [(p.pid, p.name()) for p in left]
    finally:
        for process in children:
            if alive(process):
                process.kill()
        if driver.poll() is None:
            os.kill(driver.pid, signal.SIGKILL)
            driver.wait()
