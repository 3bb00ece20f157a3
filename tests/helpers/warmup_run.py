"""A tiny training run that warm-starts: demonstrations for the quickstart agent and the overrides
that use them (``tests/test_warmup_flow.py``, ``tests/reliability/test_faults_warmup_kill.py``)."""

from __future__ import annotations

import json
from pathlib import Path

from agents.quickstart_agent import SYSTEM_PROMPT

SUMS = [(2, 3), (4, 1), (6, 2), (7, 7), (5, 3), (1, 8)]
OVERRIDES = ("warmup.demonstrations=demos.jsonl", "warmup.epochs=2", "warmup.batch_size=2", "warmup.lr=1e-3")
"""Six usable conversations, two per step, two epochs: six warm-start steps."""
STEPS = 6


def write_demonstrations(project_root: Path) -> Path:
    """``demos.jsonl``: six one-call conversations (question, number) and one the tiny config's
    ``rollout.max_turns: 1`` refuses (two assistant messages)."""
    rows = [{"messages": [{"role": "system", "content": SYSTEM_PROMPT},
                          {"role": "user", "content": f"Calculate {a} + {b}."},
                          {"role": "assistant", "content": str(a + b)}]} for a, b in SUMS]
    rows.append({"messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": "Calculate 1 + 1."},
                              {"role": "assistant", "content": "Let me think."}, {"role": "user", "content": "Go on."},
                              {"role": "assistant", "content": "2"}]})
    path = project_root / "demos.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path
