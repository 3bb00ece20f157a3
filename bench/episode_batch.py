"""Which tokens of which agent episodes go into the next batched forward pass: the scheduling half of
``bench/llama_cpp_engine.py``, kept apart from llama.cpp so it can be tested without it.

An episode is a list of turns, each with its own ``max_new_tokens`` and sampling seed. The first turn
sends its own prompt; every later turn sends the conversation so far, extended by ``next_prompt(prompt,
output)`` (the bench's ``FollowUp.extend``: the output, the tool result, the next assistant header).
An episode holds one sequence of the model's cache (a ``seq_id``) from its first turn to its last, so a
turn feeds only the tokens the cache lacks (the previous turn's last sampled token and the follow-up),
not the whole conversation again. Episodes beyond ``max_sequences`` wait for a sequence to be freed.

Every step, each live episode contributes its uncached tokens (at most ``max_step_tokens`` in all; a
long prompt is fed over several steps) and asks for the logits of its last token once it has none
left uncached. ``advance`` takes the token sampled for each such episode, ends the turn at a stop id or
at ``max_new_tokens``, and says which cache entries the driver must drop: a retired episode's whole
sequence (before its ``seq_id`` is handed to a waiting episode), or a tail the next prompt rewrote.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Turn:
    """One request of an episode (the prompt is used only for the episode's first turn)."""

    prompt_ids: list[int]
    max_new_tokens: int
    temperature: float = 1.0
    seed: int = 0


@dataclass(frozen=True)
class Chunk:
    """Tokens of one sequence for one forward pass, at positions ``start``, ``start + 1``, ...;
    ``turn`` is set when the last token's logits are wanted (to sample the turn's next token)."""

    seq_id: int
    token_ids: list[int]
    start: int
    turn: Turn | None


@dataclass(frozen=True)
class Forget:
    """Drop the cache of ``seq_id`` from position ``start`` on (0: the whole sequence)."""

    seq_id: int
    start: int


@dataclass
class _Episode:
    """One running episode: its turns, the current one's prompt and output, and what is cached."""

    index: int
    seq_id: int
    turns: list[Turn]
    prompt: list[int]
    turn_index: int = 0
    output: list[int] = field(default_factory=list)
    cached: int = 0
    outputs: list[list[int]] = field(default_factory=list)

    @property
    def turn(self) -> Turn:
        return self.turns[self.turn_index]

    @property
    def sequence(self) -> list[int]:
        return self.prompt + self.output


def common_prefix(first: list[int], second: list[int]) -> int:
    """The number of leading tokens the two lists share."""
    length = 0
    for a, b in zip(first, second):
        if a != b:
            break
        length += 1
    return length


class EpisodeBatch:
    """Episodes mapped onto at most ``max_sequences`` cache sequences; see the module docstring."""

    def __init__(self, episodes: Iterable[list[Turn]], max_sequences: int, stop_ids: Collection[int],
                 next_prompt: Callable[[list[int], list[int]], list[int]], max_step_tokens: int = 2048):
        self.waiting = deque(enumerate(list(turns) for turns in episodes))
        self.free_ids = deque(range(max_sequences))
        self.live: dict[int, _Episode] = {}
        self.finished: dict[int, list[list[int]]] = {}
        """Each finished episode's outputs (one list of token ids per turn), by its place in ``episodes``."""
        self.stop_ids = frozenset(stop_ids)
        self.next_prompt = next_prompt
        self.max_step_tokens = max_step_tokens
        self._admit()

    @property
    def done(self) -> bool:
        return not self.live and not self.waiting

    def _admit(self) -> None:
        """Give each free sequence id to the next waiting episode."""
        while self.free_ids and self.waiting:
            index, turns = self.waiting.popleft()
            seq_id = self.free_ids.popleft()
            self.live[seq_id] = _Episode(index, seq_id, turns, list(turns[0].prompt_ids))

    def plan(self) -> list[Chunk]:
        """The chunks of the next forward pass (every live episode's uncached tokens, up to the
        budget; an episode is never starved: each gets at least one token)."""
        chunks, budget = [], self.max_step_tokens
        for episode in self.live.values():
            pending = episode.sequence[episode.cached:]
            take = max(1, min(len(pending), budget))
            budget -= take
            wants_logits = take == len(pending)
            chunks.append(Chunk(episode.seq_id, pending[:take], episode.cached, episode.turn if wants_logits else None))
        return chunks

    def advance(self, chunks: list[Chunk], sampled: dict[int, int]) -> list[Forget]:
        """Record that ``chunks`` are cached and ``sampled[seq_id]`` was drawn for each chunk with a
        turn; end turns and episodes that stopped. Returns the cache entries to drop."""
        forget: list[Forget] = []
        for chunk in chunks:
            episode = self.live[chunk.seq_id]
            episode.cached += len(chunk.token_ids)
            if chunk.turn is None:
                continue
            token = sampled[chunk.seq_id]
            episode.output.append(token)
            if token in self.stop_ids or len(episode.output) >= episode.turn.max_new_tokens:
                forget.extend(self._end_turn(episode))
        self._admit()
        return forget

    def _end_turn(self, episode: _Episode) -> list[Forget]:
        """Start the episode's next turn, or retire it and free its sequence."""
        episode.outputs.append(episode.output)
        if episode.turn_index + 1 == len(episode.turns):
            del self.live[episode.seq_id]
            self.free_ids.append(episode.seq_id)
            self.finished[episode.index] = episode.outputs
            return [Forget(episode.seq_id, 0)]
        fed = episode.sequence[:episode.cached]
        episode.prompt = self.next_prompt(episode.prompt, episode.output)
        episode.output, episode.turn_index = [], episode.turn_index + 1
        episode.cached = min(common_prefix(fed, episode.prompt), len(episode.prompt) - 1)  # >= 1 token to feed
        return [Forget(episode.seq_id, episode.cached)] if episode.cached < len(fed) else []

    def generated_tokens(self) -> int:
        """Tokens sampled so far, over every turn of every episode (finished or live)."""
        done = sum(len(output) for outputs in self.finished.values() for output in outputs)
        live = sum(len(e.output) + sum(len(o) for o in e.outputs) for e in self.live.values())
        return done + live
