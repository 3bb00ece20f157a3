"""A real local Prefect stack for tests: `prefect server start` (SQLite in a temporary PREFECT_HOME,
loopback only), the process work pool ``local`` and a worker, each a process group of its own
writing to a log file. The server can be killed and started again on the same database and port.

Used by ``tests/test_deployments.py`` and ``tests/reliability/test_faults_prefect_restart.py``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx

ROOT = Path(__file__).resolve().parents[2]
PREFECT = [sys.executable, "-m", "prefect"]  # the `prefect` CLI of the Python running the tests
SERVER_START_TIMEOUT_S = 240
RUN_TIMEOUT_S = 600
FINAL_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
T = TypeVar("T")


@dataclass
class Stack:
    """A running local server + worker: the environment that talks to it and its log files."""

    api_url: str
    env: dict[str, str]
    logs: Path
    cwd: Path
    port: int
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def cli(self, *args: str, timeout: float = 300) -> str:
        """Run a `prefect` command against the server from the project root; returns its output."""
        result = subprocess.run([*PREFECT, *args], cwd=ROOT, env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, timeout=timeout)
        assert result.returncode == 0, f"prefect {' '.join(args)} failed:\n{result.stdout[-4000:]}"
        return result.stdout

    def tails(self) -> str:
        """The end of every log, for assertion messages."""
        return "".join(f"\n----- {log.name}\n{log.read_text(errors='replace')[-4000:]}"
                       for log in sorted(self.logs.glob("*.log")))

    def start_server(self) -> None:
        """Start `prefect server start` (again) on this stack's port and database; wait until healthy."""
        server = start([*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(self.port)], self.env,
                       self.logs / "server.log", self.cwd)
        self.processes["server"] = server

        def healthy() -> bool | None:
            assert server.poll() is None, "prefect server exited" + self.tails()
            return self.healthy() or None

        wait_for("the server's health endpoint", healthy, SERVER_START_TIMEOUT_S, self)

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.api_url}/health", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    def kill_server(self, sig: signal.Signals = signal.SIGKILL) -> None:
        """Send ``sig`` to the server's whole process group and wait for its leader to exit."""
        server = self.processes.pop("server")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, sig)
        server.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError):  # whatever of the group is left
            os.killpg(server.pid, signal.SIGKILL)

    def start_worker(self) -> None:
        self.processes["worker"] = start([*PREFECT, "worker", "start", "--pool", "local", "--name", "test-worker"],
                                         self.env, self.logs / "worker.log", self.cwd)

    def stop_all(self) -> None:
        for name in reversed(list(self.processes)):
            stop(self.processes.pop(name))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def environment(home: Path, api_url: str, port: int) -> dict[str, str]:
    """Our environment without any PREFECT_* or proxy setting, pointed at the local server only."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("PREFECT_") and key.lower() not in {"http_proxy", "https_proxy", "all_proxy"}}
    env.update({
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": api_url,
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_ENABLED": "false",
        "PREFECT_CLI_PROMPT": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
        "DO_NOT_TRACK": "1",
        "OMP_WAIT_POLICY": "PASSIVE",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
        "TOKENIZERS_PARALLELISM": "false",
        "COLUMNS": "200",
        "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
    })
    return env


def start(command: list[str], env: dict[str, str], log: Path, cwd: Path) -> subprocess.Popen:
    """A background process in its own process group (so everything it spawns can be killed)."""
    with log.open("ab") as sink:
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=sink, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def stop(process: subprocess.Popen) -> None:
    """SIGTERM the process group, then SIGKILL whatever is left of it."""
    for sig, grace_s in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            continue
        try:  # the leader is gone; its children may not be
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return


def wait_for(what: str, check: Callable[[], T | None], timeout_s: float, stack: Stack | None = None,
             every_s: float = 2.0) -> T:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value is not None:
            return value
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}" + (stack.tails() if stack else ""))


@contextlib.contextmanager
def running_stack(tmp_path: Path) -> Iterator[Stack]:
    """`prefect server start` + the process work pool `local` + `prefect worker start --pool local`."""
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    logs = tmp_path / "logs"
    logs.mkdir()
    running = Stack(api_url, environment(tmp_path / "prefect-home", api_url, port), logs, tmp_path, port)
    try:
        running.start_server()
        running.cli("work-pool", "create", "local", "--type", "process")
        running.start_worker()
        yield running
    finally:
        running.stop_all()


RETRIED_STATUSES = frozenset({429, 502, 503})  # what Prefect's own client retries (e.g. SQLite busy)


def api(stack: Stack, method: str, path: str, body: Any = None, attempts: int = 6) -> Any:
    """One REST call; transient answers (429/502/503) are retried with back-off, as Prefect's
    own client does, anything else non-2xx fails the test."""
    for attempt in range(attempts):
        response = httpx.request(method, f"{stack.api_url}{path}", json=body, timeout=30)
        if response.status_code not in RETRIED_STATUSES or attempt == attempts - 1:
            break
        time.sleep(2 ** attempt)
    assert response.status_code < 300, f"{method} {path}: {response.status_code} {response.text}"
    return response.json() if response.content else None


def run_deployment(stack: Stack, deployment: dict[str, Any], parameters: dict[str, Any]) -> dict[str, Any]:
    return api(stack, "POST", f"/deployments/{deployment['id']}/create_flow_run", {"parameters": parameters})


def wait_until_final(stack: Stack, flow_run_id: str, timeout_s: float = RUN_TIMEOUT_S,
                     expect: str | None = "COMPLETED") -> dict[str, Any]:
    """Wait for a final state; with ``expect``, assert it is that one."""
    def final() -> dict[str, Any] | None:
        run = api(stack, "GET", f"/flow_runs/{flow_run_id}")
        return run if run["state"] and run["state"]["type"] in FINAL_STATES else None

    run = wait_for(f"flow run {flow_run_id} to finish", final, timeout_s, stack)
    if expect is not None:
        assert run["state"]["type"] == expect, f"{run['name']}: {run['state']}" + stack.tails()
    return run
