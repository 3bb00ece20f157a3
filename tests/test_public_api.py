"""The import paths users write keep working after the library moved into wings.

A workflow or judge author imports from ``reinflow`` itself (and ``reinflow.workflow``); those names
must be the very objects the wings define, not copies. The old path ``reinflow.python_tool`` still
works for one release but warns, naming the new import. ``reinflow.sandbox`` exports the sandbox's
public API.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

import reinflow
import reinflow.sandbox
import reinflow.workflow

PROJECT_ROOT = Path(__file__).resolve().parents[1]
NEW_IMPORT = "from reinflow import execute_python_code_tool"

AUTHOR_NAMES = {
    "Workflow": "reinflow.rollout.workflow",
    "WorkflowOutput": "reinflow.rollout.workflow",
    "Task": "reinflow.rollout.workflow",
    "TunedModel": "reinflow.rollout.tuned_model",
    "Judge": "reinflow.judging.judge",
    "execute_python_code_tool": "reinflow.sandbox.python_tool",
    "SandboxLimits": "reinflow.sandbox.runner",
}
"""Each name a workflow or judge author imports from ``reinflow``, and the wing module that provides it."""


def run_python(*args: str) -> subprocess.CompletedProcess[str]:
    """``python *args`` in a fresh interpreter at the project root (nothing is imported yet)."""
    return subprocess.run(
        [sys.executable, *args], cwd=PROJECT_ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=120
    )


# ----------------------------------------------------------------------------- reinflow


def test_an_author_imports_everything_from_reinflow() -> None:
    from reinflow import (  # noqa: F401  (the import itself is the test)
        Judge,
        SandboxLimits,
        Task,
        TunedModel,
        Workflow,
        WorkflowOutput,
        execute_python_code_tool,
    )

    assert set(AUTHOR_NAMES) <= set(reinflow.__all__)


@pytest.mark.parametrize(("name", "module"), sorted(AUTHOR_NAMES.items()))
def test_reinflow_names_are_the_wing_objects(name: str, module: str) -> None:
    assert getattr(reinflow, name) is getattr(importlib.import_module(module), name)


def test_sandbox_limits_is_defined_once() -> None:
    from reinflow.sandbox import limits, runner

    assert reinflow.SandboxLimits is runner.SandboxLimits is limits.SandboxLimits is reinflow.sandbox.SandboxLimits


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'NoSuchName'"):
        reinflow.NoSuchName  # noqa: B018


def test_reinflow_workflow_is_still_the_front_door() -> None:
    from reinflow.rollout import workflow

    assert set(reinflow.workflow.__all__) == {"Task", "Workflow", "WorkflowOutput"}
    for name in reinflow.workflow.__all__:
        assert getattr(reinflow.workflow, name) is getattr(workflow, name)


def test_importing_reinflow_stays_light() -> None:
    """AgentScope and torch load only when a lazy name (``TunedModel``, the tool) is first used."""
    probe = "import sys, reinflow; print(sorted({'agentscope', 'torch'} & set(sys.modules)))"
    completed = run_python("-c", probe)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "[]"


# ----------------------------------------------------------------------------- the deprecated path


def test_the_old_tool_path_warns_with_the_new_import() -> None:
    completed = run_python("-W", "error::DeprecationWarning", "-c", "import reinflow.python_tool")
    assert completed.returncode != 0
    assert "DeprecationWarning: reinflow.python_tool is deprecated" in completed.stderr
    assert NEW_IMPORT in completed.stderr


def test_the_old_tool_path_still_provides_the_tool() -> None:
    probe = (
        "import reinflow.python_tool as old, reinflow.sandbox.python_tool as new\n"
        "print(old.execute_python_code_tool is new.execute_python_code_tool)"
    )
    completed = run_python("-c", probe)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "True"


# ----------------------------------------------------------------------------- reinflow.sandbox


@pytest.mark.parametrize(
    ("name", "module"),
    [
        ("SandboxLimits", "reinflow.sandbox.limits"),
        ("run_python", "reinflow.sandbox.runner"),
        ("run_python_async", "reinflow.sandbox.runner"),
    ],
)
def test_the_sandbox_package_exports_its_api(name: str, module: str) -> None:
    assert name in reinflow.sandbox.__all__
    assert getattr(reinflow.sandbox, name) is getattr(importlib.import_module(module), name)


def test_every_sandbox_export_resolves() -> None:
    for name in reinflow.sandbox.__all__:
        assert getattr(reinflow.sandbox, name) is not None, name
