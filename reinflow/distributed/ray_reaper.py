"""Ray's node agents end with the process that started a local Ray, even a SIGKILLed one.

A local Ray started by ``ray_cluster.init_ray`` shares its fate with the driver through the kernel
(``PR_SET_PDEATHSIG``): gcs_server, raylet, the dashboard head and the log monitor die with it. Two
of raylet's children do not: ``ray::DashboardAgent`` and ``ray::RuntimeEnvAgent`` notice that
their raylet is gone and then try to report it to the GCS, which is gone too; with Ray 2.60 they
were still running 60 s after the driver was SIGKILLed.

``python -m reinflow.distributed.ray_reaper <driver pid> <ray package folder>`` is a small child
of the driver that notes the driver's Ray processes every :data:`POLL_SECONDS` (its children whose
command lies in Ray's package folder, and all their descendants, with their start times). Once the
driver is gone it SIGKILLs those that still run as the same process, and exits. After a normal
``ray.shutdown`` the last note is empty and nothing is signalled.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil

POLL_SECONDS = 1.0
"""How often the reaper notes the driver's Ray processes (and asks whether the driver is still there)."""


def ray_processes(driver: psutil.Process, ray_dir: str) -> dict[int, float]:
    """``{pid: start time}`` of the driver's Ray processes and everything under them."""
    found: dict[int, float] = {}
    for child in driver.children():
        try:
            if child.pid != os.getpid() and any(part.startswith(ray_dir + os.sep) for part in child.cmdline()[:3]):
                for process in (child, *child.children(recursive=True)):
                    found[process.pid] = process.create_time()
        except psutil.Error:  # it ended while being looked at
            continue
    return found


def reap(noted: dict[int, float]) -> list[int]:
    """SIGKILL each noted process that still runs as the same process; returns their pids."""
    killed = []
    for pid, started in noted.items():
        try:
            process = psutil.Process(pid)
            if abs(process.create_time() - started) < 0.01 and process.status() != psutil.STATUS_ZOMBIE:
                process.kill()
                killed.append(pid)
        except psutil.Error:
            continue
    return killed


def start(ray_dir: str) -> subprocess.Popen:
    """The reaper of this process's local Ray (call right after ``ray.init`` started it)."""
    return subprocess.Popen([sys.executable, "-m", __name__, str(os.getpid()), ray_dir], stdin=subprocess.DEVNULL)


def main(argv: list[str]) -> None:
    """``<driver pid> <ray package folder>``: note the driver's Ray processes until it is gone, then reap them."""
    driver_pid, ray_dir = int(argv[0]), argv[1].rstrip(os.sep)
    driver = psutil.Process(driver_pid)
    noted: dict[int, float] = {}
    while os.getppid() == driver_pid:
        try:
            noted = ray_processes(driver, ray_dir)
        except psutil.Error:
            break
        time.sleep(POLL_SECONDS)
    reap(noted)


if __name__ == "__main__":
    main(sys.argv[1:])
