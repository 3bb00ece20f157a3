"""The ``rollout.endpoint`` section: the OpenAI-compatible endpoint that agents outside reinflow's
process talk to (``reinflow.endpoint``; docs/ENDPOINT.md). Safe by default: loopback only, a
bearer token on every request, bounded request sizes and concurrency."""

from __future__ import annotations

from pydantic import Field

from reinflow.config.section import Section


class EndpointConfig(Section):
    """Where the endpoint listens and what it accepts."""

    host: str = Field(
        "127.0.0.1", min_length=1,
        description="Address the endpoint binds. Loopback by default; another address (e.g. `0.0.0.0` for workers on "
        "other machines) exposes it, and every request still needs the run's bearer token.",
    )
    port: int = Field(0, ge=0, le=65_535, description="TCP port; 0 picks a free one.")
    token_env: str | None = Field(
        None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Environment variable holding the bearer token every request must carry (give the same value to "
        "remote workers). Unset: a random token per run, handed to `workflow_command` processes as OPENAI_API_KEY.",
    )
    public_url: str | None = Field(
        None, pattern=r"^https?://[^\s/]+(/[^\s]*)?$",
        description="Base URL under which other machines reach the endpoint (e.g. `http://trainer:8400`), used in the "
        "URLs handed to workers. Unset: the bound address.",
    )
    max_request_bytes: int = Field(
        4 * 2**20, ge=1024, le=256 * 2**20, description="Largest request body accepted; larger ones get 413."
    )
    max_concurrent_requests: int = Field(
        256, ge=1, le=65_536, description="Requests served at once over all episodes; more get 429 (rate limit)."
    )
    max_episode_tokens: int | None = Field(
        None, ge=1, le=2**31,
        description="Most tokens the policy generates for one episode through the endpoint; a request past it gets a "
        "`token_budget_exceeded` error (None: no cap beyond `max_turns` and `max_model_len`).",
    )
