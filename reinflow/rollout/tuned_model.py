"""The policy as an AgentScope 2.x chat model: token ids in and out, every call recorded exactly.

:class:`TunedModel` is a ``ChatModelBase`` that an AgentScope ``Agent`` calls like any hosted model.
Unlike a hosted model it never leaves text to chance:

1. **Formatting.** AgentScope 2.x hands a model the raw ``Msg`` list (formatting is the model's
   job). An agent's whole reply is one assistant ``Msg`` whose blocks interleave the model's text
   and tool calls, the tool results and the agent's hints; ``reinflow.rollout.chat_format`` splits it into
   chat turns: ``system``, ``user``, ``assistant`` (the model's earlier replies rendered back as
   the exact text it generated, tool calls included), tool results, and hints as ``user`` turns.
2. **Templating.** The policy tokenizer's own chat template renders the turns. Where the template
   supports tools (``tools=`` of ``apply_chat_template``, e.g. Qwen2.5) tool schemas go there and
   tool results are ``tool`` turns; otherwise (e.g. SmolLM2, whose template has no tool support)
   a Hermes-style tool block is appended to the system prompt and tool results come back as a
   ``user`` turn of ``<tool_response>...</tool_response>`` blocks, as Qwen/Hermes models see them.
3. **Token exactness.** The engine gets token ids, and its output ids and logprobs are kept as they
   are. When the new conversation's text extends the previous call's prompt and reply, the new
   prompt is *the previous prompt ids + the previous output ids + the tokens of the new suffix*
   (template tokens such as the newline after ``<|im_end|>``, tool results, the next generation
   prompt), so turn k+1 extends turn k token for token and ``reinflow.rollout.trajectory`` merges them
   into one sample. A reply cut off by the token limit has no EOS: the template's end-of-turn
   token is then part of the suffix (a prompt token). When the text does not extend (the system
   prompt or the tools changed, a template rewrote history), the conversation is re-rendered and
   tokenized whole, and that turn becomes a separate sample. The rule is
   ``reinflow.rollout.prompt_history``'s, shared with the warm start's demonstrations.
4. **Tool calls** are parsed from ``<tool_call>{json}</tool_call>`` (several per reply) by
   ``reinflow.rollout.tool_calls``. A malformed call (bad JSON, unknown tool, non-object arguments, no
   name, unclosed tag, JSON nested too deep, calls past ``max_tool_calls_per_turn``) is counted in
   :attr:`TunedModel.format_errors` and handed to the agent as a
   call of the non-existent tool ``invalid_tool_call``: the agent records a tool error and goes
   on, and the policy sees the parser's message (what exactly was wrong) as that call's result.
5. **Reproducibility.** Nothing time- or machine-dependent enters a prompt. AgentScope 2.x adds a
   runtime-state reminder with the current time before every model call unless the agent is built
   with ``InjectionConfig(inject_runtime_state=False)``: build agents with
   :meth:`TunedModel.agent_kwargs`, which sets it. A prompt that still carries a
   ``<current-time>`` reminder raises ``NonReproduciblePrompt``. Sampling seeds, when given,
   are derived from the episode seed and the turn index.
6. **Limits.** A call whose prompt reaches ``max_model_len`` sets :attr:`TunedModel.context_overflow`
   and raises :class:`ContextOverflow`; a call past ``max_turns`` raises :class:`TurnLimitReached`;
   an aborted generation raises :class:`GenerationAborted`. All are :class:`EpisodeEnded`: the
   agent lets them through (it logs one warning), they propagate out of ``agent.reply`` and the
   workflow, and the rollout runner catches them, ending the episode cleanly with the turns
   recorded so far (the workflow's code after ``reply`` does not run). Each call generates at most
   ``min(max_new_tokens_per_turn, max_model_len - len(prompt_ids))`` tokens.

``tool_choice`` is not enforced (a policy under training cannot be forced to call a tool without
constrained decoding); it does not change the prompt either, so turns keep merging. AgentScope's
context compression is switched off (``context_size`` is huge): it would rewrite history and call
the model for summaries mid-episode; :class:`ContextOverflow` ends the episode instead.

Use one ``TunedModel`` per episode: it holds the episode's turns, counters and judge inputs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agentscope.agent import InjectionConfig
from agentscope.credential import CredentialBase
from agentscope.message import Msg, TextBlock, ToolCallBlock
from agentscope.model import ChatModelBase, ChatResponse, ChatUsage
from agentscope.tool import ToolChoice
from pydantic import BaseModel, Field

from reinflow.rollout.chat_format import (
    ChatMessage,
    ChatTemplate,
    GeneratedBlocks,
    PolicyFormatter,
    check_reproducible,
    invalid_call_block,
    to_chat_messages,
    tool_names,
    with_tool_block,
)
from reinflow.engines.base import Engine, FinishReason, SamplingParams
from reinflow.rollout.prompt_history import PromptHistory, after_reply, next_prompt_ids, split_reply
from reinflow.rollout.stop_strings import cut_at_stop
from reinflow.rollout.tool_calls import ParsedReply, ToolCall, parse_tool_calls

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from reinflow.config import RolloutConfig

NO_COMPRESSION_CONTEXT_SIZE = 2**62
"""``ChatModelBase.context_size`` of the tuned model: so large that AgentScope never compresses."""


# ----------------------------------------------------------------------------- errors


class EpisodeEnded(Exception):
    """The episode cannot go on; the rollout runner catches this and keeps the recorded turns."""


class ContextOverflow(EpisodeEnded):
    """The prompt reached ``max_model_len``: no room is left to generate."""


class TurnLimitReached(EpisodeEnded):
    """The episode made ``max_turns`` LLM calls."""


class GenerationAborted(EpisodeEnded):
    """The engine aborted the request (it was shut down)."""


# ----------------------------------------------------------------------------- records


@dataclass
class Turn:
    """The exact record of one LLM call (satisfies ``reinflow.rollout.trajectory.TurnTokens``)."""

    index: int
    prompt_ids: list[int]
    output_ids: list[int]
    output_logprobs: list[float]
    finish_reason: FinishReason
    messages: list[ChatMessage]
    """The chat messages the prompt was rendered from (tools included in the system prompt where
    the template has no tool support)."""
    tools: list[dict[str, Any]]
    """The tool schemas offered in this call."""
    prompt_text: str
    response_text: str
    """The generated text without its closing EOS."""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    """The well-formed calls: ``{"id", "name", "arguments"}``."""
    format_errors: list[str] = field(default_factory=list)
    """One message per malformed call."""
    extends_previous: bool = False
    """Whether the prompt extends the previous turn's prompt + output token for token."""
    max_new_tokens: int = 0
    text_before_stop: str | None = None
    """Where a caller's stop string ended the reply: the text before it, which is what the caller
    was shown and what its tool calls are parsed from (None: no stop string cut the reply)."""

    @property
    def shown_text(self) -> str:
        """The reply as its caller was shown it (tool calls still in it)."""
        return self.response_text if self.text_before_stop is None else self.text_before_stop


class LocalPolicyCredential(CredentialBase):
    """The (empty) credential of a policy served by a local reinflow engine."""

    @classmethod
    def get_chat_model_class(cls) -> type[ChatModelBase]:
        """The model class that uses this credential."""
        return TunedModel


# ----------------------------------------------------------------------------- the model


class TunedModel(ChatModelBase):
    """The policy under training, served by a reinflow engine, as an AgentScope chat model.

    Build the agent with :meth:`agent_kwargs` (it passes the model and turns off AgentScope's
    wall-clock injection)::

        model = TunedModel(engine, tokenizer, max_model_len=2048, max_new_tokens_per_turn=256)
        agent = Agent(name="solver", system_prompt=PROMPT, toolkit=Toolkit(tools=[add_tool]),
                      react_config=ReActConfig(max_iters=4), **model.agent_kwargs())

    After the episode: :attr:`turns` (exact ids and logprobs of every call), :attr:`format_errors`,
    :attr:`context_overflow` and :attr:`judge_input_dictionary`.
    """

    class Parameters(BaseModel):
        """How the policy is sampled and bounded."""

        max_model_len: int = Field(ge=2, description="Most tokens (prompt + output) in one sequence.")
        max_new_tokens_per_turn: int = Field(ge=1, description="Most tokens one call generates.")
        temperature: float = Field(ge=0.0, description="Sampling temperature; 0 is greedy.")
        top_p: float = Field(gt=0.0, le=1.0, description="Nucleus sampling mass.")
        seed: int | None = Field(None, ge=0, description="Episode seed; each call's seed derives from it.")
        max_turns: int | None = Field(None, ge=1, description="Most LLM calls in the episode (None: no cap).")
        max_tool_calls_per_turn: int | None = Field(
            None, ge=1, description="Most tool calls run from one reply; the rest count as one format error (None: no cap)."
        )

    def __init__(
        self,
        engine: Engine,
        tokenizer: PreTrainedTokenizerBase,
        *,
        max_model_len: int,
        max_new_tokens_per_turn: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
        max_turns: int | None = None,
        max_tool_calls_per_turn: int | None = None,
        name: str = "reinflow-policy",
    ) -> None:
        """``tokenizer`` is the policy's own (its chat template renders every prompt)."""
        parameters = self.Parameters(
            max_model_len=max_model_len,
            max_new_tokens_per_turn=max_new_tokens_per_turn,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            max_turns=max_turns,
            max_tool_calls_per_turn=max_tool_calls_per_turn,
        )
        super().__init__(
            credential=LocalPolicyCredential(name="local"),
            model=name,
            parameters=parameters,
            stream=False,
            max_retries=0,
            context_size=NO_COMPRESSION_CONTEXT_SIZE,
        )
        self.engine = engine
        self.template = ChatTemplate(tokenizer)
        self.formatter = PolicyFormatter(tool_role=self.template.native_tools)
        """Text only: the agent turns images or audio in user input into a text notice."""
        self.turns: list[Turn] = []
        self.format_errors = 0
        """Malformed tool calls in the episode so far."""
        self.context_overflow = False
        """Set when a call raised :class:`ContextOverflow`."""
        self.judge_input_dictionary: dict[str, Any] = {}
        """Values the workflow hands to the judge (e.g. ``final_answer``)."""
        self._history: PromptHistory | None = None
        self._turn_of_block: dict[str, int] = {}
        self._tool_errors: dict[str, str] = {}

    @classmethod
    def from_rollout_config(
        cls, engine: Engine, tokenizer: PreTrainedTokenizerBase, rollout: RolloutConfig, seed: int | None = None
    ) -> TunedModel:
        """A model sampled and bounded as the config's ``rollout`` section says."""
        return cls(
            engine,
            tokenizer,
            max_model_len=rollout.max_model_len,
            max_new_tokens_per_turn=rollout.max_new_tokens_per_turn,
            temperature=rollout.temperature,
            top_p=rollout.top_p,
            seed=seed,
            max_turns=rollout.max_turns,
            max_tool_calls_per_turn=rollout.max_tool_calls_per_turn,
        )

    def agent_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``agentscope.agent.Agent``: this model, and no wall-clock injection."""
        return {"model": self, "injection_config": InjectionConfig(inject_runtime_state=False)}

    def update_judge_input_dictionary(self, **values: Any) -> None:
        """Store values for the judge, e.g. ``final_answer=...``; later calls add or overwrite keys."""
        self.judge_input_dictionary.update(values)

    async def _call_api(
        self,
        model_name: str,
        messages: list[Msg],
        tools: list[dict] | None = None,
        tool_choice: ToolChoice | None = None,
        **kwargs: Any,
    ) -> ChatResponse:
        """Render, generate, record and parse one call (see the module docstring)."""
        started = time.perf_counter()
        self._check_turn_limit()
        tools = tools or []
        chat = await self._chat_messages(messages, tools)
        turn, parsed = await self.generate_turn(chat, tools)
        blocks = self._blocks(turn, parsed)
        elapsed = time.perf_counter() - started
        usage = ChatUsage(input_tokens=len(turn.prompt_ids), output_tokens=len(turn.output_ids), time=elapsed)
        return ChatResponse(content=blocks, is_last=True, usage=usage)

    async def generate_turn(
        self,
        chat: list[ChatMessage],
        tools: list[dict[str, Any]],
        *,
        max_new_tokens: int | None = None,
        stop: Sequence[str] = (),
    ) -> tuple[Turn, ParsedReply]:
        """Render ``chat`` (ready for the template: the Hermes tool block already in its system
        prompt where the template has no tool support), generate, record the turn and parse its
        tool calls. Every LLM call of the episode goes through here: the agent's (``_call_api``) and
        those of the OpenAI-compatible endpoint (``reinflow.endpoint``), which also passes its
        request's ``max_tokens`` (``max_new_tokens``: it can only lower the limit) and ``stop``
        strings (``reinflow.rollout.stop_strings``). Raises the :class:`EpisodeEnded` errors."""
        self._check_turn_limit()
        prompt_text = self.template.render(chat, tools)
        prompt_ids, extends = next_prompt_ids(self.template, self._history, prompt_text)
        sampling = self._sampling(len(prompt_ids), max_new_tokens)
        generation = await self.engine.generate(prompt_ids, sampling)
        if generation.finish_reason == "abort":
            raise GenerationAborted(f"turn {len(self.turns)}: the engine aborted the request")
        output_ids, logprobs = list(generation.token_ids), list(generation.logprobs)
        stopped = generation.finish_reason == "stop"
        cut = cut_at_stop(output_ids, self.template.decode, stop, ends_with_eos=stopped)
        if cut is not None:  # no EOS left: the template's end-of-turn token becomes a prompt token
            output_ids, logprobs, stopped = output_ids[: cut.keep], logprobs[: cut.keep], False
        response_text, stop_text = split_reply(self.template, output_ids, stopped)
        turn = Turn(
            index=len(self.turns),
            prompt_ids=prompt_ids,
            output_ids=output_ids,
            output_logprobs=logprobs,
            finish_reason="stop" if cut is not None else generation.finish_reason,
            messages=chat,
            tools=tools,
            prompt_text=prompt_text,
            response_text=response_text,
            extends_previous=extends,
            max_new_tokens=sampling.max_new_tokens,
            text_before_stop=None if cut is None else cut.text_before_stop,
        )
        parsed = parse_tool_calls(turn.shown_text, tool_names(tools), self.parameters.max_tool_calls_per_turn)
        self._record(turn, parsed)
        self._history = after_reply(prompt_text, prompt_ids, response_text, stop_text, turn.output_ids)
        return turn, parsed

    # ------------------------------------------------------------------------- steps of a call

    def _check_turn_limit(self) -> None:
        max_turns = self.parameters.max_turns
        if max_turns is not None and len(self.turns) >= max_turns:
            raise TurnLimitReached(f"the episode made its {max_turns} LLM calls (max_turns)")

    async def _chat_messages(self, messages: list[Msg], tools: list[dict]) -> list[ChatMessage]:
        check_reproducible(messages)
        chat = await self.formatter.format(messages, reply_text=self._reply_text, tool_errors=self._tool_errors)
        if tools and not self.template.native_tools:
            chat = with_tool_block(chat, tools)
        return chat

    def _reply_text(self, blocks: GeneratedBlocks) -> str | None:
        """The exact generated text of a run of assistant blocks that all come from one turn."""
        turns = {self._turn_of_block.get(block.id) for block in blocks}
        if len(turns) != 1 or None in turns:
            return None
        return self.turns[turns.pop()].response_text

    def _sampling(self, prompt_len: int, max_new_tokens: int | None = None) -> SamplingParams:
        params: TunedModel.Parameters = self.parameters
        room = params.max_model_len - prompt_len
        if room <= 0:
            self.context_overflow = True
            raise ContextOverflow(
                f"turn {len(self.turns)}: the prompt has {prompt_len} tokens, max_model_len is {params.max_model_len}"
            )
        seed = None if params.seed is None else (params.seed * 1_000_003 + len(self.turns)) % 2**63
        return SamplingParams(
            max_new_tokens=min(params.max_new_tokens_per_turn, room, max_new_tokens or room),
            temperature=params.temperature,
            top_p=params.top_p,
            seed=seed,
        )

    def _record(self, turn: Turn, parsed: ParsedReply) -> None:
        """Store the turn with its well-formed calls and format errors, and count the errors."""
        for position, call in enumerate(parsed.calls):
            if isinstance(call, ToolCall):
                turn.tool_calls.append({"id": tool_call_id(turn.index, position), "name": call.name,
                                        "arguments": call.arguments})
            else:
                turn.format_errors.append(call.error)
        self.format_errors += len(turn.format_errors)
        self.turns.append(turn)

    def _blocks(self, turn: Turn, parsed: ParsedReply) -> list[TextBlock | ToolCallBlock]:
        """The response blocks for the agent; a malformed call becomes a call of ``invalid_tool_call``."""
        blocks: list[TextBlock | ToolCallBlock] = []
        if parsed.text or not parsed.calls:
            blocks.append(TextBlock(text=parsed.text))
        for position, call in enumerate(parsed.calls):
            call_id = tool_call_id(turn.index, position)
            if isinstance(call, ToolCall):
                blocks.append(ToolCallBlock(id=call_id, name=call.name, input=json.dumps(call.arguments)))
            else:
                self._tool_errors[call_id] = call.error
                blocks.append(invalid_call_block(call_id, call))
        self._turn_of_block.update((block.id, turn.index) for block in blocks)
        return blocks


def tool_call_id(turn_index: int, position: int) -> str:
    """The id of the ``position``-th call of turn ``turn_index`` (unique within an episode)."""
    return f"call_{turn_index}_{position}"
