"""A conversation in the OpenAI chat format, checked and turned into the AgentScope messages an agent
would hand its model, so the tuned model's own formatter (``reinflow.rollout.chat_format``) renders it.

The format (what people already have, e.g. from an OpenAI-compatible API or a hand-written file)::

    {"messages": [
       {"role": "system", "content": "You are a math assistant ..."},
       {"role": "user", "content": "What is 347 * 29?"},
       {"role": "assistant", "content": "Let me compute it.", "tool_calls": [
           {"id": "c1", "type": "function",
            "function": {"name": "execute_python_code", "arguments": "{\\"code\\": \\"print(347 * 29)\\"}"}}]},
       {"role": "tool", "tool_call_id": "c1", "content": "10063"},
       {"role": "assistant", "content": "The answer is 10063."}],
     "tools": [{"type": "function", "function": {"name": "execute_python_code", "description": ..., "parameters": {...}}}]}

``content`` is a string, null, or a list of ``{"type": "text", "text": ...}`` parts; ``arguments`` a
JSON string (or an object). Keys whose value is null are ignored (a Parquet struct column fills
absent keys with nulls). An agent's reply is one assistant ``Msg`` whose blocks interleave the
model's text and calls with the tool results, so assistant and tool messages up to the next user
message become one such ``Msg``; a user message between model turns (an agent's hint) renders as
a ``user`` turn either way.

Problems raise :class:`BadDemonstration` with a ``reason`` (counted by the caller) and a detail.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from agentscope.message import Msg, TextBlock, ToolCallBlock, ToolResultBlock

from reinflow.rollout.tool_calls import ToolCall, parse_one_call

BAD_FORMAT = "bad_format"
UNDECLARED_TOOL = "undeclared_tool"
MALFORMED_TOOL_CALL = "malformed_tool_call"
ROLES = ("system", "user", "assistant", "tool")


class BadDemonstration(ValueError):
    """A demonstration that cannot be used; ``reason`` is the counted category."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def conversation_parts(row: Mapping[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(messages, tools)`` of one demonstration row, each a list of objects (JSON strings decoded,
    null-valued keys dropped); raises :class:`BadDemonstration` (``bad_format``) otherwise."""
    messages = _json_list(row.get("messages"), "messages")
    tools = _json_list(row.get("tools"), "tools") if row.get("tools") is not None else []
    if not messages:
        raise BadDemonstration(BAD_FORMAT, "'messages' is empty")
    for index, message in enumerate(messages):
        if message.get("role") not in ROLES:
            raise BadDemonstration(BAD_FORMAT, f"message {index}: role must be one of {', '.join(ROLES)}, "
                                               f"got {message.get('role')!r}")
    for index, tool in enumerate(tools):
        function = tool.get("function")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise BadDemonstration(BAD_FORMAT, f"tools[{index}] is not {{'type': 'function', 'function': {{'name': ...}}}}")
    return messages, tools


def _json_list(value: Any, key: str) -> list[dict[str, Any]]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise BadDemonstration(BAD_FORMAT, f"'{key}' is a string but not JSON ({error})") from None
    if not isinstance(value, list) or not all(isinstance(item, Mapping) for item in value):
        raise BadDemonstration(BAD_FORMAT, f"'{key}' must be a list of objects")
    return [_without_nulls(item) for item in value]


def _without_nulls(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {key: _without_nulls(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [_without_nulls(item) for item in value]
    return value


def tool_schema_names(tools: Sequence[Mapping[str, Any]]) -> set[str]:
    """The names of the offered tools."""
    return {tool["function"]["name"] for tool in tools}


def to_agentscope(messages: Sequence[Mapping[str, Any]], tool_names: set[str]) -> list[Msg]:
    """The messages as an agent hands them to its model (see the module docstring)."""
    msgs: list[Msg] = []
    reply: Msg | None = None  # the assistant Msg being filled
    calls: set[str] = set()
    for index, message in enumerate(messages):
        role = message["role"]
        if role == "assistant":
            if reply is None or _ends_with_generated(reply):
                reply = Msg(name="assistant", role="assistant", content=[])
                msgs.append(reply)
            blocks = assistant_blocks(message, tool_names, index)
            calls.update(block.id for block in blocks if isinstance(block, ToolCallBlock))
            reply.content.extend(blocks)
        elif role == "tool":
            call_id = message.get("tool_call_id")
            if reply is None or call_id not in calls:
                raise BadDemonstration(BAD_FORMAT, f"message {index}: a tool result whose tool_call_id {call_id!r} "
                                                   "answers no earlier tool call")
            reply.content.append(ToolResultBlock(id=call_id, name=str(message.get("name", "")),
                                                 output=text_of(message, index), state="success"))
        else:
            reply = None
            msgs.append(Msg(name=role, role=role, content=[TextBlock(text=text_of(message, index))]))
    return msgs


def _ends_with_generated(reply: Msg) -> bool:
    """Whether the reply's last block is the model's (a second assistant message starts a new turn)."""
    return bool(reply.content) and isinstance(reply.content[-1], (TextBlock, ToolCallBlock))


def assistant_blocks(message: Mapping[str, Any], tool_names: set[str], index: int) -> list[TextBlock | ToolCallBlock]:
    """The text and tool-call blocks of one assistant message; every call must name an offered tool
    and carry a JSON object of arguments (``undeclared_tool``, ``malformed_tool_call``)."""
    text = text_of(message, index)
    blocks: list[TextBlock | ToolCallBlock] = [TextBlock(text=text)] if text else []
    raw_calls = message.get("tool_calls", [])
    if not isinstance(raw_calls, list):
        raise BadDemonstration(BAD_FORMAT, f"message {index}: 'tool_calls' must be a list")
    for position, raw in enumerate(raw_calls):
        name, arguments = _call_parts(raw, index, position)
        checked = parse_one_call(json.dumps({"name": name, "arguments": arguments}), tool_names)
        if not isinstance(checked, ToolCall):
            reason = UNDECLARED_TOOL if checked.error.startswith("unknown tool") else MALFORMED_TOOL_CALL
            raise BadDemonstration(reason, f"message {index}, tool call {position}: {checked.error}")
        call_id = str(raw.get("id") or f"call_{index}_{position}")
        blocks.append(ToolCallBlock(id=call_id, name=name, input=json.dumps(checked.arguments, ensure_ascii=False)))
    if not blocks:
        raise BadDemonstration(BAD_FORMAT, f"message {index}: an assistant message with neither content nor tool calls")
    return blocks


def _call_parts(raw: Any, index: int, position: int) -> tuple[Any, Any]:
    """``(name, arguments)`` of one OpenAI tool call; arguments decoded from their JSON string."""
    function = raw.get("function") if isinstance(raw, Mapping) else None
    if not isinstance(function, Mapping):
        raise BadDemonstration(BAD_FORMAT, f"message {index}, tool call {position}: no 'function' object")
    arguments = function.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments or "{}")
        except json.JSONDecodeError as error:
            raise BadDemonstration(MALFORMED_TOOL_CALL, f"message {index}, tool call {position}: "
                                                        f"arguments are not JSON ({error})") from None
    return function.get("name"), arguments


def text_of(message: Mapping[str, Any], index: int) -> str:
    """The text of a message's ``content``: a string, null, or a list of text parts (joined by newlines)."""
    content = message.get("content")
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list) and all(isinstance(part, Mapping) and part.get("type") == "text" for part in content):
        return "\n".join(str(part.get("text", "")) for part in content)
    raise BadDemonstration(BAD_FORMAT, f"message {index}: content must be a string or a list of text parts")
