"""A scripted engine for tests: it "generates" pre-set replies, tokenized by the policy tokenizer.

Test double, not a model: each ``generate`` call returns the next scripted text's token ids plus
the EOS id (the tokenizer's, or the one given; finish ``stop``), or its first ``max_new_tokens`` ids (finish ``length``) when the text
is longer than the request allows. Logprobs are a fixed ``-0.5`` per token. Every prompt and
sampling request is kept for assertions.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from reinflow.engines.base import Generation, SamplingParams

SCRIPTED_LOGPROB = -0.5


class ScriptedEngine:
    """Replies with ``replies`` in order; fails the test if asked for more."""

    def __init__(self, tokenizer, replies: list[str], eos_token_id: int | None = None) -> None:
        self.tokenizer = tokenizer
        self.eos_token_id = tokenizer.eos_token_id if eos_token_id is None else eos_token_id
        self.replies = list(replies)
        self.prompts: list[list[int]] = []
        self.requests: list[SamplingParams] = []
        self.generations: list[Generation] = []

    async def generate(self, prompt_ids: list[int], sampling: SamplingParams) -> Generation:
        """The next scripted reply as a generation."""
        assert self.replies, "the scripted engine ran out of replies"
        self.prompts.append(list(prompt_ids))
        self.requests.append(sampling)
        ids = self.tokenizer.encode(self.replies.pop(0), add_special_tokens=False) + [self.eos_token_id]
        finish = "stop"
        if len(ids) > sampling.max_new_tokens:
            ids, finish = ids[: sampling.max_new_tokens], "length"
        generation = Generation(token_ids=ids, logprobs=[SCRIPTED_LOGPROB] * len(ids), finish_reason=finish)
        self.generations.append(generation)
        return generation

    def load_weights(self, weights: Mapping[str, torch.Tensor] | Path) -> None:
        """Scripted replies have no weights."""

    async def close(self) -> None:
        """Nothing to stop."""
