"""The on-disk record of one episode: one row of ``rollouts/iter_N.parquet`` (and, with the judge's
columns added, of ``judged/iter_N.parquet``). Nested values that vary by workflow (the messages,
the turns, the workflow's metadata) are stored as JSON strings; token data as typed lists."""

from __future__ import annotations

import pyarrow as pa

SAMPLE_TYPE = pa.struct(
    [
        ("token_ids", pa.list_(pa.int32())),
        ("loss_mask", pa.list_(pa.int8())),
        ("logprobs", pa.list_(pa.float32())),
    ]
)
"""One training sample: prompt and generated ids of one or more merged turns, 1 on policy tokens."""

ROLLOUT_SCHEMA = pa.schema(
    [
        ("iteration", pa.int32()),
        ("task_id", pa.string()),
        ("episode_id", pa.string()),  # "<task_id>#<k>", k in [0, group_size)
        ("group_index", pa.int32()),  # k
        ("question", pa.string()),
        ("reference_answer", pa.string()),
        ("task_row", pa.string()),  # JSON: the source row
        ("status", pa.string()),  # ok | failed | timeout
        ("error", pa.string()),  # why a failed/timeout episode failed (None when ok)
        ("context_overflow", pa.bool_()),  # the prompt reached max_model_len; the episode ended there
        ("final_answer", pa.string()),  # what the workflow registered
        ("workflow_reward", pa.float64()),  # a reward the workflow returned itself (then no judge runs)
        ("judge_input", pa.string()),  # JSON: extra values from update_judge_input_dictionary
        ("metadata", pa.string()),  # JSON: WorkflowOutput.metadata
        ("messages", pa.string()),  # JSON: the conversation, turn by turn
        ("turns", pa.string()),  # JSON: one dict per LLM call (response text, tool calls, finish reason, sizes)
        ("samples", pa.list_(SAMPLE_TYPE)),
        ("num_turns", pa.int32()),
        ("num_tool_calls", pa.int32()),  # well-formed tool calls, the structured final answer's not counted
        ("format_errors", pa.int32()),  # malformed tool calls
        ("answered_before_tool_result", pa.bool_()),  # answered in a turn that also called a tool (tool_use.py)
        ("generated_tokens", pa.int32()),
        ("finish_reason", pa.string()),  # of the last LLM call
        ("wall_seconds", pa.float64()),
        ("policy_version", pa.int32()),  # the iteration whose update the sampling weights came from (0: the start)
    ]
)

JUDGE_COLUMNS = [
    ("raw_reward", pa.float64()),  # the judge's (or workflow's) reward before shaping; null on judge error
    ("is_success", pa.bool_()),
    ("judge_error", pa.string()),  # why the judge failed on this episode (excluded from the update)
    ("judge_seconds", pa.float64()),
    ("length_capped", pa.bool_()),  # generated more than judge.max_response_tokens: correctness reward zeroed
    ("degenerate", pa.bool_()),  # garbage or repetitive output
    ("format_penalty", pa.float64()),
    ("degenerate_penalty", pa.float64()),
    ("reward", pa.float64()),  # what GRPO uses; NaN where the episode is excluded
]

JUDGED_SCHEMA = pa.schema(list(ROLLOUT_SCHEMA) + [pa.field(name, kind) for name, kind in JUDGE_COLUMNS])
