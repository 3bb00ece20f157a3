"""Parse Hermes/Qwen-style tool calls out of a model's reply text. Pure: no AgentScope, no tokenizer.

The format (the one Qwen2.5 and Hermes models are trained on, and the one reinflow's tool block in
the system prompt asks for) is one JSON object per call, wrapped in tags, several per reply allowed::

    Let me add them.
    <tool_call>
    {"name": "add", "arguments": {"a": 2, "b": 3}}
    </tool_call>

A call is **malformed** when its JSON does not parse, is not an object, has no string ``name``,
names a tool that is not offered, has ``arguments`` that are not a JSON object, or when a tag is
left unclosed (``<tool_call>`` without ``</tool_call>``, typically a reply cut off by the token
limit) or closed without being opened, or when its JSON nests deeper than
:data:`MAX_JSON_DEPTH` levels. Malformed calls are returned, not raised: the caller counts them as
format errors and shows ``error`` to the agent as the result of that call. With ``max_calls``, the
calls past that many are not returned; one malformed call in their place says how many were dropped.

A missing ``arguments`` key means ``{}`` (a tool without parameters). Keys other than ``name`` and
``arguments`` are ignored.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

OPEN_TAG = "<tool_call>"
CLOSE_TAG = "</tool_call>"
_TAG = re.compile(re.escape(OPEN_TAG) + "|" + re.escape(CLOSE_TAG))
MAX_JSON_DEPTH = 64
"""Deepest nesting of lists and objects a call may have: deeper JSON would exhaust the recursion
limit of ``json`` (and of every later ``json.dumps`` of the call) and is never a sane tool call."""


@dataclass(frozen=True)
class ToolCall:
    """A well-formed call of an offered tool."""

    name: str
    arguments: dict[str, Any]
    raw: str
    """The text between the tags, as generated."""


@dataclass(frozen=True)
class MalformedToolCall:
    """A call the agent cannot run; ``error`` says why, in words meant for the model."""

    raw: str
    error: str


@dataclass(frozen=True)
class ParsedReply:
    """A reply split into its plain text and its calls (in the order they were written)."""

    text: str
    """The text outside the tool-call tags, stripped of surrounding whitespace."""
    calls: list[ToolCall | MalformedToolCall] = field(default_factory=list)

    @property
    def format_errors(self) -> int:
        """How many calls are malformed."""
        return sum(isinstance(call, MalformedToolCall) for call in self.calls)


def parse_tool_calls(reply: str, tool_names: Collection[str], max_calls: int | None = None) -> ParsedReply:
    """Split ``reply`` into plain text and tool calls of the tools named in ``tool_names``; keep at
    most ``max_calls`` calls (None: all), the rest becoming one malformed call that counts them.

    >>> reply = 'Sure.\\n<tool_call>\\n{"name": "add", "arguments": {"a": 1, "b": 2}}\\n</tool_call>'
    >>> parsed = parse_tool_calls(reply, {"add"})
    >>> parsed.text, parsed.calls[0].name, parsed.calls[0].arguments
    ('Sure.', 'add', {'a': 1, 'b': 2})
    >>> parse_tool_calls("The answer is 4.", {"add"})
    ParsedReply(text='The answer is 4.', calls=[])
    >>> parse_tool_calls('<tool_call>{"name": "mul", "arguments": {}}</tool_call>', {"add"}).calls[0].error
    "unknown tool 'mul'; the available tools are: add"
    >>> parse_tool_calls('<tool_call>{"name": "add", "arguments": {"a": 1,}}</tool_call>', {"add"}).format_errors
    1
    >>> parse_tool_calls('<tool_call>{"name": "add"', {"add"}).calls[0].error
    'unclosed <tool_call> tag: a call must end with </tool_call>'
    >>> three = '<tool_call>{"name": "add"}</tool_call>' * 3
    >>> [getattr(call, "error", "ok") for call in parse_tool_calls(three, {"add"}, max_calls=1).calls]
    ['ok', '2 more tool calls in this reply were not run: at most 1 per reply']
    """
    texts: list[str] = []
    calls: list[ToolCall | MalformedToolCall] = []
    position = 0
    open_at: int | None = None
    for tag in _TAG.finditer(reply):
        if tag.group() == OPEN_TAG:
            if open_at is None:
                texts.append(reply[position : tag.start()])
            else:  # a second opening tag before the first one was closed
                calls.append(_unclosed(reply[open_at : tag.start()]))
            open_at = tag.end()
        elif open_at is None:
            texts.append(reply[position : tag.start()])
            calls.append(MalformedToolCall(raw="", error=f"{CLOSE_TAG} without a matching {OPEN_TAG}"))
        else:
            calls.append(parse_one_call(reply[open_at : tag.start()], tool_names))
            open_at = None
        position = tag.end()
    if open_at is None:
        texts.append(reply[position:])
    else:
        calls.append(_unclosed(reply[open_at:]))
    return ParsedReply(text="".join(texts).strip(), calls=_capped(calls, max_calls))


def _capped(calls: list[ToolCall | MalformedToolCall], max_calls: int | None) -> list[ToolCall | MalformedToolCall]:
    """The first ``max_calls`` calls, plus one malformed call standing for the dropped rest."""
    if max_calls is None or len(calls) <= max_calls:
        return calls
    dropped = len(calls) - max_calls
    error = f"{dropped} more tool calls in this reply were not run: at most {max_calls} per reply"
    return [*calls[:max_calls], MalformedToolCall(raw="", error=error)]


def parse_one_call(raw: str, tool_names: Collection[str]) -> ToolCall | MalformedToolCall:
    """Parse the JSON between one pair of tags.

    >>> parse_one_call(' {"name": "search", "arguments": {"filters": {"year": [2020, 2021]}}} ', {"search"}).arguments
    {'filters': {'year': [2020, 2021]}}
    >>> parse_one_call('{"name": "add", "arguments": [1, 2]}', {"add"}).error
    "'arguments' must be a JSON object, got a list"
    >>> print(parse_one_call('{"arguments": {}}', {"add"}).error)
    missing 'name': a call is {"name": <tool name>, "arguments": {...}}
    """
    try:
        payload = json.loads(raw)
    except json.JSONDecodeError as error:
        return MalformedToolCall(raw=raw, error=f"invalid JSON in the tool call: {error}")
    except RecursionError:  # nested too deep for the decoder itself
        return _too_deep(raw)
    if _depth_over(payload, MAX_JSON_DEPTH):
        return _too_deep(raw)
    if not isinstance(payload, dict):
        return MalformedToolCall(raw=raw, error=f"a tool call must be a JSON object, got {_json_kind(payload)}")
    name = payload.get("name")
    if not isinstance(name, str) or not name:
        return MalformedToolCall(raw=raw, error='missing \'name\': a call is {"name": <tool name>, "arguments": {...}}')
    if name not in tool_names:
        available = ", ".join(sorted(tool_names)) or "none"
        return MalformedToolCall(raw=raw, error=f"unknown tool '{name}'; the available tools are: {available}")
    arguments = payload.get("arguments", {})
    if not isinstance(arguments, dict):
        return MalformedToolCall(raw=raw, error=f"'arguments' must be a JSON object, got {_json_kind(arguments)}")
    return ToolCall(name=name, arguments=arguments, raw=raw)


def format_tool_call(name: str, arguments: dict[str, Any]) -> str:
    """Render a call the way the tool block in the system prompt asks the model to write it.

    >>> format_tool_call("add", {"a": 1, "b": 2})
    '<tool_call>\\n{"name": "add", "arguments": {"a": 1, "b": 2}}\\n</tool_call>'
    """
    payload = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
    return f"{OPEN_TAG}\n{payload}\n{CLOSE_TAG}"


def _too_deep(raw: str) -> MalformedToolCall:
    return MalformedToolCall(raw=raw, error=f"the tool call's JSON nests deeper than {MAX_JSON_DEPTH} levels")


def _depth_over(value: Any, limit: int) -> bool:
    """Whether lists/objects in ``value`` nest more than ``limit`` deep (iterative: no recursion).

    >>> _depth_over([[1]], 2), _depth_over([[[1]]], 2), _depth_over({"a": {"b": 1}}, 2)
    (False, True, False)
    """
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth == limit:
                return True
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return False


def _unclosed(raw: str) -> MalformedToolCall:
    return MalformedToolCall(raw=raw, error=f"unclosed {OPEN_TAG} tag: a call must end with {CLOSE_TAG}")


def _json_kind(value: Any) -> str:
    """The JSON name of a decoded value's type, with an article."""
    kinds = {list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else kinds.get(type(value), type(value).__name__)
