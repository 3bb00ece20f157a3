"""No Prefect flow or task takes a live object (session, runtime, engine, policy, judge) as a parameter.

Prefect serialises a flow run's parameters for its API record and hashes a task's inputs, and how it
does so changes between releases: Prefect 3.7.7 with fastapi 0.136 turns a dataclass parameter into
a dict with ``dataclasses.asdict``, which deep-copies it, and torch's packed tensors refuse to be
copied (issue #17). Flows and tasks take plain values; the live objects travel in ``tasks.live``.

Checked three ways, none tied to one Prefect release: every flow and task signature of ``flows/``
and ``tasks/`` (fast), ``tasks.live`` itself (fast), and what a real 1-iteration ``reinflow train``
passes to each flow and task call, on whichever Prefect is installed (slow).
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
from prefect import Flow, Task

from helpers.parameter_probe import PROBE_ENV
from helpers.plain_values import plain_type, plain_value, resolved_hints
from helpers.train_run import assert_run_is_whole, project, train
from tasks.live import live, live_objects, live_session

ROOT = Path(__file__).resolve().parents[1]
PREFECT_MODULES = sorted(
    f"{folder}.{path.stem}" for folder in ("flows", "tasks") for path in (ROOT / folder).glob("*.py")
    if path.stem != "__init__"
)


def flows_and_tasks() -> dict[str, Flow | Task]:
    found = {}
    for name in PREFECT_MODULES:
        module = importlib.import_module(name)
        for attribute, value in vars(module).items():
            if isinstance(value, (Flow, Task)) and value.fn.__module__ == name:
                found[f"{name}.{attribute}"] = value
    return found


def test_every_flow_and_task_of_the_train_and_evaluate_flows_is_found():
    found = flows_and_tasks()
    assert {"flows.train.train", "flows.train.train_iteration", "flows.evaluate.evaluate",
            "flows.prepare_data.prepare_data", "tasks.rollout.rollout", "tasks.judge.judge", "tasks.update.update",
            "tasks.checkpoint.checkpoint", "tasks.evaluate.evaluate", "tasks.warmup.warmup"} <= set(found)


def test_no_flow_or_task_parameter_is_a_live_object():
    live_parameters = [f"{name}({parameter}: {hint})" for name, function in flows_and_tasks().items()
                       for parameter, hint in resolved_hints(function.fn).items() if not plain_type(hint)]
    assert live_parameters == []


@pytest.mark.parametrize("annotation, plain", [
    ("str", True), ("int | None", True), ("list[str] | None", True), ("dict[str, Any]", True),
    ("DataConfig", True), ("RawFile", True), ("Any", False), ("TrainingSession", False),
    ("RolloutRuntime", False), ("Judge", False), ("list[Judge]", False), ("Path", False),
])
def test_the_signature_check_tells_plain_from_live(annotation, plain):
    from typing import Any  # noqa: F401  (names the annotations use)

    from reinflow.config import DataConfig  # noqa: F401
    from reinflow.data.sources import RawFile  # noqa: F401
    from reinflow.judging.judge import Judge  # noqa: F401
    from reinflow.run.rollout_runtime import RolloutRuntime  # noqa: F401
    from reinflow.run.session import TrainingSession  # noqa: F401

    assert plain_type(eval(annotation)) is plain  # noqa: S307  (test-owned strings)


def test_plain_values_round_trip_through_json_and_live_ones_do_not():
    from reinflow.config import load_config

    data = load_config(ROOT / "tests" / "configs" / "tiny_e2e.yaml", []).data
    assert plain_value({"config": {"a": [1, 2.5, None]}, "path": "runs/x", "data": data})
    assert not plain_value(object()) and not plain_value({"session": object()}) and not plain_value(Path("x"))


class FakeSession:
    def __init__(self, run_dir: Path) -> None:
        self.run_dir, self.runtime, self.judge = run_dir, object(), object()


def test_live_objects_are_seen_inside_the_block_only_and_checked_against_the_run(tmp_path):
    session = FakeSession(tmp_path / "run")
    with pytest.raises(RuntimeError, match="no live objects"):
        live_objects()
    with live(session=session) as objects:
        assert live_session(str(tmp_path / "run")) is session
        assert objects.runtime is session.runtime and objects.judge is session.judge
        with pytest.raises(RuntimeError, match="not .*other"):
            live_session(str(tmp_path / "other"))
        runtime, judge = object(), object()
        with live(runtime=runtime, judge=judge):  # nested: the inner block wins, then the outer is back
            assert live_objects().runtime is runtime
            with pytest.raises(RuntimeError, match="needs a training session"):
                live_session(str(tmp_path / "run"))
        assert live_session(str(tmp_path / "run")) is session
    with pytest.raises(RuntimeError, match="no live objects"):
        live_objects()
    with pytest.raises(TypeError):
        with live(runtime=object()):
            pass


@pytest.mark.slow
def test_a_train_run_passes_only_plain_values_to_its_flows_and_tasks(tmp_path):
    """The real check: a 1-iteration run on the installed Prefect finishes, and every flow and task
    call it made got plain values (what a release that copies or serialises parameters can take)."""
    root = project(tmp_path)
    probe = tmp_path / "parameters.jsonl"
    train(root, "train.iterations=1", preload="helpers.parameter_probe", env={PROBE_ENV: str(probe)})
    assert_run_is_whole(root, "train.iterations=1")
    calls = [json.loads(line) for line in probe.read_text().splitlines()]
    called = {(call["kind"], call["name"]) for call in calls}
    assert {("flow", "train"), ("flow", "prepare-data"), ("flow", "train-iteration"), ("task", "rollout"),
            ("task", "judge"), ("task", "update"), ("task", "evaluate"), ("task", "checkpoint")} <= called
    live_arguments = [f"{c['kind']} {c['name']}({c['parameter']}: {c['type']})" for c in calls if not c["plain"]]
    assert live_arguments == []
