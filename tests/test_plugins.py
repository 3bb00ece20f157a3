"""reinflow.config.plugins.construct_plugin: the one way a workflow or judge named in the config is
imported, checked and built from its options, every problem a one-line PluginError."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict

from reinflow.config.plugins import PluginError, construct_plugin
from reinflow.errors import ReinflowError
from reinflow.rollout.workflow import Workflow

ROOT = Path(__file__).resolve().parents[1]


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    steps: int = 1
    secret: str = ""


class Strict:
    """Validates its options with pydantic, as agents/math_agent.py does."""

    def __init__(self, **options: object) -> None:
        self.options = _Options.model_validate(options)

    def run(self) -> None:
        """The required method."""


class Picky:
    def __init__(self, level: int = 0) -> None:
        if level > 3:
            raise ReinflowError(f"level {level} is too high\n(the levels are 0 to 3)")

    def run(self) -> None:
        """The required method."""


class Buggy:
    def __init__(self) -> None:
        raise RuntimeError("a bug in the plugin")

    def run(self) -> None:
        """The required method."""


def build(class_name: str, options: dict, base: type | None = None):
    return construct_plugin(f"tests.test_plugins->{class_name}", options, ROOT, role="workflow",
                            required_methods=("run",), base=base, options_key="rollout.workflow_options")


def test_constructs_with_the_options():
    assert build("Strict", {"steps": 3}).options.steps == 3
    assert type(build("Picky", {"level": 2})).__name__ == "Picky"  # imported as tests.test_plugins, not this module


def test_validation_errors_name_the_option_not_the_options_class_nor_the_value():
    with pytest.raises(PluginError) as caught:
        build("Strict", {"stepz": 3})
    assert str(caught.value) == (
        "workflow 'tests.test_plugins->Strict': bad rollout.workflow_options: stepz: Extra inputs are not permitted"
    )
    with pytest.raises(PluginError) as caught:
        build("Strict", {"steps": "many", "secret": 42, "extra": 1})
    message = str(caught.value)
    assert message.endswith("bad rollout.workflow_options: steps: Input should be a valid integer, unable to parse "
                            "string as an integer (and 2 more problems)")
    assert "many" not in message and "42" not in message and "\n" not in message


def test_type_errors_and_the_plugins_own_errors_are_one_line():
    with pytest.raises(PluginError, match=r"bad rollout.workflow_options: .*unexpected keyword argument 'colour'$"):
        build("Picky", {"colour": "red"})
    with pytest.raises(PluginError) as caught:
        build("Picky", {"level": 9})
    assert str(caught.value).endswith("bad rollout.workflow_options: level 9 is too high")


def test_a_missing_base_class_is_refused_before_construction():
    with pytest.raises(PluginError, match=r"^workflow 'tests.test_plugins->Buggy': Buggy must subclass reinflow.Workflow$"):
        build("Buggy", {}, base=Workflow)


def test_a_bug_in_the_constructor_keeps_its_traceback():
    with pytest.raises(RuntimeError, match="a bug in the plugin"):
        build("Buggy", {})
