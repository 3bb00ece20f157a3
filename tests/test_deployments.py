"""The deployments of ``prefect.yaml`` on a real local Prefect server.

Starts ``prefect server start`` (SQLite in a temporary PREFECT_HOME, loopback only), creates the
process work pool ``local``, starts a worker, runs ``prefect deploy --all`` from the project root,
then runs ``prepare-data`` and ``train`` (the tiny model, one iteration) and waits for the
``evaluate`` run that the event trigger starts when ``train`` completes. Data, runs and the MLflow
database land in a temporary project root (the flows' ``project_root`` parameter), not the repo.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers.prefect_stack import ROOT, Stack, api as _api, run_deployment as _run, running_stack
from helpers.prefect_stack import wait_for as _wait_for, wait_until_final as _wait_until_final

CONFIG = ROOT / "tests" / "configs" / "tiny_e2e.yaml"


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    """`prefect server start` + the process work pool `local` + `prefect worker start --pool local`."""
    with running_stack(tmp_path) as running:
        yield running


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
