"""Broken warm-start demonstrations: each bad row skipped and counted by its reason, the good rows
around it kept; a file (or an earlier run) with nothing usable refused in one line naming it.

The library chain is the one the warm start runs (``reinflow.run.warmup.warm_start_samples``):
``load_demonstrations`` for ``warmup.demonstrations``, ``load_run_successes`` for
``warmup.from_run``, on the tiny random Llama's real chat template. No training step is needed.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer

from reinflow.config import RolloutConfig
from reinflow.config.models import TINY_RANDOM_LLAMA, resolve_model
from reinflow.data.demonstrations import DemonstrationsError, load_demonstrations, load_run_successes
from reinflow.rollout.chat_format import ChatTemplate
from reinflow.rollout.episode_schema import JUDGED_SCHEMA

PROMISE = "bad demonstrations: counted skip by reason, good rows kept, or one line naming the file"
ROLLOUT = RolloutConfig(workflow="agents.quickstart_agent:QuickstartAgent", max_model_len=1024,
                        max_new_tokens_per_turn=64, max_turns=3)
TOOLS = [{"type": "function", "function": {
    "name": "add", "description": "Add two numbers.",
    "parameters": {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}}}}]


@pytest.fixture(scope="module")
def template() -> ChatTemplate:
    return ChatTemplate(AutoTokenizer.from_pretrained(resolve_model(TINY_RANDOM_LLAMA)))


def good_row() -> dict:
    """system, user, an assistant call of add(2, 3), its result, the final answer."""
    return {"tools": copy.deepcopy(TOOLS), "messages": [
        {"role": "system", "content": "You add numbers with the add tool."},
        {"role": "user", "content": "What is 2 + 3?"},
        {"role": "assistant", "content": "Let me add.", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "5"},
        {"role": "assistant", "content": "The answer is 5."},
    ]}


def changed(edit) -> bytes:
    """The good row with ``edit(row)`` applied, as one JSONL line."""
    row = good_row()
    edit(row)
    return json.dumps(row).encode()


def call(row: dict) -> dict:
    return row["messages"][2]["tool_calls"][0]


def set_key(target, key, value):
    target[key] = value


def extra_assistant_turns(row: dict) -> None:
    row["messages"] += [{"role": "user", "content": "Again?"}, {"role": "assistant", "content": "5."}] * 2


# (id, the bad JSONL line, its counted reason)
BAD_ROWS = [
    ("broken_json_line", b'{"messages": [{"role": "user", "content": "hi"', "invalid_json"),
    ("not_an_object", b"[1, 2, 3]", "not_an_object"),
    ("a_json_string", b'"just a string"', "not_an_object"),
    ("invalid_utf8", b'{"messages": "caf\xe9"}', "invalid_utf8"),
    ("blank_line", b"   ", "blank_line"),
    ("no_messages_key", changed(lambda r: r.pop("messages")), "bad_format"),
    ("messages_not_a_list", changed(lambda r: set_key(r, "messages", {"role": "user"})), "bad_format"),
    ("messages_a_non_json_string", changed(lambda r: set_key(r, "messages", "hello there")), "bad_format"),
    ("messages_empty", changed(lambda r: set_key(r, "messages", [])), "bad_format"),
    ("message_not_an_object", changed(lambda r: r["messages"].insert(1, "hi")), "bad_format"),
    ("unknown_role", changed(lambda r: set_key(r["messages"][1], "role", "robot")), "bad_format"),
    ("message_without_role", changed(lambda r: r["messages"][1].pop("role")), "bad_format"),
    ("image_content", changed(lambda r: set_key(r["messages"][1], "content", [
        {"type": "image_url", "image_url": {"url": "http://x/y.png"}}])), "bad_format"),
    ("tools_not_a_list", changed(lambda r: set_key(r, "tools", {"add": True})), "bad_format"),
    ("tool_without_a_name", changed(lambda r: r["tools"][0]["function"].pop("name")), "bad_format"),
    ("tool_calls_not_a_list", changed(lambda r: set_key(r["messages"][2], "tool_calls", "add(2, 3)")), "bad_format"),
    ("tool_call_without_function", changed(lambda r: call(r).pop("function")), "bad_format"),
    ("undeclared_tool", changed(lambda r: set_key(call(r)["function"], "name", "multiply")), "undeclared_tool"),
    ("arguments_not_json", changed(lambda r: set_key(call(r)["function"], "arguments", '{"a": 2,')),
     "malformed_tool_call"),
    ("arguments_a_list", changed(lambda r: set_key(call(r)["function"], "arguments", "[2, 3]")),
     "malformed_tool_call"),
    ("tool_call_tags_in_content", changed(lambda r: set_key(r["messages"][4], "content", "<tool_call>oops")),
     "malformed_tool_call"),
    ("tool_result_answering_no_call", changed(lambda r: set_key(r["messages"][3], "tool_call_id", "nobody")),
     "bad_format"),
    ("empty_assistant_message", changed(lambda r: set_key(r["messages"][4], "content", "")), "bad_format"),
    ("reply_over_max_new_tokens_per_turn", changed(lambda r: set_key(r["messages"][4], "content", "5 " * 300)),
     "reply_too_long"),
    ("conversation_over_max_model_len", changed(lambda r: set_key(r["messages"][1], "content", "What is 2 + 3? " * 400)),
     "too_long"),
    ("no_assistant_turn", changed(lambda r: set_key(r, "messages", r["messages"][:2])), "no_assistant_turn"),
    ("more_assistant_calls_than_max_turns", changed(extra_assistant_turns), "too_many_turns"),
]


@pytest.mark.reliability(PROMISE, tried="one bad row between two good ones: broken JSON, not an object, invalid "
                         "UTF-8, a blank line, messages missing/not a list/empty, unknown role, image content, bad "
                         "tools, an undeclared tool, tool-call arguments not JSON or not an object, tool-call tags in "
                         "a reply, an orphan tool result, an empty reply, a reply over max_new_tokens_per_turn, a "
                         "conversation over max_model_len, no assistant turn, more calls than max_turns")
@pytest.mark.parametrize(("line", "reason"), [r[1:] for r in BAD_ROWS], ids=[r[0] for r in BAD_ROWS])
def test_a_bad_row_is_counted_by_reason_and_the_good_rows_kept(template, tmp_path: Path, line: bytes,
                                                               reason: str) -> None:
    path = tmp_path / "demos.jsonl"
    good = json.dumps(good_row()).encode()
    path.write_bytes(b"\n".join([good, line, good]) + b"\n")
    found = load_demonstrations(path, template, ROLLOUT)
    assert found.read == 3 and len(found.conversations) == 2
    assert dict(found.skipped) == {reason: 1}, found.examples
    assert found.examples == [found.examples[0]] and found.examples[0].startswith(f"row 1: {reason}: ")
    assert found.summary() == f"{path}: 3 rows read, 2 conversations used (1 skipped: {reason} 1)"
    assert found.conversations[0] == found.conversations[1]  # the good rows around it are rendered whole


def write_parquet(path: Path, rows: list[dict]) -> None:
    pq.write_table(pa.Table.from_pylist(rows), path)


# (id, file name, bytes or Parquet rows, fragments of the one-line error)
REFUSED = [
    ("empty_file", "demos.jsonl", b"", ["no usable demonstration in", "demos.jsonl: 0 rows read"]),
    ("blank_lines_only", "demos.jsonl", b"\n \n\n", ["3 rows read, 0 conversations used (3 skipped: blank_line 3)"]),
    ("every_row_bad", "demos.jsonl", b'{oops\n[1]\n{"messages": [{"role": "user", "content": "hi"}]}\n',
     ["3 rows read", "invalid_json 1, no_assistant_turn 1, not_an_object 1", "first: row 0: invalid_json"]),
    ("parquet_with_the_wrong_columns", "demos.parquet", [{"question": "1+1", "answer": "2"}] * 2,
     ["demos.parquet: 2 rows read", "bad_format 2", "'messages' must be a list of objects"]),
    ("parquet_with_no_rows", "demos.parquet", pa.table({"messages": pa.array([], pa.string())}),
     ["no usable demonstration in", "0 rows read"]),
    ("garbage_parquet", "demos.parquet", b"PAR1 this is not parquet", ["demonstrations: cannot read Parquet file"]),
    ("missing_file", "missing.jsonl", None, ["demonstrations: data file not found", "missing.jsonl"]),
    ("a_folder", "folder.jsonl", "folder", ["demonstrations: data file not found", "folder.jsonl"]),
]


@pytest.mark.reliability(PROMISE, tried="warmup.demonstrations: an empty file, blank lines only, every row bad, a "
                         "Parquet file with the wrong columns or no rows, garbage Parquet, a missing file, a folder")
@pytest.mark.parametrize(("name", "content", "fragments"), [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_a_file_with_nothing_usable_is_one_line_naming_it(template, tmp_path: Path, name: str, content,
                                                          fragments: list[str]) -> None:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, list):
        write_parquet(path, content)
    elif isinstance(content, pa.Table):
        pq.write_table(content, path)
    elif content == "folder":
        path.mkdir()
    with pytest.raises(DemonstrationsError) as refused:
        load_demonstrations(path, template, ROLLOUT)
    message = str(refused.value)
    assert "\n" not in message and len(message) < 800 and str(path) in message, message
    for fragment in fragments:
        assert fragment in message, message


# ----------------------------------------------------------------------------- warmup.from_run


def judged(status: str, success: bool | None, token_ids: list[int], loss_mask: list[int]) -> dict:
    sample = {"token_ids": token_ids, "loss_mask": loss_mask, "logprobs": [0.0] * len(token_ids)}
    return {"episode_id": "e", "task_id": "t", "status": status, "is_success": success, "samples": [sample]}


def write_judged(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=pa.schema([JUDGED_SCHEMA.field(n) for n in rows[0]])), path)


OK = judged("ok", True, [1, 2, 3, 4], [0, 0, 1, 1])
SKIPPED_RUNS = [
    ("failed_episode", judged("failed", None, [1, 2], [0, 1]), "not_successful"),
    ("unsuccessful_episode", judged("ok", False, [1, 2, 3, 4], [0, 0, 1, 1]), "not_successful"),
    ("no_generated_token", judged("ok", True, [1, 2, 3, 4], [0, 0, 0, 0]), "no_assistant_turn"),
    ("loss_mask_not_fitting", judged("ok", True, [1, 2, 3, 4], [0, 1]), "bad_format"),
    ("sample_over_max_model_len", judged("ok", True, list(range(40)), [0] * 39 + [1]), "too_long"),
]


@pytest.mark.reliability(PROMISE, tried="warmup.from_run: a failed or unsuccessful episode, one with no generated "
                         "token, a loss mask that does not fit, a sample over max_model_len")
@pytest.mark.parametrize(("row", "reason"), [r[1:] for r in SKIPPED_RUNS], ids=[r[0] for r in SKIPPED_RUNS])
def test_an_earlier_runs_unusable_episode_is_counted_and_its_successes_kept(tmp_path: Path, row: dict,
                                                                          reason: str) -> None:
    write_judged(tmp_path / "run" / "judged" / "iter_1.parquet", [OK, row, OK])
    found = load_run_successes(tmp_path / "run", max_model_len=32)
    assert found.read == 3 and dict(found.skipped) == {reason: 1}
    assert [[s.token_ids for s in c] for c in found.conversations] == [[[1, 2, 3, 4]]] * 2


RUNS_REFUSED = [
    ("no_judged_files", None, "is neither a judged Parquet file nor a run folder"),
    ("judged_file_without_samples", [{"episode_id": "e", "status": "ok"}], "cannot read judged episodes"),
    ("garbage_judged_file", b"PAR1 garbage", "cannot read judged episodes"),
    ("no_successful_episode", [judged("ok", False, [1, 2], [0, 1])] * 2,
     "no usable demonstration in {run}: 2 rows read, 0 conversations used (2 skipped: not_successful 2)"),
]


@pytest.mark.reliability(PROMISE, tried="warmup.from_run: a folder without judged files, a judged file without the "
                         "episode columns, garbage Parquet, a run with no successful episode")
@pytest.mark.parametrize(("content", "fragment"), [r[1:] for r in RUNS_REFUSED], ids=[r[0] for r in RUNS_REFUSED])
def test_an_earlier_run_with_nothing_usable_is_one_line_naming_it(tmp_path: Path, content, fragment: str) -> None:
    run = tmp_path / "run"
    (run / "judged").mkdir(parents=True)
    if isinstance(content, bytes):
        (run / "judged" / "iter_1.parquet").write_bytes(content)
    elif content is not None and "samples" in content[0]:
        write_judged(run / "judged" / "iter_1.parquet", content)
    elif content is not None:
        write_parquet(run / "judged" / "iter_1.parquet", content)
    with pytest.raises(DemonstrationsError) as refused:
        load_run_successes(run, max_model_len=32)
    message = str(refused.value)
    assert "\n" not in message and str(run) in message and fragment.format(run=run) in message, message
