"""The endpoint wing: an OpenAI-compatible chat-completions server in front of the rollout engine,
so agents written with any framework, in any language or process, can be trained (docs/ENDPOINT.md).

- :mod:`reinflow.endpoint.server` serves it (uvicorn, in a thread of the rollout's process);
- :mod:`reinflow.endpoint.app` holds the routes, the bearer-token check and the size limits;
- :mod:`reinflow.endpoint.episodes` keeps the episodes apart: each has its own base URL
  (``/episodes/<id>/v1``) and its own :class:`~reinflow.rollout.tuned_model.TunedModel`, which
  records every request's exact prompt ids, sampled ids and logprobs;
- :mod:`reinflow.endpoint.requests` and :mod:`reinflow.endpoint.conversation` check a request and
  turn its messages into the policy's chat turns, and the turn back into an OpenAI response;
- :mod:`reinflow.endpoint.command_workflow` runs one process per episode
  (``rollout.workflow_command``; :mod:`reinflow.endpoint.episode_process` starts, reads and ends it);
- :mod:`reinflow.endpoint.pull` and :mod:`reinflow.endpoint.pull_workflow` let remote workers claim
  episodes, and finish or abort them (``rollout.workflow_pull``).

A library wing: no Prefect, no flows, no CLI.
"""
