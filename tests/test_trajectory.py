"""Episode turns → training samples: merging, loss masks and logprob alignment on hand-built ids."""

from __future__ import annotations

import doctest
from dataclasses import dataclass

import pytest

from reinflow.rollout import trajectory
from reinflow.rollout.trajectory import build_samples

EOS, NL = 2, 198  # an end-of-turn token and the template's newline after it


@dataclass
class T:
    """A turn as the tuned model records it (only the token fields matter here)."""

    prompt_ids: list[int]
    output_ids: list[int]
    output_logprobs: list[float]


def turn(prompt: list[int], output: list[int], first_logprob: float = -0.1) -> T:
    return T(prompt, output, [first_logprob - 0.1 * i for i in range(len(output))])


def test_doctests_pass():
    assert doctest.testmod(trajectory).failed == 0


def test_single_turn():
    (sample,) = build_samples([turn([10, 11, 12], [20, 21, EOS])], max_samples=4)
    assert sample.token_ids == [10, 11, 12, 20, 21, EOS]
    assert sample.loss_mask == [0, 0, 0, 1, 1, 1]
    assert sample.logprobs == pytest.approx([0.0, 0.0, 0.0, -0.1, -0.2, -0.3])
    assert sample.spans == [(3, 6)]
    assert sample.turn_indices == [0]
    assert sample.num_trained_tokens == 3


def test_extending_turns_merge_into_one_sample_with_two_spans():
    first = turn([10, 11, 12], [20, 21, EOS], first_logprob=-1.0)
    tool_result = [NL, 30, 31, 32, 33]  # template newline, tool output, next generation prompt
    second = turn(first.prompt_ids + first.output_ids + tool_result, [40, EOS], first_logprob=-2.0)
    (sample,) = build_samples([first, second], max_samples=4)
    assert sample.token_ids == second.prompt_ids + second.output_ids
    assert sample.loss_mask == [0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 1, 1]
    # the EOS of each turn is trained, the template newline after it is not
    assert sample.loss_mask[sample.token_ids.index(EOS)] == 1
    assert sample.loss_mask[6] == 0 and sample.token_ids[6] == NL
    assert sample.spans == [(3, 6), (11, 13)]
    for start, end in sample.spans:
        assert all(sample.loss_mask[start:end])
    assert [sample.token_ids[s:e] for s, e in sample.spans] == [first.output_ids, second.output_ids]
    assert [sample.logprobs[s:e] for s, e in sample.spans] == [first.output_logprobs, second.output_logprobs]
    assert all(lp == 0.0 for lp, m in zip(sample.logprobs, sample.loss_mask) if not m)
    assert sample.turn_indices == [0, 1]


def test_turn_cut_by_length_gets_its_end_token_from_the_template():
    first = turn([10, 11], [20, 21])  # no EOS: cut off by max_new_tokens
    second = turn([10, 11, 20, 21, EOS, NL, 30], [40, EOS])
    (sample,) = build_samples([first, second], max_samples=2)
    assert sample.loss_mask == [0, 0, 1, 1, 0, 0, 0, 1, 1]


def test_three_turns_merge():
    turns = [turn([1], [2, EOS])]
    for _ in range(2):
        previous = turns[-1]
        turns.append(turn(previous.prompt_ids + previous.output_ids + [NL, 5], [6, EOS]))
    (sample,) = build_samples(turns, max_samples=1)
    assert sample.token_ids == turns[-1].prompt_ids + turns[-1].output_ids
    assert len(sample.spans) == 3
    assert sample.num_trained_tokens == 6


def test_non_extending_turn_starts_a_new_sample():
    first = turn([10, 11], [20, EOS])
    rerendered = turn([10, 99, 20, EOS, NL, 30], [40, EOS])  # history re-tokenised differently
    follow_up = turn(rerendered.prompt_ids + rerendered.output_ids + [NL], [50, EOS])
    samples = build_samples([first, rerendered, follow_up], max_samples=4)
    assert [s.turn_indices for s in samples] == [[0], [1, 2]]
    assert samples[0].token_ids == first.prompt_ids + first.output_ids
    assert samples[1].token_ids == follow_up.prompt_ids + follow_up.output_ids
    assert samples[1].loss_mask[: len(rerendered.prompt_ids)] == [0] * len(rerendered.prompt_ids)


def test_shorter_prompt_does_not_extend():
    samples = build_samples([turn([1, 2, 3], [4]), turn([1, 2], [5])], max_samples=4)
    assert len(samples) == 2


def test_cap_keeps_the_first_samples():
    turns = [turn([100 + i], [200 + i, EOS]) for i in range(5)]
    samples = build_samples(turns, max_samples=3)
    assert [s.turn_indices for s in samples] == [[0], [1], [2]]
    assert sum(len(s.turn_indices) for s in samples) == 3  # two turns dropped


def test_cap_does_not_cut_a_merged_sample():
    first = turn([1], [2, EOS])
    second = turn([1, 2, EOS, NL], [3, EOS])
    (sample,) = build_samples([first, second, turn([9], [9])], max_samples=1)
    assert sample.turn_indices == [0, 1]


def test_empty_output_adds_no_span():
    (sample,) = build_samples([turn([1, 2], [])], max_samples=1)
    assert sample.spans == [] and sample.loss_mask == [0, 0]


def test_bad_inputs():
    with pytest.raises(ValueError, match="max_samples"):
        build_samples([], max_samples=0)
    with pytest.raises(ValueError, match="2 output ids but 1 logprobs"):
        build_samples([T([1], [2, 3], [-0.1])], max_samples=1)
    assert build_samples([], max_samples=1) == []
