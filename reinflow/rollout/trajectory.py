"""Turn an episode's LLM calls into training samples with token-level loss masks. Pure Python.

An agent episode is a list of **turns**, one per LLM call: the exact prompt ids sent to the engine,
the exact ids it generated and their logprobs. Consecutive turns usually share a prefix: the
prompt of call k+1 is the prompt of call k, then its output, then the tool results and the next
generation prompt (``reinflow.rollout.tuned_model`` builds it that way on purpose). Such turns are
**merged** into one sample holding the whole conversation once, with several trained spans;
training on it costs one forward pass instead of one per turn, and every token keeps the context it
was generated in.

A turn whose prompt does not start with the current sample's tokens (the conversation was
re-rendered: a changed system prompt, a template that rewrites history) starts a new sample.

Layout of a sample (``P`` prompt/template/tool tokens, ``G`` generated tokens)::

    token_ids  P P P P G G G P P P G G G
    loss_mask  0 0 0 0 1 1 1 0 0 0 1 1 1
    logprobs   0 0 0 0 a b c 0 0 0 d e f
    spans      [(4, 7), (10, 13)]

``loss_mask`` is 1 exactly on the generated tokens, including the closing EOS the policy sampled;
a template token the conversation adds after it (e.g. the newline after ``<|im_end|>``, or the
``<|im_end|>`` itself when a turn was cut off by the token limit) is a prompt token, mask 0.
``logprobs`` holds the sampling logprob of each generated token and **0.0 where the mask is 0**
(not NaN, so sums and Parquet columns stay finite: always combine it with ``loss_mask``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol


class TurnTokens(Protocol):
    """The token record of one LLM call (``reinflow.rollout.tuned_model.Turn`` is one)."""

    @property
    def prompt_ids(self) -> Sequence[int]: ...

    @property
    def output_ids(self) -> Sequence[int]: ...

    @property
    def output_logprobs(self) -> Sequence[float]: ...


@dataclass
class Sample:
    """One training sequence built from one or more consecutive turns of an episode."""

    token_ids: list[int] = field(default_factory=list)
    loss_mask: list[int] = field(default_factory=list)
    """1 on policy-generated tokens, 0 on everything else."""
    logprobs: list[float] = field(default_factory=list)
    """Sampling logprob of each generated token; 0.0 where ``loss_mask`` is 0."""
    spans: list[tuple[int, int]] = field(default_factory=list)
    """``[start, end)`` of each non-empty run of generated tokens, one per turn."""
    turn_indices: list[int] = field(default_factory=list)
    """The episode's turns merged into this sample, in order."""

    @property
    def num_trained_tokens(self) -> int:
        """How many tokens carry loss."""
        return sum(self.loss_mask)

    def extend_prompt(self, ids: Sequence[int]) -> None:
        """Append context tokens (mask 0)."""
        self.token_ids.extend(ids)
        self.loss_mask.extend([0] * len(ids))
        self.logprobs.extend([0.0] * len(ids))

    def extend_output(self, ids: Sequence[int], logprobs: Sequence[float]) -> None:
        """Append generated tokens (mask 1) and record their span."""
        start = len(self.token_ids)
        self.token_ids.extend(ids)
        self.loss_mask.extend([1] * len(ids))
        self.logprobs.extend(float(value) for value in logprobs)
        if ids:
            self.spans.append((start, len(self.token_ids)))


def extends(prefix: Sequence[int], ids: Sequence[int]) -> bool:
    """Whether ``ids`` starts with ``prefix`` token for token.

    >>> extends([1, 2], [1, 2, 3]), extends([1, 2], [1, 3, 2]), extends([1, 2, 3], [1, 2])
    (True, False, False)
    """
    return len(ids) >= len(prefix) and list(ids[: len(prefix)]) == list(prefix)


def build_samples(turns: Sequence[TurnTokens], max_samples: int) -> list[Sample]:
    """Merge prefix-consistent consecutive turns into samples; keep at most ``max_samples``.

    A turn joins the current sample when its prompt starts with the sample's tokens (which are the
    previous turn's prompt and output); otherwise it starts a new sample. Samples past
    ``max_samples`` are dropped with their turns (the first ones are kept: they hold the start of
    the episode). Compare ``sum(len(s.turn_indices) for s in samples)`` with ``len(turns)`` to
    count dropped turns.

    >>> class T:
    ...     def __init__(self, p, o): self.prompt_ids, self.output_ids, self.output_logprobs = p, o, [-0.5] * len(o)
    >>> [s.token_ids for s in build_samples([T([1, 2], [3, 4]), T([1, 2, 3, 4, 5], [6])], max_samples=4)]
    [[1, 2, 3, 4, 5, 6]]
    >>> build_samples([T([1, 2], [3, 4]), T([1, 2, 3, 4, 5], [6])], max_samples=4)[0].loss_mask
    [0, 0, 1, 1, 0, 1]
    >>> len(build_samples([T([1, 2], [3]), T([9, 2], [4]), T([7], [8])], max_samples=2))
    2
    """
    if max_samples < 1:
        raise ValueError(f"max_samples must be at least 1, got {max_samples}")
    samples: list[Sample] = []
    for index, turn in enumerate(turns):
        _check_turn(index, turn)
        current = samples[-1] if samples else None
        if current is None or not extends(current.token_ids, turn.prompt_ids):
            if len(samples) == max_samples:
                break
            current = Sample()
            samples.append(current)
        current.extend_prompt(turn.prompt_ids[len(current.token_ids) :])
        current.extend_output(turn.output_ids, turn.output_logprobs)
        current.turn_indices.append(index)
    return samples


def _check_turn(index: int, turn: TurnTokens) -> None:
    if len(turn.output_ids) != len(turn.output_logprobs):
        raise ValueError(
            f"turn {index}: {len(turn.output_ids)} output ids but {len(turn.output_logprobs)} logprobs; "
            "the engine must return one logprob per generated token"
        )
