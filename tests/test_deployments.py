"""The deployments of ``prefect.yaml`` on a real local Prefect server.

Starts ``prefect server start`` (SQLite in a temporary PREFECT_HOME, loopback only), creates the
process work pool ``local``, starts a worker, runs ``prefect deploy --all`` from the project root,
then runs ``prepare-data`` and ``train`` (the tiny model, one iteration) and waits for the
``evaluate`` run that the event trigger starts when ``train`` completes. Data, runs and the MLflow
database land in a temporary project root (the flows' ``project_root`` parameter), not the repo.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "tests" / "configs" / "tiny_e2e.yaml"
PREFECT = [sys.executable, "-m", "prefect"]  # the `prefect` CLI of the Python running the tests
SERVER_START_TIMEOUT_S = 240
RUN_TIMEOUT_S = 600
T = TypeVar("T")


@dataclass
class Stack:
    """A running local server + worker: the environment that talks to it and its log files."""

    api_url: str
    env: dict[str, str]
    logs: Path

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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _environment(home: Path, api_url: str, port: int) -> dict[str, str]:
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


def _start(command: list[str], env: dict[str, str], log: Path, cwd: Path) -> subprocess.Popen:
    """A background process in its own process group (so everything it spawns can be killed)."""
    with log.open("ab") as sink:
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=sink, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def _stop(process: subprocess.Popen) -> None:
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


def _wait_for(what: str, check: Callable[[], T | None], timeout_s: float, stack: Stack | None = None,
              every_s: float = 2.0) -> T:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value is not None:
            return value
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}" + (stack.tails() if stack else ""))


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    """`prefect server start` + the process work pool `local` + `prefect worker start --pool local`."""
    port = _free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    logs = tmp_path / "logs"
    logs.mkdir()
    env = _environment(tmp_path / "prefect-home", api_url, port)
    processes: list[subprocess.Popen] = []
    try:
        server = _start([*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)], env,
                        logs / "server.log", tmp_path)
        processes.append(server)
        running = Stack(api_url, env, logs)

        def healthy() -> bool | None:
            assert server.poll() is None, "prefect server exited" + running.tails()
            try:
                return httpx.get(f"{api_url}/health", timeout=5).status_code == 200 or None
            except httpx.TransportError:
                return None

        _wait_for("the server's health endpoint", healthy, SERVER_START_TIMEOUT_S, running)
        running.cli("work-pool", "create", "local", "--type", "process")
        processes.append(_start([*PREFECT, "worker", "start", "--pool", "local", "--name", "test-worker"],
                                env, logs / "worker.log", tmp_path))
        yield running
    finally:
        for process in reversed(processes):
            _stop(process)


def _api(stack: Stack, method: str, path: str, body: Any = None) -> Any:
    response = httpx.request(method, f"{stack.api_url}{path}", json=body, timeout=30)
    assert response.status_code < 300, f"{method} {path}: {response.status_code} {response.text}"
    return response.json() if response.content else None


def _run(stack: Stack, deployment: dict[str, Any], parameters: dict[str, Any]) -> dict[str, Any]:
    return _api(stack, "POST", f"/deployments/{deployment['id']}/create_flow_run", {"parameters": parameters})


def _wait_until_final(stack: Stack, flow_run_id: str, timeout_s: float = RUN_TIMEOUT_S) -> dict[str, Any]:
    def final() -> dict[str, Any] | None:
        run = _api(stack, "GET", f"/flow_runs/{flow_run_id}")
        return run if run["state"] and run["state"]["type"] in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"} else None

    run = _wait_for(f"flow run {flow_run_id} to finish", final, timeout_s, stack)
    assert run["state"]["type"] == "COMPLETED", f"{run['name']}: {run['state']}" + stack.tails()
    return run


def test_prefect_yaml_is_valid() -> None:
    """Fast check of prefect.yaml: entrypoints exist, flows take the parameters, trigger validates."""
    import ast

    import yaml
    from prefect.events import DeploymentTriggerTypes
    from pydantic import TypeAdapter

    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in spec["deployments"]}
    assert set(deployments) == {"prepare-data", "train", "evaluate"}
    for deployment in deployments.values():
        path, function = deployment["entrypoint"].split(":")
        (flow,) = [node for node in ast.parse((ROOT / path).read_text()).body
                   if isinstance(node, ast.FunctionDef) and node.name == function]
        arguments = {argument.arg for argument in flow.args.args}
        assert {"config_path", "overrides", "project_root"} <= arguments
        assert set(deployment["parameters"]) <= arguments
        assert deployment["work_pool"]["name"] == "local"
    (schedule,) = deployments["train"]["schedules"]
    assert schedule["active"] is False and schedule["cron"]
    (trigger,) = deployments["evaluate"]["triggers"]
    parsed = TypeAdapter(DeploymentTriggerTypes).validate_python(trigger)
    assert parsed.expect == {"prefect.flow-run.Completed"}
    parsed.set_deployment_id(uuid.uuid4())
    (action,) = parsed.as_automation().actions  # validates the parameter templates
    assert action.type == "run-deployment"
    assert set(trigger["parameters"]) == {"config_path", "overrides", "project_root"}


@pytest.mark.slow
def test_deploy_train_then_evaluate_fires(stack: Stack, tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "configs").mkdir(parents=True)
    shutil.copy(CONFIG, project / "configs" / "tiny.yaml")

    output = stack.cli("deploy", "--all")
    for name in ("prepare-experiment-data/prepare-data", "train/train", "evaluate/evaluate"):
        assert name in output, output
    deployments = {d["name"]: d for d in _api(stack, "POST", "/deployments/filter", {})}
    assert set(deployments) == {"prepare-data", "train", "evaluate"}
    for deployment in deployments.values():  # the worker runs every flow from the project root
        assert deployment["work_pool_name"] == "local"
        assert deployment["pull_steps"] == [
            {"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}]
    (schedule,) = deployments["train"]["schedules"]
    assert schedule["schedule"]["cron"] == "0 2 * * *" and schedule["active"] is False  # paused
    automations = _api(stack, "GET", f"/automations/related-to/prefect.deployment.{deployments['evaluate']['id']}")
    assert [a["trigger"]["expect"] for a in automations] == [["prefect.flow-run.Completed"]]

    parameters = {"config_path": "configs/tiny.yaml", "project_root": str(project)}
    prepared = _run(stack, deployments["prepare-data"], parameters)
    _wait_until_final(stack, prepared["id"])
    assert list((project / "data" / "tiny_e2e").rglob("*.parquet")), "no shards written"

    train_parameters = {**parameters, "overrides": ["train.iterations=1"]}
    trained = _run(stack, deployments["train"], train_parameters)
    _wait_until_final(stack, trained["id"])
    assert list((project / "runs" / "tiny_e2e").glob("run-*/checkpoints/*")), "no checkpoint written"

    def evaluate_run() -> dict[str, Any] | None:
        runs = _api(stack, "POST", "/flow_runs/filter",
                    {"flow_runs": {"deployment_id": {"any_": [deployments["evaluate"]["id"]]}}})
        return runs[0] if runs else None

    evaluation = _wait_for("the trigger to start an evaluate run", evaluate_run, 120, stack)
    assert evaluation["parameters"] == {**train_parameters}
    _wait_until_final(stack, evaluation["id"])
    assert list((project / "runs" / "tiny_e2e" / "evaluations").iterdir()), "no evaluation written"
