"""The requests of bench/rollout_engine.py: chat-templated GSM8K questions, each with a ragged
``max_new_tokens`` and a sampling seed of its own; episodes whose turns each extend the previous
prompt (``FollowUp``); and ``run_streams``, which sends streams of them through an engine.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

from reinflow.engines.base import Engine, SamplingParams


FALLBACK_QUESTIONS = [
    "A baker makes 24 muffins and sells 3 boxes of 5. How many muffins are left?",
    "Tom reads 12 pages a day. How many pages does he read in 3 weeks?",
    "A train travels 60 km per hour for 2.5 hours. How far does it go?",
    "Sara has $40 and buys two books at $7.50 each. How much money does she have left?",
]


@dataclass(frozen=True)
class Request:
    """One benchmark request."""

    prompt_ids: list[int]
    sampling: SamplingParams


@dataclass(frozen=True)
class Result:
    """Generated tokens and wall time of one mode."""

    tokens: int
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds


def questions(count: int) -> list[str]:
    """``count`` GSM8K test questions (or the built-in fallback, repeated)."""
    folder = Path(os.environ.get("REINFLOW_GSM8K_DIR", Path(__file__).resolve().parents[2] / "shared/data/gsm8k"))
    path = folder / "test.jsonl"
    if not path.is_file():
        return [FALLBACK_QUESTIONS[i % len(FALLBACK_QUESTIONS)] for i in range(count)]
    with path.open() as lines:
        return [json.loads(line)["question"] for _, line in zip(range(count), lines)]


def make_requests(tokenizer, count: int, seed: int) -> list[Request]:
    """Chat-templated questions with ragged max_new_tokens and one sampling seed each."""
    draw = random.Random(seed)
    requests = []
    for index, question in enumerate(questions(count)):
        messages = [{"role": "user", "content": question}]
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        sampling = SamplingParams(max_new_tokens=draw.randint(32, 128), temperature=1.0, top_p=1.0, seed=index)
        requests.append(Request(list(ids), sampling))
    return requests


def episode_rounds(tokenizer, streams: int, turns: int, rounds: int) -> list[list[list[Request]]]:
    """``rounds`` sets of ``streams`` episodes of ``turns`` requests, each set on questions of its own
    (the first set is the one ``--engine hf`` runs)."""
    size = streams * turns
    requests = make_requests(tokenizer, size * rounds, seed=0)
    chunks = [requests[r * size : (r + 1) * size] for r in range(rounds)]
    return [[chunk[i::streams] for i in range(streams)] for chunk in chunks]


async def run_streams(engine: Engine, streams: list[list[Request]], follow_up: FollowUp | None = None) -> Result:
    """Every stream sends its requests one after another; all streams run concurrently. With
    ``follow_up``, a stream is one conversation: each request after the first sends the previous
    prompt, its output and ``follow_up``'s ids instead of its own prompt (its sampling is its own)."""

    async def stream(requests: list[Request]) -> int:
        tokens, prompt = 0, requests[0].prompt_ids
        for request in requests:
            output = (await engine.generate(prompt if follow_up else request.prompt_ids, request.sampling)).token_ids
            tokens += len(output)
            if follow_up:
                prompt = follow_up.extend(prompt, output)
        return tokens

    started = time.perf_counter()
    counts = await asyncio.gather(*(stream(requests) for requests in streams))
    return Result(sum(counts), time.perf_counter() - started)


@dataclass(frozen=True)
class FollowUp:
    """The token ids that end an assistant turn and add a tool result and the next assistant header."""

    ids: list[int]
    eos: int

    @classmethod
    def of(cls, tokenizer) -> FollowUp:
        """Rendered by the tokenizer's chat template: what follows an assistant message's content."""
        marker = "<<assistant output>>"
        messages = [{"role": "user", "content": "question"}, {"role": "assistant", "content": marker},
                    {"role": "user", "content": "Tool output: 42"}]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return cls(tokenizer.encode(text.split(marker, 1)[1], add_special_tokens=False), tokenizer.eos_token_id)

    def extend(self, prompt: list[int], output: list[int]) -> list[int]:
        """The next turn's prompt (an output that stopped at EOS already holds the closing EOS)."""
        closing = self.ids[1:] if output[-1:] == [self.eos] and self.ids[:1] == [self.eos] else self.ids
        return prompt + output + closing
