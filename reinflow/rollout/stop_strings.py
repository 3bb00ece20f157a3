"""Stop strings (OpenAI's ``stop``): cut a generation at the first token that completes one.

The engines stop on EOS only, so a caller's stop strings are applied to the sampled ids afterwards:
the reply keeps the shortest prefix of its ids whose text contains a stop string, and the caller
is shown the text before that string. The kept ids are exactly what the policy sampled (a prefix
of its output, with their logprobs), so training still sees sampled tokens only; the tokens after
the cut are dropped, as if generation had stopped there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

Decode = Callable[[Sequence[int]], str]


@dataclass(frozen=True)
class StopCut:
    """Where a stop string ended a reply."""

    keep: int
    """How many output ids are kept (the last one completes the stop string)."""
    text_before_stop: str
    """The reply's text up to (without) the stop string: what the caller is shown."""


def cut_at_stop(output_ids: Sequence[int], decode: Decode, stops: Sequence[str], ends_with_eos: bool) -> StopCut | None:
    """The cut for the earliest stop string in ``output_ids`` (the closing EOS excluded), or None.

    >>> text = "ab|cd|ef"
    >>> decode = lambda ids: "".join(text[i] for i in ids)
    >>> cut_at_stop(range(8), decode, ["|"], ends_with_eos=False)
    StopCut(keep=3, text_before_stop='ab')
    >>> cut_at_stop(range(8), decode, ["cd", "b|"], ends_with_eos=False)
    StopCut(keep=3, text_before_stop='a')
    >>> cut_at_stop(range(8), decode, ["f"], ends_with_eos=True) is None  # the last id is the EOS
    True
    """
    stops = [stop for stop in stops if stop]
    region = list(output_ids[:-1] if ends_with_eos else output_ids)
    if not stops or not any(stop in decode(region) for stop in stops):
        return None
    low, high = 1, len(region)  # the text of region[:high] holds a stop string; find the smallest such prefix
    while low < high:
        middle = (low + high) // 2
        if any(stop in decode(region[:middle]) for stop in stops):
            high = middle
        else:
            low = middle + 1
    text = decode(region[:high])
    position = min(text.find(stop) for stop in stops if stop in text)
    return StopCut(keep=high, text_before_stop=text[:position])
