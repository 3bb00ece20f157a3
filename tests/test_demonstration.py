"""Demonstrations for the warm start: an OpenAI-format conversation rendered for training gives the
same token ids and loss masks as the same conversation replayed through `TunedModel` in a real
AgentScope agent (scripted engine); loss only on assistant tokens; bad rows counted by reason; a
source with nothing usable refused in one line; an earlier run's successes as demonstrations."""

from __future__ import annotations

import copy
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers.scripted_engine import ScriptedEngine
from test_tuned_model import ADD_CALL, FINAL, QWEN_LIKE_TEMPLATE, AddTool, FinalResult, make_agent, make_model, run
from transformers import AutoTokenizer

from reinflow.config import RolloutConfig
from reinflow.config.models import TINY_RANDOM_LLAMA, resolve_model
from reinflow.data.demonstrations import DemonstrationsError, load_demonstrations, load_run_successes
from reinflow.rollout.chat_format import ChatTemplate
from reinflow.rollout.demonstration import render_demonstration
from reinflow.rollout.episode_schema import JUDGED_SCHEMA
from reinflow.rollout.openai_chat import BadDemonstration
from reinflow.rollout.trajectory import build_samples

STRUCTURED = '<tool_call>\n{"name": "GenerateStructuredOutput", "arguments": {"answer": "5"}}\n</tool_call>'
SYSTEM = "You add numbers with the add tool."
QUESTION = "What is 2 + 3?"
ROLLOUT = RolloutConfig(workflow="agents.quickstart_agent:QuickstartAgent", max_model_len=2048,
                        max_new_tokens_per_turn=128, max_turns=4)


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(resolve_model(TINY_RANDOM_LLAMA))


def add_call(call_id: str = "c1", arguments: str = '{"a": 2, "b": 3}', name: str = "add") -> dict:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def demonstration(tools: list[dict], final: dict | None = None, hint: str | None = None) -> dict:
    """system, user, [hint], assistant calling add(2, 3), its result, [hint], the final message."""
    hints = [{"role": "user", "content": hint}] if hint else []
    messages = [
        {"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}, *hints,
        {"role": "assistant", "content": "Let me add.", "tool_calls": [add_call()]},
        {"role": "tool", "tool_call_id": "c1", "content": "5"}, *hints,
        final or {"role": "assistant", "content": FINAL},
    ]
    return {"messages": messages, "tools": tools}


def replay(tokenizer, replies: list[str], **reply_kwargs):
    """The same conversation through a real agent: its TunedModel's turns and the merged samples."""
    model = make_model(ScriptedEngine(tokenizer, replies), tokenizer)
    run(make_agent(model, AddTool()), **reply_kwargs)
    return model, build_samples(model.turns, max_samples=4)


def assert_same(rendered, replayed) -> None:
    assert [s.token_ids for s in rendered] == [s.token_ids for s in replayed]
    assert [s.loss_mask for s in rendered] == [s.loss_mask for s in replayed]
    assert [s.spans for s in rendered] == [s.spans for s in replayed]


# ----------------------------------------------------------------------------- identical to a replay


def test_demonstration_renders_the_ids_and_masks_of_a_replayed_episode(tokenizer):
    model, replayed = replay(tokenizer, [ADD_CALL, FINAL])
    rendered = render_demonstration(demonstration(model.turns[0].tools), ChatTemplate(tokenizer), ROLLOUT)
    assert len(rendered) == 1 and len(model.turns) == 2
    assert_same(rendered, replayed)


def test_structured_final_answer_with_the_agents_hints_renders_identically(tokenizer):
    model, replayed = replay(tokenizer, [ADD_CALL, STRUCTURED], structured_schema=FinalResult)
    hint = model.turns[0].messages[2]["content"]
    assert "GenerateStructuredOutput" in hint and model.turns[0].messages[2]["role"] == "user"
    final = {"role": "assistant", "content": None,
             "tool_calls": [add_call("c2", '{"answer": "5"}', "GenerateStructuredOutput")]}
    rows = [demonstration(model.turns[0].tools, final, hint)]
    rows.append(copy.deepcopy(rows[0]) | {"messages": rows[0]["messages"] + [  # the result of the answer call: no effect
        {"role": "tool", "tool_call_id": "c2", "content": "done"}]})
    for row in rows:
        assert_same(render_demonstration(row, ChatTemplate(tokenizer), ROLLOUT), replayed)


def test_template_with_native_tools_renders_identically(tokenizer):
    qwen_like = copy.deepcopy(tokenizer)
    qwen_like.chat_template = QWEN_LIKE_TEMPLATE
    model, replayed = replay(qwen_like, [ADD_CALL, FINAL])
    assert model.template.native_tools
    assert_same(render_demonstration(demonstration(model.turns[0].tools), ChatTemplate(qwen_like), ROLLOUT), replayed)


def test_loss_is_on_the_assistant_replies_only(tokenizer):
    tools = replay(tokenizer, [ADD_CALL, FINAL])[0].turns[0].tools
    (sample,) = render_demonstration(demonstration(tools), ChatTemplate(tokenizer), ROLLOUT)
    trained = [tokenizer.decode(sample.token_ids[start:end]) for start, end in sample.spans]
    assert trained == [ADD_CALL + "<|im_end|>", FINAL + "<|im_end|>"]
    assert sample.num_trained_tokens == sum(end - start for start, end in sample.spans)
    untrained = tokenizer.decode([t for t, flag in zip(sample.token_ids, sample.loss_mask, strict=True) if not flag])
    for text in (SYSTEM, QUESTION, "<tool_response>\n5\n</tool_response>", "<|im_start|>assistant\n", '"name": "add"'):
        assert text in untrained  # system prompt, user turn, tool result, template and tool block: no loss
    assert set(sample.logprobs) == {0.0}


# ----------------------------------------------------------------------------- bad rows


def bad_rows(tools: list[dict]) -> list[tuple[str, dict]]:
    good = demonstration(tools)
    undeclared = copy.deepcopy(good)
    undeclared["messages"][2]["tool_calls"][0]["function"]["name"] = "multiply"
    broken_arguments = copy.deepcopy(good)
    broken_arguments["messages"][2]["tool_calls"][0]["function"]["arguments"] = '{"a": 2,'
    tags_in_text = copy.deepcopy(good)
    tags_in_text["messages"][-1]["content"] = "<tool_call>oops"
    orphan_result = copy.deepcopy(good)
    orphan_result["messages"][3]["tool_call_id"] = "nobody"
    long_reply = copy.deepcopy(good)
    long_reply["messages"][-1]["content"] = "5 " * 400
    return [
        ("undeclared_tool", undeclared),
        ("malformed_tool_call", broken_arguments),
        ("malformed_tool_call", tags_in_text),
        ("bad_format", orphan_result),
        ("no_assistant_turn", {"messages": good["messages"][:2], "tools": tools}),
        ("reply_too_long", long_reply),
    ]


def test_each_bad_demonstration_is_refused_with_its_reason(tokenizer):
    tools = replay(tokenizer, [ADD_CALL, FINAL])[0].turns[0].tools
    template = ChatTemplate(tokenizer)
    for reason, row in bad_rows(tools):
        with pytest.raises(BadDemonstration) as refused:
            render_demonstration(row, template, ROLLOUT)
        assert refused.value.reason == reason, (reason, refused.value)
    short = ROLLOUT.model_copy(update={"max_model_len": 260})
    with pytest.raises(BadDemonstration, match="too_long: assistant reply 1 ends at token"):
        render_demonstration(demonstration(tools), template, short)
    with pytest.raises(BadDemonstration, match="too_many_turns"):
        render_demonstration(demonstration(tools), template, ROLLOUT.model_copy(update={"max_turns": 1}))


def test_a_file_counts_its_bad_rows_and_keeps_the_good_ones(tokenizer, tmp_path):
    tools = replay(tokenizer, [ADD_CALL, FINAL])[0].turns[0].tools
    lines = [json.dumps(demonstration(tools)), "{not json", json.dumps([1, 2]),
             *(json.dumps(row) for _, row in bad_rows(tools)), json.dumps(demonstration(tools))]
    path = tmp_path / "demos.jsonl"
    path.write_text("\n".join(lines) + "\n")
    found = load_demonstrations(path, ChatTemplate(tokenizer), ROLLOUT)
    assert len(found.conversations) == 2 and found.read == 10
    assert dict(found.skipped) == {"invalid_json": 1, "not_an_object": 1, "undeclared_tool": 1,
                                   "malformed_tool_call": 2, "bad_format": 1, "no_assistant_turn": 1,
                                   "reply_too_long": 1}
    assert found.examples[0].startswith("row 1: invalid_json: ")
    assert "10 rows read, 2 conversations used (8 skipped: bad_format 1, invalid_json 1," in found.summary()


def test_a_file_with_nothing_usable_is_refused_in_one_line(tokenizer, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n{oops\n')
    with pytest.raises(DemonstrationsError) as refused:
        load_demonstrations(path, ChatTemplate(tokenizer), ROLLOUT)
    message = str(refused.value)
    assert "\n" not in message and str(path) in message and "no usable demonstration" in message
    assert "invalid_json 1, no_assistant_turn 1" in message
    with pytest.raises(DemonstrationsError, match="data file not found"):
        load_demonstrations(tmp_path / "missing.jsonl", ChatTemplate(tokenizer), ROLLOUT)


def test_parquet_demonstrations_with_struct_columns(tokenizer, tmp_path):
    """A Parquet file written from the same dicts: absent keys come back as nulls, JSON strings work too."""
    tools = replay(tokenizer, [ADD_CALL, FINAL])[0].turns[0].tools
    row = demonstration(tools)
    path = tmp_path / "demos.parquet"
    pq.write_table(pa.Table.from_pylist([{"messages": row["messages"], "tools": json.dumps(tools)}]), path)
    found = load_demonstrations(path, ChatTemplate(tokenizer), ROLLOUT)
    assert not found.skipped
    assert found.conversations == [render_demonstration(row, ChatTemplate(tokenizer), ROLLOUT)]


# ----------------------------------------------------------------------------- an earlier run's successes


def judged_row(episode: str, status: str, success: bool | None, samples: list[dict]) -> dict:
    return {"episode_id": episode, "task_id": episode, "status": status, "is_success": success, "samples": samples}


def test_an_earlier_runs_successful_episodes_are_demonstrations(tmp_path):
    sample = {"token_ids": [1, 2, 3, 4], "loss_mask": [0, 0, 1, 1], "logprobs": [0.0, 0.0, -0.5, -0.5]}
    long = {"token_ids": list(range(40)), "loss_mask": [0] * 39 + [1], "logprobs": [0.0] * 40}
    rows = [judged_row("a#0", "ok", True, [sample]), judged_row("a#1", "ok", False, [sample]),
            judged_row("a#2", "failed", None, []), judged_row("b#0", "ok", True, [long]),
            judged_row("b#1", "ok", True, [sample | {"loss_mask": [0, 0, 0, 0]}])]
    for iteration in (1, 2):
        path = tmp_path / "judged" / f"iter_{iteration}.parquet"
        path.parent.mkdir(exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows, schema=pa.schema([JUDGED_SCHEMA.field(n) for n in rows[0]])), path)
    found = load_run_successes(tmp_path, max_model_len=32)
    assert [[s.token_ids for s in c] for c in found.conversations] == [[[1, 2, 3, 4]]] * 2
    assert found.conversations[0][0].loss_mask == [0, 0, 1, 1]
    assert dict(found.skipped) == {"not_successful": 4, "too_long": 2, "no_assistant_turn": 2}
    assert len(load_run_successes(tmp_path / "judged" / "iter_1.parquet", max_model_len=64).conversations) == 2
    with pytest.raises(DemonstrationsError, match="neither a judged Parquet file nor a run folder"):
        load_run_successes(tmp_path / "judged" / "missing", max_model_len=64)
    with pytest.raises(DemonstrationsError, match="no usable demonstration"):
        load_run_successes(tmp_path, max_model_len=2)
