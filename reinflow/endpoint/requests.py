"""What ``POST .../v1/chat/completions`` accepts, checked strictly: an unknown or unsupported field is a
400 that names it, never silently ignored.

Accepted (the OpenAI chat-completions request, text only): ``messages`` (``system``/``developer``,
``user``, ``assistant`` with ``tool_calls``, ``tool``; content a string or a list of text parts),
``tools`` (functions), ``tool_choice``, ``temperature``, ``top_p``, ``max_tokens`` /
``max_completion_tokens``, ``stop``, ``stream``, ``n`` (1 only), ``logprobs``/``top_logprobs`` (0),
and the bookkeeping fields ``model``, ``user``, ``seed``, ``metadata``, ``store``,
``parallel_tool_calls``, ``stream_options``.

What the policy's sampling ignores, on purpose (it is trained on the rollout's own settings, and
its logprobs must be those of ``rollout.temperature``/``top_p``): ``temperature``, ``top_p``,
``seed`` and ``tool_choice``. ``max_tokens`` can only lower ``rollout.max_new_tokens_per_turn``.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from reinflow.endpoint.errors import EndpointError


class Strict(BaseModel):
    """Unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


class TextPart(Strict):
    type: Literal["text"] = Field(description="Only text parts: the policy reads text.")
    text: str


Content = str | list[TextPart]


class FunctionCall(Strict):
    name: str = Field(min_length=1)
    arguments: str = Field(description="The call's arguments as a JSON string (as the endpoint returned them).")


class ToolCallIn(Strict):
    id: str = Field(min_length=1)
    type: Literal["function"] = "function"
    function: FunctionCall


class SystemMessage(Strict):
    role: Literal["system", "developer"]
    content: Content
    name: str | None = None


class UserMessage(Strict):
    role: Literal["user"]
    content: Content
    name: str | None = None


class AssistantMessage(Strict):
    role: Literal["assistant"]
    content: Content | None = None
    tool_calls: list[ToolCallIn] | None = None
    name: str | None = None
    refusal: str | None = None


class ToolMessage(Strict):
    role: Literal["tool"]
    content: Content
    tool_call_id: str = Field(min_length=1)
    name: str | None = Field(None, description="The tool's name, as AgentScope 1.x's OpenAIChatFormatter sends it; "
                                               "not rendered (the call id ties the result to its call).")


Message = Annotated[SystemMessage | UserMessage | AssistantMessage | ToolMessage, Field(discriminator="role")]


class FunctionSchema(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolSchema(Strict):
    type: Literal["function"]
    function: FunctionSchema

    def as_schema(self) -> dict[str, Any]:
        """The schema as the chat template and the tool-call parser read it."""
        function = self.function.model_dump(exclude_none=True)
        function.setdefault("parameters", {"type": "object", "properties": {}})
        return {"type": "function", "function": function}


class ChatCompletionRequest(Strict):
    """One chat-completions request (see the module docstring for what is honoured)."""

    messages: list[Message] = Field(min_length=1)
    model: str | None = None
    tools: list[ToolSchema] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: str | Annotated[list[str], Field(max_length=16)] | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    n: Literal[1] = Field(1, description="One choice per request: every sampled reply is a turn of the episode.")
    logprobs: bool | None = None
    top_logprobs: Literal[0] | None = None
    parallel_tool_calls: bool | None = None
    seed: int | None = None
    user: str | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None

    def stop_strings(self) -> list[str]:
        """``stop`` as a list."""
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def token_cap(self) -> int | None:
        """The request's own limit on generated tokens, if any."""
        caps = [cap for cap in (self.max_tokens, self.max_completion_tokens) if cap is not None]
        return min(caps) if caps else None

    def tool_schemas(self) -> list[dict[str, Any]]:
        """The offered tools as schemas."""
        return [tool.as_schema() for tool in self.tools or []]


ACCEPTED_FIELDS = ", ".join(ChatCompletionRequest.model_fields)


def parse_request(body: bytes) -> ChatCompletionRequest:
    """The checked request, or a 400 :class:`EndpointError` saying what is wrong and where."""
    payload = parse_json_object(body)
    try:
        return ChatCompletionRequest.model_validate(payload)
    except ValidationError as error:
        raise _invalid(error) from None


def parse_json_object(body: bytes) -> dict[str, Any]:
    """The body's JSON object, or a 400 :class:`EndpointError` (not JSON, too deep, not an object)."""
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise EndpointError(400, "invalid_json", f"the request body is not valid JSON: {error}") from None
    except RecursionError:
        raise EndpointError(400, "invalid_json", "the request body's JSON nests too deeply") from None
    if not isinstance(payload, dict):
        raise EndpointError(400, "invalid_request", "the request body must be a JSON object")
    return payload


def _invalid(error: ValidationError) -> EndpointError:
    """A 400 naming the deepest problem: its field path and what is wrong (the alternatives of a
    union, e.g. "a valid string or a valid list", joined)."""
    problems = error.errors(include_url=False)
    deepest = max(problems, key=lambda problem: len(problem["loc"]))
    path = _field_path(deepest["loc"])
    if deepest["type"] == "extra_forbidden":
        message = f"unknown or unsupported field '{path}'"
        if len(deepest["loc"]) == 1:
            message += f"; this endpoint accepts: {ACCEPTED_FIELDS}"
        return EndpointError(400, "unsupported_field", message, param=path)
    alternatives = dict.fromkeys(problem["msg"] for problem in problems if _field_path(problem["loc"]) == path)
    return EndpointError(400, "invalid_request", f"{path}: {', or '.join(alternatives)}", param=path)


def _field_path(loc: tuple[Any, ...]) -> str:
    """The dotted path of an error location without pydantic's union-member names: a message's
    role tag after its index (``messages.0.user.content``) and type names (``str``, ``list[str]``).

    >>> _field_path(("messages", 0, "user", "content", "list[TextPart]", 0, "type"))
    'messages.0.content.0.type'
    >>> _field_path(("user",))
    'user'
    """
    parts: list[str] = []
    for position, part in enumerate(loc):
        after_index = position > 0 and isinstance(loc[position - 1], int)
        is_tag = isinstance(part, str) and (
            (after_index and part in ROLE_TAGS) or "[" in part or part in {"str", "int", "float", "bool"}
        )
        if not is_tag:
            parts.append(str(part))
    return ".".join(parts)


ROLE_TAGS = {"system", "developer", "user", "assistant", "tool"}
