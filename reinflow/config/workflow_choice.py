"""Which workflow runs the episodes: a class in reinflow's process (``rollout.workflow``), a
command per episode that talks to the OpenAI-compatible endpoint (``rollout.workflow_command``),
or remote workers that claim episodes through the endpoint's pull API (``rollout.workflow_pull``).

The fields are the first ones of ``rollout`` (:class:`~reinflow.config.experiment.RolloutConfig`
extends :class:`WorkflowChoice`)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, model_validator

from reinflow.config.endpoint import EndpointConfig
from reinflow.config.section import Section

ImportPath = Annotated[
    str,
    Field(pattern=r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*(->|:)[A-Za-z_]\w*$"),
]
"""``module.path->ClassName`` (AgentScope tuning style) or ``module.path:ClassName``."""


class WorkflowChoice(Section):
    """The episode's agent: exactly one of ``workflow``, ``workflow_command`` and ``workflow_pull``."""

    workflow: ImportPath | None = Field(
        None,
        description="The agent workflow class, `module.path->ClassName` or `module.path:ClassName`, "
        "imported relative to the project root.",
    )
    workflow_options: dict[str, Any] = Field(
        default_factory=dict,
        description="Keyword arguments for the workflow's constructor (with `workflow_command`: the `options` of the "
        "task JSON each process reads).",
    )
    workflow_command: list[Annotated[str, Field(min_length=1)]] | None = Field(
        None, min_length=1,
        description="Instead of `workflow`: the command (argv, run from the project root) started once per episode. "
        "It reads the task as JSON on stdin, talks to the endpoint at $OPENAI_BASE_URL with $OPENAI_API_KEY, and "
        "prints its result as one JSON line on stdout (docs/ENDPOINT.md).",
    )
    workflow_pull: bool = Field(
        False,
        description="Instead of `workflow`: queue every episode for remote workers, which claim it through the "
        "endpoint's pull API, run it against the endpoint and report its result (docs/ENDPOINT.md).",
    )
    max_command_output_bytes: int = Field(
        2**20, ge=1024, le=2**30,
        description="Most bytes of a `workflow_command` process's stdout (and of its stderr) kept; the rest is read "
        "and dropped.",
    )
    endpoint: EndpointConfig = Field(
        default_factory=EndpointConfig,
        description="The OpenAI-compatible endpoint `workflow_command` episodes talk to.",
    )

    @model_validator(mode="after")
    def _exactly_one_workflow(self) -> WorkflowChoice:
        chosen = [name for name, value in (("workflow", self.workflow), ("workflow_command", self.workflow_command),
                                           ("workflow_pull", self.workflow_pull or None)) if value is not None]
        if len(chosen) != 1:
            given = " and ".join(chosen) if chosen else "none of them"
            raise ValueError(
                "set exactly one of workflow (a class run in process), workflow_command (a command per episode "
                f"talking to the OpenAI-compatible endpoint) and workflow_pull (remote workers); {given} is set"
            )
        return self
