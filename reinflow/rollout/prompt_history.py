"""How the prompt ids of an episode's next LLM call are built from the calls before it.

The one rule :class:`~reinflow.rollout.tuned_model.TunedModel` follows in rollout, and the warm
start follows when it renders a demonstration (``reinflow.rollout.demonstration``), so that both
give the same token ids for the same conversation:

- when the new prompt text extends the text of the previous prompt + reply + its stop token, the
  new prompt ids are *the previous prompt ids + the previous output ids + the tokens of the new
  suffix* (the turn extends the previous one token for token, and the trajectory merges them);
- otherwise the prompt is tokenized whole (a separate sample).

A reply's text is its output ids decoded without the closing stop token; the stop token's own text
is what the template writes back after it (a reply cut off by the token limit has none).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from reinflow.rollout.chat_format import ChatTemplate


@dataclass(frozen=True)
class PromptHistory:
    """The token ids of the last prompt + output of an episode, and the text they stand for."""

    text: str
    ids: list[int]


def next_prompt_ids(template: ChatTemplate, history: PromptHistory | None, prompt_text: str) -> tuple[list[int], bool]:
    """``(prompt ids, whether they extend the history)`` for the prompt ``prompt_text``."""
    if history is not None and prompt_text.startswith(history.text):
        return history.ids + template.encode(prompt_text[len(history.text) :]), True
    return template.encode(prompt_text), False


def split_reply(template: ChatTemplate, output_ids: Sequence[int], stopped: bool) -> tuple[str, str]:
    """``(reply text without the closing stop token, the stop token's text)``; a reply that did not
    stop (cut by the token limit) has no stop token."""
    if stopped and output_ids:
        return template.decode(output_ids[:-1]), template.decode(output_ids[-1:])
    return template.decode(output_ids), ""


def after_reply(prompt_text: str, prompt_ids: Sequence[int], reply_text: str, stop_text: str,
                output_ids: Sequence[int]) -> PromptHistory:
    """The history once a call with this prompt got this reply."""
    return PromptHistory(prompt_text + reply_text + stop_text, list(prompt_ids) + list(output_ids))
