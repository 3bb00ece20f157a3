"""The options of :class:`judges.llm_judge.MathAnswerAndLlmAsJudge`: one pydantic model per backend.

``backend`` picks the model (``openai``: any OpenAI-compatible server; ``local``: a model run in
this process by a reinflow engine). :func:`parse_judge_options` validates a config's
``judge.options`` mapping and turns every problem into one :class:`ConfigError` line, through the
same formatter as the experiment config (:func:`reinflow.config.errors.format_validation_error`).

The API key itself is never an option: ``api_key_env`` names the environment variable that holds
it. A key pasted into the options (as ``api_key``, ``token``, ...) is refused without being quoted,
and ``api_key_env`` is declared ``repr=False``, so a key pasted there is never quoted either.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from reinflow.config.errors import ConfigError, format_validation_error
from reinflow.config.models import SMOLLM2

__all__ = [
    "OPTIONS_SOURCE",
    "JudgeOptions",
    "LocalJudgeOptions",
    "OpenAiJudgeOptions",
    "parse_judge_options",
]

OPTIONS_SOURCE = "judge.options (MathAnswerAndLlmAsJudge)"
"""Where the options come from, as every error message names it."""

ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"

KEY_LIKE_OPTIONS = frozenset({"api_key", "key", "token", "openai_api_key"})
"""Option names (any case) under which a user has pasted the key itself; refused, never quoted."""


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
        "OPENAI_API_KEY", pattern=ENV_NAME_PATTERN, repr=False,
        description="NAME of the environment variable holding the API key (never the key itself; a bad "
        "value is never quoted, in case it is a pasted key).",
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

    Messages never quote the value of ``api_key_env``, of a key-like option or of an unknown
    option (any of them may be a pasted key).
    """
    backend = options.get("backend")
    if backend not in _BACKENDS:
        raise ConfigError(f"{OPTIONS_SOURCE}: backend: must be 'openai' or 'local' (got {backend!r})")
    _refuse_pasted_key(options)
    model = _BACKENDS[backend]
    try:
        parsed = model.model_validate(dict(options))
    except ValidationError as error:
        raise ConfigError(format_validation_error(error, model, OPTIONS_SOURCE)) from None
    if parsed.process_weight == 0.0 and not parsed.ask_when_unsure:
        raise ConfigError(
            f"{OPTIONS_SOURCE}: with process_weight 0 and ask_when_unsure false the LLM is never asked; "
            "use judges.math_answer->MathAnswerJudge, or set one of them"
        )
    return parsed


def _refuse_pasted_key(options: Mapping[str, Any]) -> None:
    """A :class:`ConfigError` (naming the option, not its value) when the key itself is in the options."""
    pasted = sorted(str(name) for name in options if str(name).lower() in KEY_LIKE_OPTIONS)
    if pasted:
        raise ConfigError(
            f"{OPTIONS_SOURCE}: {pasted[0]}: the API key never goes in the options; put the key in an "
            "environment variable and name that variable with api_key_env"
        )
