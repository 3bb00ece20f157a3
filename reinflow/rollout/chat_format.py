"""How a `TunedModel` turns AgentScope messages into the policy's prompt text.

- **Msg -> chat turns.** AgentScope 2.x hands a model the raw ``Msg`` list (formatting is the
  model's job). An agent's whole reply is one assistant ``Msg`` whose blocks interleave the model's
  text and tool calls, the tool results and the agent's hints; :func:`to_chat_messages` splits it
  into chat turns: ``system``, ``user``, ``assistant`` (the model's earlier replies rendered back as
  the exact text it generated, tool calls included), tool results, and hints as ``user`` turns.
- **Templating.** :class:`ChatTemplate` renders the turns with the policy tokenizer's own chat
  template. Where the template supports tools (``tools=`` of ``apply_chat_template``, e.g.
  Qwen2.5) tool schemas go there and tool results are ``tool`` turns; otherwise (e.g. SmolLM2) a
  Hermes-style tool block (:func:`hermes_tool_block`) is appended to the system prompt and tool
  results come back as a ``user`` turn of ``<tool_response>...</tool_response>`` blocks.
- **Malformed calls** are handed to the agent as calls of the non-existent tool
  ``INVALID_TOOL_CALL`` (:func:`invalid_call_block`).
- **Reproducibility.** :func:`check_reproducible` refuses a prompt that carries AgentScope's
  wall-clock runtime-state reminder (:class:`NonReproduciblePrompt`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from agentscope.formatter import FormatterBase
from agentscope.message import DataBlock, HintBlock, Msg, TextBlock, ThinkingBlock, ToolCallBlock, ToolResultBlock
from pydantic import Field

from reinflow.errors import ReinflowError
from reinflow.rollout.tool_calls import MalformedToolCall, format_tool_call

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

ChatMessage = dict[str, str]
"""One chat-template message: ``{"role": ..., "content": ...}``."""

GeneratedBlocks = Sequence[TextBlock | ToolCallBlock | ThinkingBlock]
ReplyText = Callable[[GeneratedBlocks], "str | None"]
"""Gives the exact generated text of a run of assistant blocks, or None if they are not one turn."""

INVALID_TOOL_CALL = "invalid_tool_call"
"""The tool name a malformed call is handed to the agent under (no real tool has it)."""

_PROBE_TOOL = "reinflow_probe_tool"


class NonReproduciblePrompt(ReinflowError):
    """A prompt carries wall-clock text; the message says how to configure the agent."""


# ----------------------------------------------------------------------------- templating


class ChatTemplate:
    """The policy tokenizer's chat template, its tool support, and exact encode/decode."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer
        self.native_tools = _renders_tools(tokenizer)
        """Whether the template itself renders ``tools=`` (and ``tool`` turns)."""

    def render(self, chat: list[ChatMessage], tools: list[dict]) -> str:
        """The prompt text, ending with the generation prompt."""
        native = tools if (tools and self.native_tools) else None
        return self.tokenizer.apply_chat_template(chat, tools=native, add_generation_prompt=True, tokenize=False)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; the template writes every special token itself."""
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``, special tokens kept, no clean-up (so the text re-renders as generated)."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)


def _renders_tools(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the chat template shows a tool passed as ``tools=`` (a probe render)."""
    schema = {"name": _PROBE_TOOL, "description": "", "parameters": {"type": "object", "properties": {}}}
    probe = {"type": "function", "function": schema}
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tools=[probe], tokenize=False)
    return _PROBE_TOOL in text


def hermes_tool_block(tools: Sequence[Mapping[str, Any]]) -> str:
    """The Qwen2.5/Hermes tool instructions for a system prompt, one JSON schema per line."""
    schemas = "\n".join(json.dumps(tool, ensure_ascii=False) for tool in tools)
    return (
        "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n"
        f"<tools>\n{schemas}\n</tools>\n\n"
        "For each function call, return a json object with function name and arguments within "
        "<tool_call></tool_call> XML tags:\n"
        '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
    )


def with_tool_block(chat: list[ChatMessage], tools: Sequence[Mapping[str, Any]]) -> list[ChatMessage]:
    """``chat`` with the Hermes tool block appended to its system prompt (added if missing)."""
    block = hermes_tool_block(tools)
    if chat and chat[0]["role"] == "system":
        return [{"role": "system", "content": f"{chat[0]['content']}\n\n{block}"}, *chat[1:]]
    return [{"role": "system", "content": block}, *chat]


# ----------------------------------------------------------------------------- Msg -> chat turns


class PolicyFormatter(FormatterBase):
    """The AgentScope formatter of the tuned model: ``Msg``s to chat-template turns, text only."""

    input_types: list[str] = Field(default_factory=lambda: ["text/plain"])
    tool_role: bool = Field(False, description="Tool results as `tool` turns (templates with tool support).")

    async def format(
        self,
        msgs: list[Msg],
        reply_text: ReplyText | None = None,
        tool_errors: Mapping[str, str] | None = None,
    ) -> list[ChatMessage]:
        """Chat turns of ``msgs`` (see :func:`to_chat_messages`; without ``reply_text`` every
        earlier reply is rendered from its blocks)."""
        self.assert_list_of_msgs(msgs)
        return to_chat_messages(
            msgs, reply_text=reply_text or _no_reply_text, tool_errors=tool_errors or {}, tool_role=self.tool_role
        )


def _no_reply_text(blocks: GeneratedBlocks) -> None:
    return None


def to_chat_messages(
    messages: Sequence[Msg],
    *,
    reply_text: ReplyText,
    tool_errors: Mapping[str, str],
    tool_role: bool,
) -> list[ChatMessage]:
    """Split AgentScope messages into chat-template turns.

    ``reply_text(blocks) -> str | None`` gives the exact generated text of a run of assistant
    blocks (None: not one recorded turn, render the blocks generically). ``tool_errors`` maps the
    id of a malformed call to the message shown as its result. ``tool_role``: tool results as
    ``tool`` turns (templates with tool support) or as one ``user`` turn of ``<tool_response>``
    blocks per run of results.
    """
    chat: list[ChatMessage] = []
    for msg in messages:
        if msg.role == "assistant":
            chat.extend(_assistant_turns(msg, reply_text, tool_errors, tool_role))
        else:
            chat.append({"role": msg.role, "content": _plain_text(msg.content, msg.role)})
    return chat


def _assistant_turns(
    msg: Msg, reply_text: ReplyText, tool_errors: Mapping[str, str], tool_role: bool
) -> list[ChatMessage]:
    """An agent's reply message: generated runs, tool-result runs and hints, in order."""
    turns: list[ChatMessage] = []
    generated: list[TextBlock | ToolCallBlock | ThinkingBlock] = []
    results: list[ToolResultBlock] = []
    call_order: dict[str, int] = {}

    def flush() -> None:
        if generated:
            exact = reply_text(generated)
            turns.append({"role": "assistant", "content": generic_reply(generated) if exact is None else exact})
            generated.clear()
        if results:
            ordered = sorted(results, key=lambda result: call_order.get(result.id, len(call_order)))
            turns.extend(_tool_turns(ordered, tool_errors, tool_role))
            results.clear()

    for block in msg.content:
        if isinstance(block, (TextBlock, ToolCallBlock, ThinkingBlock)):
            if results:
                flush()
            if isinstance(block, ToolCallBlock):
                call_order[block.id] = len(call_order)
            generated.append(block)
        elif isinstance(block, ToolResultBlock):
            if generated:
                flush()
            results.append(block)
        elif isinstance(block, HintBlock):
            flush()
            turns.append({"role": "user", "content": _plain_text([block], "hint")})
        else:
            raise ValueError(f"a text policy cannot read a {type(block).__name__} in an assistant message")
    flush()
    return turns


def generic_reply(blocks: GeneratedBlocks) -> str:
    """An assistant reply the policy did not generate (e.g. written by hand into the memory, or a
    demonstration): its text, then each call as ``format_tool_call`` writes it, one per line."""
    parts = []
    for block in blocks:
        if isinstance(block, TextBlock):
            parts.append(block.text)
        elif isinstance(block, ToolCallBlock):
            parts.append(format_tool_call(block.name, _arguments(block.input)))
    return "\n".join(part for part in parts if part)


def _arguments(raw: str) -> Any:
    """A tool call's input as JSON where it parses, else the raw string."""
    try:
        return json.loads(raw or "{}")
    except json.JSONDecodeError:
        return raw


def _tool_turns(
    results: Sequence[ToolResultBlock], tool_errors: Mapping[str, str], tool_role: bool
) -> list[ChatMessage]:
    return tool_result_turns([_tool_result_text(result, tool_errors) for result in results], tool_role)


def tool_result_turns(texts: Sequence[str], tool_role: bool) -> list[ChatMessage]:
    """The chat turns of a run of tool results, in call order: one ``tool`` turn each (templates
    with tool support), or one ``user`` turn of ``<tool_response>`` blocks (Hermes style).

    >>> tool_result_turns(["5", "7"], tool_role=False)
    [{'role': 'user', 'content': '<tool_response>\\n5\\n</tool_response>\\n<tool_response>\\n7\\n</tool_response>'}]
    """
    if tool_role:
        return [{"role": "tool", "content": text} for text in texts]
    content = "\n".join(f"<tool_response>\n{text}\n</tool_response>" for text in texts)
    return [{"role": "user", "content": content}]


def _tool_result_text(result: ToolResultBlock, tool_errors: Mapping[str, str]) -> str:
    if result.id in tool_errors:
        return f"Error: {tool_errors[result.id]}"
    if isinstance(result.output, str):
        return result.output
    return _plain_text(result.output, f"result of tool '{result.name}'")


def _plain_text(blocks: Sequence[Any], where: str) -> str:
    """The text of text and hint blocks; anything else (images, audio) is an error for a text policy."""
    parts = []
    for block in blocks:
        if isinstance(block, TextBlock):
            parts.append(block.text)
        elif isinstance(block, HintBlock):
            parts.append(block.hint if isinstance(block.hint, str) else _plain_text(block.hint, where))
        else:
            kind = block.source.media_type if isinstance(block, DataBlock) else type(block).__name__
            raise ValueError(f"a text policy cannot read {kind} content (in a {where} message)")
    return "\n".join(parts)


def invalid_call_block(call_id: str, call: MalformedToolCall) -> ToolCallBlock:
    """A malformed call, handed to the agent under a tool name no toolkit has (it answers with an error)."""
    return ToolCallBlock(id=call_id, name=INVALID_TOOL_CALL, input=json.dumps({"raw": call.raw, "error": call.error}))


def tool_names(tools: Sequence[Mapping[str, Any]]) -> set[str]:
    return {tool["function"]["name"] for tool in tools}


def check_reproducible(messages: Sequence[Msg]) -> None:
    """Refuse prompts with AgentScope's wall-clock reminder in them."""
    for msg in messages:
        for block in msg.content:
            if isinstance(block, HintBlock) and "<current-time>" in _plain_text([block], "hint"):
                raise NonReproduciblePrompt(
                    "the agent injected the current time into the prompt, so episodes are not reproducible; "
                    "build the agent with Agent(..., **model.agent_kwargs()) or pass "
                    "injection_config=InjectionConfig(inject_runtime_state=False)"
                )
