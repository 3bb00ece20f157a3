"""Errors the endpoint answers with, as OpenAI does: ``{"error": {"message", "type", "param", "code"}}``.

An agent's OpenAI client raises them as its usual exceptions (``BadRequestError`` for 400,
``NotFoundError`` for 404, ...), so the agent can read what went wrong and end its episode.
"""

from __future__ import annotations

from typing import Any

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
    503: "server_error",
}


class EndpointError(Exception):
    """A request the endpoint refuses or cannot serve; becomes an OpenAI-style error response."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.param = status, code, message, param

    def body(self) -> dict[str, Any]:
        """The JSON body of the error response.

        >>> EndpointError(404, "episode_not_found", "no such episode").body()["error"]["type"]
        'not_found_error'
        """
        kind = ERROR_TYPES.get(self.status, "invalid_request_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


def episode_not_found(episode_id: str) -> EndpointError:
    """The 404 of a request for an episode that is not running here."""
    return EndpointError(
        404, "episode_not_found",
        f"no episode '{episode_id}' is running on this endpoint: it finished, timed out or never existed; "
        "use the base URL handed to this episode (OPENAI_BASE_URL)",
    )
