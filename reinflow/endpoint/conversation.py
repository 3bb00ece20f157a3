"""OpenAI chat messages in, the policy's chat turns out; the recorded turn back as an OpenAI reply.

Token exactness across requests rests on one rule: **an assistant message the endpoint returned is
rendered back as the exact text the policy generated**, so the next prompt's text extends the
previous prompt + reply and :meth:`~reinflow.rollout.tuned_model.TunedModel.generate_turn` extends
its ids token for token (the trajectory then merges the turns into one sample). The episode keeps
a :func:`reply_key` of every reply it returned (the visible text and the calls' names and
arguments, whitespace and key order aside) with the generated text; an assistant message with that
key renders as that text, with the malformed calls, the spacing and the tags as generated. An
assistant message the policy did not write (a hand-made history, an edited reply) renders from its
content and calls, Hermes style; its turn then starts a new sample, as in-process.

Tool results become chat turns as in-process (``reinflow.rollout.chat_format``): ``tool`` turns
where the template renders tools, else one ``user`` turn of ``<tool_response>`` blocks per run of
results, ordered as the preceding assistant message ordered its calls.

A reply's ``content`` is the text the policy generated outside its well-formed tool calls (a
malformed call stays in it as text, and counts as a format error); ``tool_calls`` are the
well-formed calls with ids unique in the episode (``call_<turn>_<position>``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from reinflow.endpoint.requests import AssistantMessage, Content, Message, ToolMessage
from reinflow.rollout.chat_format import ChatMessage, tool_result_turns
from reinflow.rollout.tool_calls import CLOSE_TAG, OPEN_TAG, ParsedReply, ToolCall, format_tool_call
from reinflow.rollout.tuned_model import Turn

ReplyKey = tuple[str, tuple[tuple[str, str], ...]]
ExactReply = Callable[[AssistantMessage], "str | None"]
"""The exact generated text of an assistant message the endpoint returned, or None."""


def content_text(content: Content | None) -> str:
    """The text of a message's content: a string, or its text parts joined by newlines."""
    if content is None or isinstance(content, str):
        return content or ""
    return "\n".join(part.text for part in content)


def canonical_arguments(arguments: Any) -> str:
    """A call's arguments in one spelling (JSON with sorted keys); text that is not JSON as it is.

    >>> canonical_arguments('{"b": 1,  "a": 2}') == canonical_arguments({"a": 2, "b": 1})
    True
    """
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return arguments
    return json.dumps(arguments, sort_keys=True, ensure_ascii=False)


def reply_key(content: str, calls: Iterable[tuple[str, Any]]) -> ReplyKey:
    """What identifies a reply when the agent sends it back: its text (stripped) and its calls."""
    return content.strip(), tuple((name, canonical_arguments(arguments)) for name, arguments in calls)


def key_of_message(message: AssistantMessage) -> ReplyKey:
    """The :func:`reply_key` of an assistant message in a request."""
    calls = [(call.function.name, call.function.arguments) for call in message.tool_calls or []]
    return reply_key(content_text(message.content), calls)


def key_of_turn(turn: Turn, content: str) -> ReplyKey:
    """The :func:`reply_key` of the reply returned for ``turn``."""
    return reply_key(content, [(call["name"], call["arguments"]) for call in turn.tool_calls])


# ----------------------------------------------------------------------------- messages -> chat turns


def to_chat_turns(messages: Sequence[Message], exact_reply: ExactReply, tool_role: bool) -> list[ChatMessage]:
    """The chat-template turns of a request's messages (see the module docstring)."""
    chat: list[ChatMessage] = []
    results: list[ToolMessage] = []
    call_order: dict[str, int] = {}

    def flush_results() -> None:
        ordered = sorted(results, key=lambda result: call_order.get(result.tool_call_id, len(call_order)))
        chat.extend(tool_result_turns([content_text(result.content) for result in ordered], tool_role))
        results.clear()

    for message in messages:
        if isinstance(message, ToolMessage):
            results.append(message)
            continue
        if results:
            flush_results()
        if isinstance(message, AssistantMessage):
            call_order = {call.id: position for position, call in enumerate(message.tool_calls or [])}
            exact = exact_reply(message)
            chat.append({"role": "assistant", "content": generic_reply(message) if exact is None else exact})
        else:
            role = "system" if message.role == "developer" else message.role
            chat.append({"role": role, "content": content_text(message.content)})
    if results:
        flush_results()
    return chat


def generic_reply(message: AssistantMessage) -> str:
    """An assistant message the policy did not generate: its text, then its calls in Hermes tags."""
    parts = [content_text(message.content)]
    for call in message.tool_calls or []:
        try:
            arguments = json.loads(call.function.arguments)
        except json.JSONDecodeError:
            arguments = call.function.arguments
        parts.append(format_tool_call(call.function.name, arguments))
    return "\n".join(part for part in parts if part)


# ----------------------------------------------------------------------------- turn -> OpenAI reply


def shown_content(turn: Turn, parsed: ParsedReply) -> str:
    """The reply's text outside its well-formed calls (malformed ones stay, as text), stripped."""
    text = turn.shown_text
    for call in parsed.calls:
        if isinstance(call, ToolCall):
            text = text.replace(f"{OPEN_TAG}{call.raw}{CLOSE_TAG}", "", 1)
    return text.strip()


def completion_body(
    turn: Turn, content: str, *, completion_id: str, model_name: str, created: int,
    token_text: Callable[[int], str] | None = None,
) -> dict[str, Any]:
    """The ``chat.completion`` object of one recorded turn (``token_text``: also its logprobs)."""
    tool_calls = [
        {"id": call["id"], "type": "function",
         "function": {"name": call["name"], "arguments": json.dumps(call["arguments"], ensure_ascii=False)}}
        for call in turn.tool_calls
    ]
    message: dict[str, Any] = {"role": "assistant", "content": content or (None if tool_calls else "")}
    if tool_calls:
        message["tool_calls"] = tool_calls
    finish = "tool_calls" if tool_calls else ("length" if turn.finish_reason == "length" else "stop")
    logprobs = None
    if token_text is not None:
        logprobs = {"content": [
            {"token": token_text(token), "logprob": logprob, "bytes": list(token_text(token).encode()), "top_logprobs": []}
            for token, logprob in zip(turn.output_ids, turn.output_logprobs, strict=True)
        ]}
    prompt, completion = len(turn.prompt_ids), len(turn.output_ids)
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model_name,
        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": logprobs}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
    }
