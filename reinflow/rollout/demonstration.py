"""A demonstration (an OpenAI-format conversation) as the token samples the policy would have produced.

The warm start trains on exactly the tokens the policy emits in rollout, so a demonstration is
rendered the way :class:`~reinflow.rollout.tuned_model.TunedModel` renders an episode, with the same
code:

- every assistant message is one LLM call. Its prompt is the conversation before it, as the agent
  would hand it to the model (``reinflow.rollout.openai_chat``), split into chat turns by the tuned
  model's formatter (``chat_format.to_chat_messages``; tools in a Hermes block of the system prompt
  where the template has no tool support) and rendered by the policy's chat template;
- the call's output is the reply as the policy writes it (``chat_format.generic_reply``: the text,
  then each call in the ``<tool_call>`` syntax the rollout parses) tokenized, plus the stop token
  (the tokenizer's EOS); the reply must parse back as the same well-formed calls;
- prompt ids extend the previous call's prompt + output token for token where the text allows
  (``reinflow.rollout.prompt_history``), and ``trajectory.build_samples`` merges the calls into
  samples: ``loss_mask`` is 1 on the replies' tokens (stop token included) and 0 on the system
  prompt, user turns, tool results and template tokens. ``logprobs`` are 0 (nothing was sampled).

A demonstration the rollout could not have produced is refused with a counted reason: no
assistant message, an undeclared tool or malformed call, more calls than ``rollout.max_turns``, a
reply longer than ``rollout.max_new_tokens_per_turn``, a call whose prompt + reply is longer than
``rollout.max_model_len``, or a conversation the chat template cannot render.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agentscope.message import ToolCallBlock
from jinja2 import TemplateError

from reinflow.config import RolloutConfig
from reinflow.rollout.chat_format import ChatTemplate, GeneratedBlocks, generic_reply, to_chat_messages, with_tool_block
from reinflow.rollout.openai_chat import (
    MALFORMED_TOOL_CALL,
    BadDemonstration,
    assistant_blocks,
    conversation_parts,
    to_agentscope,
    tool_schema_names,
)
from reinflow.rollout.prompt_history import PromptHistory, after_reply, next_prompt_ids, split_reply
from reinflow.rollout.tool_calls import parse_tool_calls
from reinflow.rollout.trajectory import Sample, build_samples

NO_ASSISTANT_TURN = "no_assistant_turn"
TOO_MANY_TURNS = "too_many_turns"
REPLY_TOO_LONG = "reply_too_long"
TOO_LONG = "too_long"
UNRENDERABLE = "unrenderable"


@dataclass(frozen=True)
class DemonstrationTurn:
    """One assistant message as an LLM call (satisfies ``reinflow.rollout.trajectory.TurnTokens``)."""

    prompt_ids: list[int]
    output_ids: list[int]
    output_logprobs: list[float]


def render_demonstration(row: Mapping[str, Any], template: ChatTemplate, rollout: RolloutConfig) -> list[Sample]:
    """The training samples of one demonstration row (``messages``, ``tools``) under the rollout's
    limits; raises :class:`BadDemonstration` with the reason it is refused."""
    messages, tools = conversation_parts(row)
    calls = sum(message["role"] == "assistant" for message in messages)
    if calls == 0:
        raise BadDemonstration(NO_ASSISTANT_TURN, "the conversation has no assistant message to learn from")
    if calls > rollout.max_turns:
        raise BadDemonstration(TOO_MANY_TURNS, f"{calls} assistant messages, rollout.max_turns is {rollout.max_turns}")
    turns = demonstration_turns(messages, tools, template)
    for index, turn in enumerate(turns):
        if len(turn.output_ids) > rollout.max_new_tokens_per_turn:
            raise BadDemonstration(REPLY_TOO_LONG, f"assistant reply {index} has {len(turn.output_ids)} tokens, "
                                                   f"rollout.max_new_tokens_per_turn is {rollout.max_new_tokens_per_turn}")
        if len(turn.prompt_ids) + len(turn.output_ids) > rollout.max_model_len:
            raise BadDemonstration(TOO_LONG, f"assistant reply {index} ends at token "
                                             f"{len(turn.prompt_ids) + len(turn.output_ids)}, rollout.max_model_len "
                                             f"is {rollout.max_model_len}")
    return build_samples(turns, rollout.max_samples_per_episode)


def demonstration_turns(messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]],
                        template: ChatTemplate) -> list[DemonstrationTurn]:
    """One :class:`DemonstrationTurn` per assistant message, rendered as the tuned model would."""
    names = tool_schema_names(tools)
    stop_id = template.tokenizer.eos_token_id
    history: PromptHistory | None = None
    turns = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt_text = _prompt_text(messages[:index], tools, names, template)
        prompt_ids, _ = next_prompt_ids(template, history, prompt_text)
        reply = _reply(message, names, index)
        output_ids = template.encode(reply) + [stop_id]
        reply_text, stop_text = split_reply(template, output_ids, stopped=True)
        history = after_reply(prompt_text, prompt_ids, reply_text, stop_text, output_ids)
        turns.append(DemonstrationTurn(prompt_ids, output_ids, [0.0] * len(output_ids)))
    return turns


def _prompt_text(messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]], names: set[str],
                 template: ChatTemplate) -> str:
    """The prompt of the call that follows ``messages``: formatted and templated as in rollout."""

    def exact(blocks: GeneratedBlocks) -> str:  # what TunedModel records: the decoded generated ids
        return template.decode(template.encode(generic_reply(blocks)))

    try:
        chat = to_chat_messages(to_agentscope(messages, names), reply_text=exact, tool_errors={},
                                tool_role=template.native_tools)
        if tools and not template.native_tools:
            chat = with_tool_block(chat, tools)
        return template.render(chat, list(tools))
    except BadDemonstration:
        raise
    except (ValueError, TemplateError) as error:
        raise BadDemonstration(UNRENDERABLE, f"the chat template cannot render it: {error}") from None


def _reply(message: Mapping[str, Any], names: set[str], index: int) -> str:
    """The reply text the policy would generate; it must parse back as the message's calls."""
    blocks = assistant_blocks(message, names, index)
    reply = generic_reply(blocks)
    parsed = parse_tool_calls(reply, names)
    expected = sum(1 for block in blocks if isinstance(block, ToolCallBlock))
    if parsed.format_errors or len(parsed.calls) != expected:
        raise BadDemonstration(MALFORMED_TOOL_CALL, f"message {index}: the reply does not parse back as its "
                                                    f"{expected} tool calls (tool-call tags in its content?)")
    return reply
