"""Reward shaping, kept apart from correctness so each shows as its own metric.

Pure functions: is an output degenerate (garbage or repeating itself)? what penalties apply?
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

def repeated_ngram_share(token_ids: list[int], n: int) -> float:
    """Share of the n-grams in ``token_ids`` that already occurred earlier in it.

    >>> repeated_ngram_share([1, 2, 3, 4, 5, 6, 7, 8], n=2)
    0.0
    >>> round(repeated_ngram_share([1, 2] * 10, n=2), 2)
    0.89
    """
    grams = [tuple(token_ids[i : i + n]) for i in range(len(token_ids) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def garbage_share(text: str) -> float:
    """Share of characters that are not readable text: replacement characters (invalid UTF-8),
    control characters other than whitespace, and unassigned or private-use code points.

    >>> garbage_share("The answer is 42.")
    0.0
    >>> garbage_share("\ufffd\ufffdab")
    0.5
    """
    if not text:
        return 0.0
    bad = sum(1 for ch in text if ch == "\ufffd" or _is_unreadable(ch))
    return bad / len(text)


def _is_unreadable(ch: str) -> bool:
    category = unicodedata.category(ch)
    return (category == "Cc" and ch not in "\n\r\t") or category in ("Cn", "Co", "Cs")


def is_degenerate(
    text: str,
    token_ids: list[int],
    *,
    ngram: int,
    min_tokens: int,
    max_repeated_share: float,
    max_garbage_share: float,
) -> bool:
    """True when more than ``max_garbage_share`` of ``text`` is garbage characters or, being at
    least ``min_tokens`` long, more than ``max_repeated_share`` of its token ``ngram``-grams repeat
    an earlier one (short outputs are never called repetitive: short answers repeat words). The
    thresholds are ``judge.degenerate_*`` of the config.

    >>> limits = dict(ngram=4, min_tokens=64, max_repeated_share=0.5, max_garbage_share=0.2)
    >>> is_degenerate("The answer is 42.", [1, 2, 3], **limits)
    False
    >>> is_degenerate("ha" * 100, [7, 8] * 100, **limits)
    True
    >>> is_degenerate("ha" * 10, [7, 8] * 10, **limits)  # repetitive, but too short to tell
    False
    """
    if garbage_share(text) > max_garbage_share:
        return True
    return len(token_ids) >= min_tokens and repeated_ngram_share(token_ids, ngram) > max_repeated_share


@dataclass(frozen=True)
class ShapedReward:
    """The reward GRPO uses and its parts, each reported on its own."""

    reward: float
    length_capped: bool
    format_penalty: float
    degenerate_penalty: float


def shape_reward(
    raw_reward: float,
    *,
    format_errors: int,
    degenerate: bool,
    generated_tokens: int,
    format_penalty: float,
    degenerate_penalty: float,
    max_response_tokens: int | None,
) -> ShapedReward:
    """``raw_reward`` (zeroed when over the length cap) minus the format and degeneration penalties.

    >>> shape_reward(1.0, format_errors=2, degenerate=False, generated_tokens=10, format_penalty=0.1,
    ...              degenerate_penalty=0.5, max_response_tokens=None).reward
    0.8
    >>> shape_reward(1.0, format_errors=0, degenerate=True, generated_tokens=900, format_penalty=0.1,
    ...              degenerate_penalty=0.5, max_response_tokens=512)
    ShapedReward(reward=-0.5, length_capped=True, format_penalty=0.0, degenerate_penalty=0.5)
    """
    capped = max_response_tokens is not None and generated_tokens > max_response_tokens
    correctness = 0.0 if capped else raw_reward
    fmt = format_penalty * format_errors
    degen = degenerate_penalty if degenerate else 0.0
    return ShapedReward(correctness - fmt - degen, capped, fmt, degen)
