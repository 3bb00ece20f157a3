"""Judges for end-to-end tests: they give a random model a learning signal."""

from __future__ import annotations

from reinflow import Judge


class ParityJudge(Judge):
    """Reward 1 when the reply has an even number of characters: about half the episodes of any
    group succeed, so GRPO always has something to learn from."""

    def compute_reward(self, judge_input_dictionary):
        text = judge_input_dictionary["grouped_steps"][-1]["response_text"] if judge_input_dictionary["grouped_steps"] else ""
        success = len(text) % 2 == 0
        return float(success), success
