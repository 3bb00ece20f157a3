"""The Hermes/Qwen tool-call parser: well-formed calls, every kind of malformed call, doctests."""

from __future__ import annotations

import doctest

import pytest

from reinflow.rollout import tool_calls
from reinflow.rollout.tool_calls import MalformedToolCall, ToolCall, format_tool_call, parse_tool_calls

TOOLS = {"add", "search"}


def test_doctests_pass():
    assert doctest.testmod(tool_calls).failed == 0


def test_valid_call():
    parsed = parse_tool_calls('<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>', TOOLS)
    assert parsed.text == ""
    assert parsed.calls == [ToolCall(name="add", arguments={"a": 1, "b": 2}, raw='\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n')]
    assert parsed.format_errors == 0


def test_plain_text_has_no_calls():
    parsed = parse_tool_calls("  The answer is 42.\n", TOOLS)
    assert (parsed.text, parsed.calls, parsed.format_errors) == ("The answer is 42.", [], 0)


def test_text_around_calls_is_kept_in_order():
    reply = 'First I add.\n<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>\nThen I search.'
    parsed = parse_tool_calls(reply, TOOLS)
    assert parsed.text == "First I add.\n\nThen I search."
    assert [call.name for call in parsed.calls] == ["add"]


def test_several_calls_in_one_reply():
    reply = format_tool_call("add", {"a": 1, "b": 2}) + "\n" + format_tool_call("search", {"query": "x"})
    parsed = parse_tool_calls(reply, TOOLS)
    assert [(call.name, call.arguments) for call in parsed.calls] == [("add", {"a": 1, "b": 2}), ("search", {"query": "x"})]


def test_nested_json_arguments():
    arguments = {"filters": {"year": [2020, 2021], "tags": {"any": ["a", "b"]}}, "query": "{not a tag}"}
    parsed = parse_tool_calls(format_tool_call("search", arguments), TOOLS)
    assert parsed.calls[0].arguments == arguments


def test_missing_arguments_mean_no_arguments():
    assert parse_tool_calls('<tool_call>{"name": "search"}</tool_call>', TOOLS).calls[0].arguments == {}


@pytest.mark.parametrize(
    ("body", "error_start"),
    [
        ('{"name": "add", "arguments": {"a": 1,}}', "invalid JSON in the tool call"),
        ("add(1, 2)", "invalid JSON in the tool call"),
        ('{"name": "multiply", "arguments": {}}', "unknown tool 'multiply'; the available tools are: add, search"),
        ('{"name": "add", "arguments": [1, 2]}', "'arguments' must be a JSON object, got a list"),
        ('{"name": "add", "arguments": "{\\"a\\": 1}"}', "'arguments' must be a JSON object, got a string"),
        ('{"arguments": {"a": 1}}', "missing 'name'"),
        ('{"name": 7, "arguments": {}}', "missing 'name'"),
        ('{"name": "", "arguments": {}}', "missing 'name'"),
        ('[{"name": "add"}]', "a tool call must be a JSON object, got a list"),
    ],
)
def test_malformed_calls_are_returned_not_raised(body, error_start):
    parsed = parse_tool_calls(f"Let me try.\n<tool_call>{body}</tool_call>", TOOLS)
    assert parsed.text == "Let me try."
    assert parsed.format_errors == 1
    (call,) = parsed.calls
    assert isinstance(call, MalformedToolCall)
    assert call.raw == body
    assert call.error.startswith(error_start), call.error


def test_unclosed_tag_cut_off_by_the_token_limit():
    parsed = parse_tool_calls('Adding.\n<tool_call>\n{"name": "add", "argum', TOOLS)
    assert parsed.text == "Adding."
    assert parsed.calls == [MalformedToolCall(raw='\n{"name": "add", "argum', error="unclosed <tool_call> tag: a call must end with </tool_call>")]


def test_reopened_tag_marks_the_first_call_unclosed():
    reply = '<tool_call>{"name": "add"<tool_call>{"name": "search", "arguments": {"q": 1}}</tool_call>'
    calls = parse_tool_calls(reply, TOOLS).calls
    assert isinstance(calls[0], MalformedToolCall) and calls[0].error.startswith("unclosed")
    assert isinstance(calls[1], ToolCall) and calls[1].name == "search"


def test_closing_tag_without_opening_is_malformed():
    parsed = parse_tool_calls('{"name": "add"}</tool_call> done', TOOLS)
    assert parsed.format_errors == 1
    assert parsed.text == '{"name": "add"} done'


def test_valid_and_malformed_calls_mix():
    reply = format_tool_call("add", {"a": 1}) + '<tool_call>{"name": "nope"}</tool_call>' + format_tool_call("search", {})
    parsed = parse_tool_calls(reply, TOOLS)
    assert [type(call).__name__ for call in parsed.calls] == ["ToolCall", "MalformedToolCall", "ToolCall"]
    assert parsed.format_errors == 1


def test_no_tools_offered():
    call = parse_tool_calls('<tool_call>{"name": "add", "arguments": {}}</tool_call>', set()).calls[0]
    assert call.error == "unknown tool 'add'; the available tools are: none"
