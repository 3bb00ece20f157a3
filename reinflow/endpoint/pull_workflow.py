"""``rollout.workflow_pull``: episodes run by remote workers through the pull API (``reinflow.endpoint.pull``).

Each episode is opened on the endpoint and queued; the workflow waits until a worker finishes or
aborts it. A worker's result is handled as a ``workflow_command``'s result line; an abort fails the
episode with the worker's reason; silence ends it at ``rollout.episode_timeout_seconds`` (the
runner's timeout), and the run goes on.
"""

from __future__ import annotations

from typing import Any

from reinflow.config import RolloutConfig
from reinflow.endpoint.command_workflow import workflow_output
from reinflow.endpoint.pull import PullQueue, pull_routes
from reinflow.endpoint.server import EndpointServer
from reinflow.rollout.tuned_model import TunedModel
from reinflow.rollout.workflow import Task, Workflow, WorkflowOutput


class PullWorkflow(Workflow):
    """Hands every episode to whichever remote worker claims it."""

    def __init__(self, server: EndpointServer, *, max_episode_tokens: int | None = None, **options: Any) -> None:
        super().__init__(**options)
        self.server = server
        self.queue = PullQueue(dict(options))
        self.max_episode_tokens = max_episode_tokens

    @classmethod
    def from_rollout_config(cls, rollout: RolloutConfig) -> PullWorkflow:
        """The workflow ``rollout.workflow_pull`` asks for, with its own endpoint server."""
        return cls(EndpointServer(rollout.endpoint), max_episode_tokens=rollout.endpoint.max_episode_tokens,
                   **rollout.workflow_options)

    def start(self) -> None:
        """Serve the endpoint with the pull API (also done by the first episode)."""
        self.server.start(pull_routes(self.server.state, self.queue, self.server.base_url))

    async def run(self, task: Task, model: TunedModel) -> WorkflowOutput:
        """Queue the episode and wait for its worker's report (see the module docstring)."""
        self.start()
        episode = self.server.registry.open(model, task, self.max_episode_tokens)
        outcome = self.queue.offer(episode)
        try:
            result = await outcome  # raises EpisodeAborted for an abort
        finally:
            self.queue.withdraw(episode)
            self.server.registry.close(episode)
        if episode.failure is not None:
            raise episode.failure
        return workflow_output(result, model)

    def close(self) -> None:
        """Stop the endpoint."""
        self.server.stop()
