"""The judge LLM clients of :class:`judges.llm_judge.MathAnswerAndLlmAsJudge`, one per backend.

Both satisfy :class:`JudgeLlm`, all the judge needs: ``complete(messages) -> str`` and ``close()``.

* :class:`OpenAiJudgeLlm` talks to any OpenAI-compatible ``/chat/completions`` server. Every
  transport or HTTP failure becomes a :class:`JudgeLlmError`; an error body is cut short and
  scrubbed of the key. The key is read from the environment variable ``api_key_env`` names
  (:func:`read_api_key`), when a client is made: it is never stored in the options or a repr.
* :class:`LocalJudgeLlm` runs the model in this process with a reinflow engine, loaded on the
  first request (the engine factory and torch are imported only then).

:func:`make_judge_llm` picks the client the options describe.
"""

from __future__ import annotations

import asyncio
import os
import threading
from typing import TYPE_CHECKING, Any, Protocol

import openai
from openai.types.chat import ChatCompletion

from judges.llm_options import OPTIONS_SOURCE, JudgeOptions, LocalJudgeOptions, OpenAiJudgeOptions
from judges.llm_verdict import JudgeLlmError
from reinflow.config.errors import ConfigError

if TYPE_CHECKING:
    from reinflow.engines.base import Engine

__all__ = ["JudgeLlm", "LocalJudgeLlm", "OpenAiJudgeLlm", "make_judge_llm", "read_api_key"]

ERROR_BODY_CHARS = 300
"""How much of an HTTP error body is quoted in a :class:`JudgeLlmError`."""


def read_api_key(env_name: str) -> str:
    """The API key in ``$env_name``; a :class:`ConfigError` naming the variable when it is unset."""
    key = os.environ.get(env_name, "")
    if not key:
        raise ConfigError(
            f"{OPTIONS_SOURCE}: api_key_env: the environment variable {env_name} is not set or empty; "
            f"export the judge server's API key as {env_name}"
        )
    return key


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

    from reinflow.config.models import resolve_model
    from reinflow.engines.factory import create_engine

    folder = resolve_model(options.model_path)
    engine = create_engine("hf", folder, max_model_len=options.max_model_len, max_batch_size=8)
    return engine, AutoTokenizer.from_pretrained(folder)


def make_judge_llm(options: JudgeOptions) -> JudgeLlm:
    """The judge LLM client the options describe: a server behind an API, or a model run here."""
    if isinstance(options, OpenAiJudgeOptions):
        return OpenAiJudgeLlm(options)
    return LocalJudgeLlm(options)
