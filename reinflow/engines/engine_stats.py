"""The counters the hf engine's scheduler keeps about its passes (metrics, tests, benchmarks).

A pass is one forward over the running rows plus the prompts admitted in it (see
``reinflow.engines.hf``); ``EngineStats.record_pass`` adds one, and the scheduler bumps
``generated_tokens`` and ``finish_reasons`` as rows sample and finish. Read them any time: they
only grow.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class EngineStats:
    """Counters the scheduler keeps; read them any time (metrics, tests, benchmarks)."""

    passes: int = 0
    decode_steps: int = 0
    """Passes that advanced at least one running row."""
    prefills: int = 0
    prompt_tokens: int = 0
    reused_prompt_tokens: int = 0
    """Prompt tokens whose keys/values were copied from a running or parked row, not computed."""
    generated_tokens: int = 0
    rows_per_step: Counter[int] = field(default_factory=Counter)
    """Histogram: running rows decoded in a pass -> number of passes."""
    finish_reasons: Counter[str] = field(default_factory=Counter)
    busy_seconds: float = 0.0
    """Wall time spent in passes (forward + sampling)."""
    prefill_seconds: float = 0.0
    """The part of ``busy_seconds`` spent in passes that carried a prefill."""

    @property
    def max_rows(self) -> int:
        """The largest number of rows a pass decoded together."""
        return max(self.rows_per_step, default=0)

    @property
    def mean_rows(self) -> float:
        """Average number of rows a decode step advanced."""
        return sum(k * v for k, v in self.rows_per_step.items()) / max(self.decode_steps, 1)

    def record_pass(self, running_rows: int, prefills: int, prompt_tokens: int, reused_prompt_tokens: int,
                    seconds: float) -> None:
        """Count one pass that decoded ``running_rows`` rows and prefilled ``prefills`` prompts of
        ``prompt_tokens`` tokens in all (``reused_prompt_tokens`` of them copied), in ``seconds``."""
        self.passes += 1
        self.busy_seconds += seconds
        if running_rows:
            self.decode_steps += 1
            self.rows_per_step[running_rows] += 1
        if prefills:
            self.prefills += prefills
            self.prompt_tokens += prompt_tokens
            self.reused_prompt_tokens += reused_prompt_tokens
            self.prefill_seconds += seconds
