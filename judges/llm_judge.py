"""The math answer judge, helped by an LLM judge where math_verify is unsure or for process quality.

Named in a config as ``judges.llm_judge->MathAnswerAndLlmAsJudge``::

    judge:
      protocol: judges.llm_judge->MathAnswerAndLlmAsJudge
      options:
        backend: openai                       # or: local
        base_url: http://127.0.0.1:8000/v1    # any OpenAI-compatible server
        model: qwen2.5-7b-instruct
        api_key_env: OPENAI_API_KEY           # the NAME of the variable holding the key
        process_weight: 0.2                   # 0: correctness only

For each episode, :class:`~judges.math_answer.MathAnswerJudge` runs first. The LLM is asked

* for a **verdict** when math_verify is unsure (``is_certain`` False, e.g. ``eighteen`` vs
  ``18``) and ``ask_when_unsure`` is on; the LLM's verdict then replaces the checker's;
* for a **process score** (0..1, how sound the reasoning is) when ``process_weight > 0``; the
  reward is then ``(1 - process_weight) * correctness + process_weight * score``.

Both go in one request when both are needed; a certain answer with ``process_weight == 0`` never
calls the LLM. ``is_success`` is always the correctness alone.

Failures are loud: a reply without the asked-for ``VERDICT:``/``SCORE:`` line, a timeout, an
unreachable server or an HTTP error raise :class:`JudgeLlmError`, which the judge runner
(:func:`reinflow.judging.judge.judge_one`) records as this episode's ``judge_error``: the episode is left
out of the update rather than given reward 0. The runner's own ``judge.timeout_seconds`` bounds
the whole call; the client's ``timeout_seconds`` bounds each HTTP attempt (with ``max_retries``
retries on top), so keep ``timeout_seconds * (max_retries + 1)`` below the runner's.

The API key is read from the environment variable named by ``api_key_env`` when a client is made;
it is never part of the options, the judge's repr, a log line or an error message.
"""

from __future__ import annotations

import asyncio
import difflib
import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

import openai
from openai.types.chat import ChatCompletion
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from judges.llm_verdict import (
    JudgeLlmError,
    JudgeRequest,
    LlmVerdict,
    UnparseableJudgeReply,
    blend_reward,
    build_judge_messages,
    parse_judge_reply,
    transcript_of,
)
from judges.math_answer import AnswerVerdict, MathAnswerJudge
from reinflow.config.errors import ConfigError
from reinflow.judging.judge import Judge
from reinflow.config.models import SMOLLM2

if TYPE_CHECKING:
    from reinflow.engines.base import Engine

__all__ = [
    "Assessment",
    "JudgeLlmError",
    "LocalJudgeLlm",
    "LocalJudgeOptions",
    "MathAnswerAndLlmAsJudge",
    "OpenAiJudgeLlm",
    "OpenAiJudgeOptions",
    "UnparseableJudgeReply",
    "parse_judge_options",
]

_log = logging.getLogger(__name__)

OPTIONS_SOURCE = "judge.options (MathAnswerAndLlmAsJudge)"
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
ERROR_BODY_CHARS = 300
"""How much of an HTTP error body is quoted in a :class:`JudgeLlmError`."""


# ----------------------------------------------------------------------------- options


class _CommonOptions(BaseModel):
    """Options of both backends."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    process_weight: float = Field(
        0.0, ge=0.0, le=1.0,
        description="Weight of the LLM's process score in the reward: "
        "(1 - w) * correctness + w * score. 0 asks the LLM only when the answer checker is unsure.",
    )
    ask_when_unsure: bool = Field(
        True, description="Ask the LLM for the verdict when math_verify cannot decide (e.g. 'eighteen' vs '18')."
    )
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="Sampling temperature of the judge LLM (0: greedy).")
    max_new_tokens: int = Field(
        512, ge=16, le=8192, description="Most tokens the judge LLM may write per reply (openai: max_tokens)."
    )
    max_transcript_chars: int = Field(
        6000, ge=200, le=200_000,
        description="The candidate's work is cut to about this many characters (middle dropped) in the prompt.",
    )


class OpenAiJudgeOptions(_CommonOptions):
    """An OpenAI-compatible chat-completions server (OpenAI, vLLM, llama.cpp, Ollama, ...)."""

    backend: Literal["openai"] = Field(description="The discriminator of this choice.")
    base_url: str = Field(
        pattern=r"^https?://\S+$", description="Server root including the API prefix, e.g. http://127.0.0.1:8000/v1."
    )
    model: str = Field(min_length=1, description="The model name the server knows.")
    api_key_env: str = Field(
        "OPENAI_API_KEY", pattern=ENV_NAME_PATTERN,
        description="NAME of the environment variable holding the API key (never the key itself).",
    )
    timeout_seconds: float = Field(
        25.0, gt=0.0, le=3600.0,
        description="Timeout of each HTTP attempt, in seconds; keep timeout_seconds * (max_retries + 1) "
        "below judge.timeout_seconds.",
    )
    max_retries: int = Field(1, ge=0, le=10, description="Retries on timeouts, connection errors and 408/409/429/5xx.")


class LocalJudgeOptions(_CommonOptions):
    """A model run in this process by a reinflow engine (``reinflow.engines.factory.create_engine``)."""

    backend: Literal["local"] = Field(description="The discriminator of this choice.")
    model_path: str = Field(
        SMOLLM2, min_length=1,
        description="Model name as reinflow.config.models.resolve_model reads it (builtin:..., a folder or a hub id).",
    )
    max_model_len: int = Field(8192, ge=256, le=131_072, description="Prompt + reply tokens the engine holds.")


JudgeOptions = OpenAiJudgeOptions | LocalJudgeOptions
_BACKENDS: dict[str, type[OpenAiJudgeOptions] | type[LocalJudgeOptions]] = {
    "openai": OpenAiJudgeOptions,
    "local": LocalJudgeOptions,
}


def parse_judge_options(options: Mapping[str, Any]) -> JudgeOptions:
    """Validated options; a :class:`ConfigError` naming every bad option otherwise.

    Messages never quote the value of ``api_key_env`` or of an unknown option (either may be a
    pasted key).
    """
    backend = options.get("backend")
    if backend not in _BACKENDS:
        raise ConfigError(f"{OPTIONS_SOURCE}: backend: must be 'openai' or 'local' (got {backend!r})")
    model = _BACKENDS[backend]
    try:
        parsed = model.model_validate(dict(options))
    except ValidationError as error:
        raise ConfigError(_describe(error, model)) from None
    if parsed.process_weight == 0.0 and not parsed.ask_when_unsure:
        raise ConfigError(
            f"{OPTIONS_SOURCE}: with process_weight 0 and ask_when_unsure false the LLM is never asked; "
            "use judges.math_answer->MathAnswerJudge, or set one of them"
        )
    return parsed


def _describe(error: ValidationError, model: type[BaseModel]) -> str:
    """One line per problem, without echoing values that may be secrets."""
    return "\n".join(_describe_one(item, model) for item in error.errors())


def _describe_one(item: Mapping[str, Any], model: type[BaseModel]) -> str:
    """``<source>: <option>: <problem>``; unknown options get the nearest valid name."""
    name = str(item["loc"][0]) if item["loc"] else "(top level)"
    if item["type"] == "extra_forbidden":
        return f"{OPTIONS_SOURCE}: {name}: unknown option{_hint(name, model)}"
    if item["type"] == "missing":
        return f"{OPTIONS_SOURCE}: {name}: required option is missing"
    shown = "" if name == "api_key_env" else f" (got {item['input']!r:.80})"
    return f"{OPTIONS_SOURCE}: {name}: {item['msg']}{shown}"


def _hint(name: str, model: type[BaseModel]) -> str:
    """A 'did you mean' for a misspelt option, the key-handling rule for ``api_key``."""
    if name.lower() in {"api_key", "key", "token", "openai_api_key"}:
        return "; put the key in an environment variable and name that variable with api_key_env"
    close = difflib.get_close_matches(name, list(model.model_fields), n=1, cutoff=0.6)
    if close:
        return f" (did you mean '{close[0]}'?)"
    return f" (valid options for this backend: {', '.join(model.model_fields)})"


def read_api_key(env_name: str) -> str:
    """The API key in ``$env_name``; a :class:`ConfigError` naming the variable when it is unset."""
    key = os.environ.get(env_name, "")
    if not key:
        raise ConfigError(
            f"{OPTIONS_SOURCE}: api_key_env: the environment variable {env_name} is not set or empty; "
            f"export the judge server's API key as {env_name}"
        )
    return key


# ----------------------------------------------------------------------------- judge LLM clients


class JudgeLlm(Protocol):
    """Something that completes a chat: the judge LLM."""

    async def complete(self, messages: list[dict[str, str]]) -> str:
        """The LLM's reply text to ``messages``; :class:`JudgeLlmError` when there is none."""
        ...

    async def close(self) -> None:
        """Release connections or the engine."""
        ...


class OpenAiJudgeLlm:
    """The judge LLM behind an OpenAI-compatible ``/chat/completions`` endpoint.

    One ``AsyncOpenAI`` client per event loop (the judge stage runs each rollout file in its own
    ``asyncio.run``, and a client's connection pool belongs to the loop that opened it).
    """

    def __init__(self, options: OpenAiJudgeOptions) -> None:
        """Checks now that the key's environment variable is set (fail before any rollout)."""
        read_api_key(options.api_key_env)
        self.options = options
        self._client: openai.AsyncOpenAI | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        """Where it points and which variable holds the key; never the key."""
        o = self.options
        return f"OpenAiJudgeLlm(base_url={o.base_url!r}, model={o.model!r}, api_key_env={o.api_key_env!r})"

    async def complete(self, messages: list[dict[str, str]]) -> str:
        """One chat completion; every transport or HTTP failure becomes a :class:`JudgeLlmError`."""
        o = self.options
        try:
            completion = await self._client_for_loop().chat.completions.create(
                model=o.model, messages=messages, temperature=o.temperature, max_tokens=o.max_new_tokens
            )
        except openai.APITimeoutError as error:
            raise JudgeLlmError(
                f"judge LLM at {o.base_url} did not answer within {o.timeout_seconds:g}s "
                f"(after {o.max_retries} retries)"
            ) from error
        except openai.APIConnectionError as error:
            raise JudgeLlmError(f"cannot reach the judge LLM at {o.base_url}: {error}") from error
        except openai.APIStatusError as error:
            raise JudgeLlmError(self._status_message(error)) from None  # the body may quote the key
        return _reply_text(completion, o.base_url)

    async def close(self) -> None:
        """Close the current client's connections."""
        if self._client is not None and self._client_loop is asyncio.get_running_loop():
            await self._client.close()
        self._client = self._client_loop = None

    def _client_for_loop(self) -> openai.AsyncOpenAI:
        """The client of the running event loop, made on first use in that loop."""
        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop:
            o = self.options
            self._client = openai.AsyncOpenAI(
                base_url=o.base_url, api_key=read_api_key(o.api_key_env),
                timeout=o.timeout_seconds, max_retries=o.max_retries,
            )
            self._client_loop = loop
        return self._client

    def _status_message(self, error: openai.APIStatusError) -> str:
        """An HTTP error, its body cut short and scrubbed of the key."""
        body = error.response.text[:ERROR_BODY_CHARS]
        key = os.environ.get(self.options.api_key_env, "")
        if key:
            body = body.replace(key, "<redacted>")
        return f"judge LLM at {self.options.base_url} answered HTTP {error.status_code}: {body!r}"


def _reply_text(completion: Any, base_url: str) -> str:
    """The text of the first choice; :class:`JudgeLlmError` when the response has none."""
    if not isinstance(completion, ChatCompletion) or not completion.choices:
        raise JudgeLlmError(f"judge LLM at {base_url} sent no choices: {str(completion)[:ERROR_BODY_CHARS]!r}")
    content = completion.choices[0].message.content
    if not content:
        raise JudgeLlmError(f"judge LLM at {base_url} sent an empty reply")
    return content


class LocalJudgeLlm:
    """The judge LLM run in this process by a reinflow engine, loaded on first use.

    The engine comes from ``reinflow.engines.factory.create_engine`` (imported when first needed),
    so any engine behind :class:`reinflow.engines.base.Engine` serves the judge.
    """

    def __init__(self, options: LocalJudgeOptions) -> None:
        """Nothing is loaded yet: the model loads on the first :meth:`complete`."""
        self.options = options
        self._loaded: tuple[Engine, Any] | None = None
        self._load_lock = threading.Lock()

    def __repr__(self) -> str:
        """The model it runs."""
        return f"LocalJudgeLlm(model_path={self.options.model_path!r})"

    async def complete(self, messages: list[dict[str, str]]) -> str:
        """The model's reply to ``messages`` under the judge's sampling options."""
        from reinflow.engines.base import SamplingParams  # torch: only for the local backend

        engine, tokenizer = await asyncio.to_thread(self._load)
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        prompt_ids = tokenizer.encode(prompt, add_special_tokens=False)
        sampling = SamplingParams(
            max_new_tokens=self.options.max_new_tokens, temperature=self.options.temperature, top_p=1.0
        )
        generation = await engine.generate(prompt_ids, sampling)
        if generation.finish_reason == "abort":
            raise JudgeLlmError(f"the local judge engine ({self.options.model_path}) aborted the request")
        return tokenizer.decode(generation.token_ids, skip_special_tokens=True)

    async def close(self) -> None:
        """Stop the engine, if it was started."""
        if self._loaded is not None:
            await self._loaded[0].close()
            self._loaded = None

    def _load(self) -> tuple[Engine, Any]:
        """Resolve the model and start its engine once (thread-safe; blocking)."""
        with self._load_lock:
            if self._loaded is None:
                self._loaded = _start_local_engine(self.options)
            return self._loaded


def _start_local_engine(options: LocalJudgeOptions) -> tuple[Engine, Any]:
    """(engine, tokenizer) for ``options.model_path``; the engine factory is imported lazily."""
    from transformers import AutoTokenizer

    from reinflow.engines.factory import create_engine
    from reinflow.config.models import resolve_model

    folder = resolve_model(options.model_path)
    engine = create_engine("hf", folder, max_model_len=options.max_model_len, max_batch_size=8)
    return engine, AutoTokenizer.from_pretrained(folder)


def make_judge_llm(options: JudgeOptions) -> OpenAiJudgeLlm | LocalJudgeLlm:
    """The judge LLM client the options describe."""
    if isinstance(options, OpenAiJudgeOptions):
        return OpenAiJudgeLlm(options)
    return LocalJudgeLlm(options)


# ----------------------------------------------------------------------------- the judge


@dataclass(frozen=True)
class Assessment:
    """Everything decided about one episode: the checker's verdict, the LLM's (if asked), the reward."""

    answer: AnswerVerdict
    llm: LlmVerdict | None
    reward: float
    is_success: bool


class MathAnswerAndLlmAsJudge(Judge):
    """math_verify first; an LLM judge for unsure answers and, optionally, process quality."""

    def __init__(self, **options: Any) -> None:
        """Options as in :class:`OpenAiJudgeOptions` / :class:`LocalJudgeOptions` (``backend`` picks)."""
        super().__init__()
        self.options = parse_judge_options(options)
        self.checker = MathAnswerJudge()
        self.llm = make_judge_llm(self.options)

    def __repr__(self) -> str:
        """The options (which hold no secret) and the LLM client."""
        return f"MathAnswerAndLlmAsJudge({self.options!r}, llm={self.llm!r})"

    async def compute_reward(self, judge_input_dictionary: dict[str, Any]) -> tuple[float, bool]:
        """``(reward, is_success)``; raises :class:`JudgeLlmError` when the LLM gives no usable answer."""
        assessment = await self.assess(judge_input_dictionary)
        return assessment.reward, assessment.is_success

    async def assess(self, judge_input_dictionary: dict[str, Any]) -> Assessment:
        """The full decision about one episode (what :meth:`compute_reward` returns, with reasons)."""
        # math_verify may take seconds; in a worker thread the event loop keeps serving other episodes.
        answer = await asyncio.to_thread(self.checker.judge, judge_input_dictionary)
        request = self._request(judge_input_dictionary, answer)
        if request is None:
            return Assessment(answer, None, 1.0 if answer.is_correct else 0.0, answer.is_correct)
        llm = await self._ask(request)
        is_correct = llm.is_correct if llm.is_correct is not None else answer.is_correct
        reward = blend_reward(is_correct, llm.score, self.options.process_weight)
        return Assessment(answer, llm, reward, is_correct)

    async def close(self) -> None:
        """Release the LLM client (connections, or the local engine)."""
        await self.llm.close()

    def _request(self, judge_input_dictionary: Mapping[str, Any], answer: AnswerVerdict) -> JudgeRequest | None:
        """What to ask the LLM about this episode, or None when nothing needs asking."""
        need_verdict = self.options.ask_when_unsure and not answer.is_certain
        need_score = self.options.process_weight > 0.0
        if not (need_verdict or need_score):
            return None
        task = judge_input_dictionary["workflow_task"]
        return JudgeRequest(
            question=str(_field(task, "question")),
            reference=answer.reference,
            predicted=answer.predicted,
            transcript=transcript_of(judge_input_dictionary.get("grouped_steps") or []),
            need_verdict=need_verdict,
            need_score=need_score,
            checked_correct=answer.is_correct if answer.is_certain else None,
        )

    async def _ask(self, request: JudgeRequest) -> LlmVerdict:
        """Send the request, parse the reply (garbage raises :class:`UnparseableJudgeReply`)."""
        _log.debug("asking %r (verdict: %s, score: %s)", self.llm, request.need_verdict, request.need_score)
        reply = await self.llm.complete(build_judge_messages(request, self.options.max_transcript_chars))
        _log.debug("judge LLM replied: %.300r", reply)
        return parse_judge_reply(reply, need_verdict=request.need_verdict, need_score=request.need_score)


def _field(record: Any, name: str) -> Any:
    """``record[name]`` for a mapping, ``record.name`` for any other object (a ``Task``)."""
    return record[name] if isinstance(record, Mapping) else getattr(record, name)
