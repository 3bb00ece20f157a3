"""``rollout.workflow_command``: an agent outside reinflow's process, one process per episode.

For each episode the runner hands this workflow a task and a fresh
:class:`~reinflow.rollout.tuned_model.TunedModel` (as for any workflow). The workflow opens the
episode on the run's endpoint, starts the command (from the project root) with

- stdin: the task as JSON: ``{"task_id", "question", "reference_answer", "row", "options", "episode_id"}``
  (``options``: ``rollout.workflow_options``);
- environment: the trainer's, plus ``OPENAI_BASE_URL`` (the episode's own base URL),
  ``OPENAI_API_KEY`` (the run's bearer token) and ``REINFLOW_EPISODE_ID``;

and reads its result from the last line of stdout (``reinflow.endpoint.episode_process``). Every
chat completion the process asks for is a turn of the episode's model, recorded token for token,
so the rollout row (samples, ``grouped_steps``, format errors) is built as for an in-process
workflow. A process that exits with an error or prints no valid result fails its episode (the
error names why); one that hangs is killed at ``rollout.episode_timeout_seconds`` and the episode
is a timeout. Either way the run goes on.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from reinflow.config import RolloutConfig
from reinflow.endpoint.episode_process import CommandResult, parse_result, run_process, task_json
from reinflow.endpoint.server import EndpointServer
from reinflow.rollout.tuned_model import TunedModel
from reinflow.rollout.workflow import Task, Workflow, WorkflowOutput


class CommandWorkflow(Workflow):
    """Runs ``command`` once per episode against the OpenAI-compatible endpoint."""

    def __init__(self, command: list[str], server: EndpointServer, project_root: Path, *,
                 max_output_bytes: int, max_episode_tokens: int | None = None, **options: Any) -> None:
        super().__init__(**options)
        self.command = list(command)
        self.server = server
        self.project_root = project_root
        self.max_output_bytes = max_output_bytes
        self.max_episode_tokens = max_episode_tokens

    @classmethod
    def from_rollout_config(cls, rollout: RolloutConfig, project_root: Path) -> CommandWorkflow:
        """The workflow ``rollout.workflow_command`` asks for, with its own endpoint server."""
        if rollout.workflow_command is None:
            raise ValueError("rollout.workflow_command is not set")
        server = EndpointServer(rollout.endpoint)
        return cls(rollout.workflow_command, server, project_root, max_output_bytes=rollout.max_command_output_bytes,
                   max_episode_tokens=rollout.endpoint.max_episode_tokens, **rollout.workflow_options)

    async def run(self, task: Task, model: TunedModel) -> WorkflowOutput:
        """Serve one episode to one process (see the module docstring)."""
        self.server.start()
        episode = self.server.registry.open(model, task, self.max_episode_tokens)
        payload = task_json(task, episode.episode_id, self.options)
        env = os.environ | {"OPENAI_BASE_URL": self.server.base_url(episode), "OPENAI_API_KEY": self.server.token,
                            "REINFLOW_EPISODE_ID": episode.episode_id}
        try:
            output = await run_process(self.command, json.dumps(payload, default=str).encode(), env,
                                       self.project_root, self.max_output_bytes)
        finally:
            self.server.registry.close(episode)
        if episode.failure is not None:
            raise episode.failure
        return workflow_output(parse_result(output.redacted(self.server.token), self.command[0]), model)

    def close(self) -> None:
        """Stop the endpoint."""
        self.server.stop()


def workflow_output(result: CommandResult, model: TunedModel) -> WorkflowOutput:
    """An outside agent's result as the episode's output; its ``judge_input`` goes to the model."""
    model.update_judge_input_dictionary(**result.judge_input)
    answer = None if result.final_answer is None else str(result.final_answer)
    return WorkflowOutput(final_answer=answer, reward=result.reward, metadata=result.metadata)
