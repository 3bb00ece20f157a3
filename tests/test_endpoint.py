"""The OpenAI-compatible endpoint: real uvicorn on loopback, the OpenAI SDK and httpx as clients.

The scripted engine (``tests/helpers``) makes the "policy" say exactly what a test needs (a tool
call, a malformed one); the sequential engine runs the tiny random Llama for real generations.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import torch
from helpers.endpoint_episode import TASK, serve, serve_one
from helpers.scripted_engine import ScriptedEngine
from helpers.sequential_engine import SequentialEngine
from openai import BadRequestError, NotFoundError, OpenAI
from transformers import AutoModelForCausalLM, AutoTokenizer

from reinflow.config import EndpointConfig
from reinflow.config.models import TINY_RANDOM_LLAMA, resolve_model
from reinflow.endpoint.server import EndpointServer
from reinflow.rollout.runner import EpisodePlan, episode_row
from reinflow.rollout.trajectory import build_samples
from reinflow.rollout.tuned_model import TunedModel
from reinflow.rollout.workflow import WorkflowOutput

TOOLS = [{"type": "function", "function": {
    "name": "add", "description": "Add two integers.",
    "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}},
}}]
ADD_CALL = 'Let me add.\n<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>'
FINAL = "The sum is 5."
QUESTION = [{"role": "system", "content": "You add numbers."}, {"role": "user", "content": "What is 2 + 3?"}]


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(resolve_model(TINY_RANDOM_LLAMA))


@pytest.fixture()
def server():
    server = EndpointServer(EndpointConfig(max_request_bytes=64 * 1024, max_concurrent_requests=8))
    yield server
    server.stop()


def make_model(engine, tokenizer, **limits) -> TunedModel:
    return TunedModel(engine, tokenizer, **({"max_model_len": 2048, "max_new_tokens_per_turn": 128} | limits), seed=3)


def sdk(base_url: str, token: str) -> OpenAI:
    return OpenAI(base_url=base_url, api_key=token, max_retries=0)


def add_tool_conversation(base_url: str, token: str) -> list:
    """The agent: ask, run the add call, send the SDK's own message object and the result back."""
    client, messages = sdk(base_url, token), list(QUESTION)
    first = client.chat.completions.create(model="policy", messages=messages, tools=TOOLS)
    message = first.choices[0].message
    messages.append(message)
    for call in message.tool_calls:
        arguments = json.loads(call.function.arguments)
        messages.append({"role": "tool", "tool_call_id": call.id, "content": str(arguments["a"] + arguments["b"])})
    second = client.chat.completions.create(model="policy", messages=messages, tools=TOOLS)
    return [first, second]


# ----------------------------------------------------------------------------- token exactness


def test_tool_call_conversation_through_the_sdk_has_zero_drift(tokenizer, server):
    engine = ScriptedEngine(tokenizer, [ADD_CALL, FINAL])
    model = make_model(engine, tokenizer)
    first, second = serve_one(server, model, add_tool_conversation)

    assert first.choices[0].finish_reason == "tool_calls"
    (call,) = first.choices[0].message.tool_calls
    assert (call.id, call.function.name, json.loads(call.function.arguments)) == ("call_0_0", "add", {"a": 2, "b": 3})
    assert first.choices[0].message.content == "Let me add."
    assert second.choices[0].message.content == FINAL and second.choices[0].finish_reason == "stop"
    assert first.usage.completion_tokens == len(engine.generations[0].token_ids)

    turn1, turn2 = model.turns
    assert [turn1.prompt_ids, turn2.prompt_ids] == engine.prompts  # what was recorded is what the engine got
    assert [turn1.output_ids, turn2.output_ids] == [g.token_ids for g in engine.generations]
    prefix = turn1.prompt_ids + turn1.output_ids
    assert turn2.extends_previous and turn2.prompt_ids[: len(prefix)] == prefix
    assert tokenizer.decode(turn2.prompt_ids[len(prefix):]) == (
        "\n<|im_start|>user\n<tool_response>\n5\n</tool_response><|im_end|>\n<|im_start|>assistant\n")
    assert '<tools>\n{"type": "function", "function": {"name": "add"' in turn1.prompt_text  # Hermes block

    (sample,) = build_samples(model.turns, max_samples=4)  # the trainer's sample: 0 drift
    assert sample.token_ids == turn2.prompt_ids + turn2.output_ids
    assert [sample.token_ids[s:e] for s, e in sample.spans] == [turn1.output_ids, turn2.output_ids]
    assert [sample.logprobs[s:e] for s, e in sample.spans] == [turn1.output_logprobs, turn2.output_logprobs]
    im_end, im_start = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|im_start|>"])
    tool_call_ids = tokenizer.encode("<tool_call>", add_special_tokens=False)
    first_span = sample.token_ids[sample.spans[0][0]:sample.spans[0][1]]
    assert first_span[-1] == im_end and sample.loss_mask[sample.spans[0][1] - 1] == 1  # the sampled EOS is trained
    assert any(first_span[i:i + len(tool_call_ids)] == tool_call_ids for i in range(len(first_span)))
    assert sample.loss_mask[sample.token_ids.index(im_start, sample.spans[0][1])] == 0  # template tokens are not

    row = episode_row(EpisodePlan(TASK, 0, 3), model, WorkflowOutput(final_answer="5"), 1, "ok", None, 0.1, 4)
    steps = json.loads(row["turns"])
    assert [step["tool_calls"] for step in steps] == [[{"id": "call_0_0", "name": "add", "arguments": {"a": 2, "b": 3}}], []]
    assert row["samples"][0]["token_ids"] == sample.token_ids and row["format_errors"] == 0


def test_real_generations_are_recorded_exactly_and_turns_merge(tokenizer, server):
    policy = AutoModelForCausalLM.from_pretrained(resolve_model(TINY_RANDOM_LLAMA), dtype=torch.float32)
    engine = SequentialEngine(policy, eos_token_ids={tokenizer.eos_token_id})
    model = make_model(engine, tokenizer, max_new_tokens_per_turn=10)

    def chat(base_url, token):
        client, messages = sdk(base_url, token), list(QUESTION)
        replies = []
        for follow_up in ("Are you sure?", "Say it again."):
            reply = client.chat.completions.create(model="policy", messages=messages, logprobs=True)
            replies.append(reply)
            messages += [reply.choices[0].message, {"role": "user", "content": follow_up}]
        return replies

    replies = serve_one(server, model, chat)
    assert [t.output_ids for t in model.turns] == [g.token_ids for g in engine.generations]
    assert [[lp.logprob for lp in r.choices[0].logprobs.content] for r in replies] == [g.logprobs for g in engine.generations]
    assert model.turns[1].extends_previous
    (sample,) = build_samples(model.turns, max_samples=2)
    assert sample.token_ids == model.turns[1].prompt_ids + model.turns[1].output_ids
    assert [sample.token_ids[s:e] for s, e in sample.spans] == [t.output_ids for t in model.turns if t.output_ids]


def test_stop_string_cuts_the_reply_and_the_next_turn_still_extends(tokenizer, server):
    engine = ScriptedEngine(tokenizer, ["Answer: 5\nI could go on and on.", FINAL])
    model = make_model(engine, tokenizer)

    def client(base_url, token):
        api, messages = sdk(base_url, token), list(QUESTION)
        first = api.chat.completions.create(model="policy", messages=messages, stop=["\n"])
        messages += [first.choices[0].message, {"role": "user", "content": "Thanks."}]
        return first, api.chat.completions.create(model="policy", messages=messages)

    first, _ = serve_one(server, model, client)
    assert first.choices[0].message.content == "Answer: 5" and first.choices[0].finish_reason == "stop"
    turn1, turn2 = model.turns
    assert tokenizer.decode(turn1.output_ids).startswith("Answer: 5\n") and "go on" not in turn1.response_text
    assert turn1.output_ids == engine.generations[0].token_ids[: len(turn1.output_ids)]  # a prefix of the sampled ids
    assert turn2.extends_previous and len(build_samples(model.turns, max_samples=2)) == 1


def test_malformed_call_is_counted_and_returned_as_text(tokenizer, server):
    bad = '<tool_call>{"name": "add", "arguments": {"a": 2,}}</tool_call>'
    model = make_model(ScriptedEngine(tokenizer, [bad]), tokenizer)
    reply = serve_one(server, model, lambda url, token: sdk(url, token).chat.completions.create(
        model="policy", messages=QUESTION, tools=TOOLS))
    message = reply.choices[0].message
    assert message.tool_calls is None and message.content == bad and reply.choices[0].finish_reason == "stop"
    assert model.format_errors == 1 and model.turns[0].format_errors[0].startswith("invalid JSON")


def test_streaming_gets_the_same_reply_as_one_chunk(tokenizer, server):
    model = make_model(ScriptedEngine(tokenizer, [ADD_CALL]), tokenizer)

    def client(base_url, token):
        stream = sdk(base_url, token).chat.completions.create(model="policy", messages=QUESTION, tools=TOOLS,
                                                              stream=True, stream_options={"include_usage": True})
        return list(stream)

    chunks = serve_one(server, model, client)
    assert chunks[0].choices[0].delta.content == "Let me add."
    assert chunks[0].choices[0].delta.tool_calls[0].function.name == "add"
    assert chunks[1].choices[0].finish_reason == "tool_calls" and chunks[2].usage.completion_tokens > 0


# ----------------------------------------------------------------------------- episodes apart


def test_episodes_are_isolated_and_a_finished_one_is_404(tokenizer, server):
    models = [make_model(ScriptedEngine(tokenizer, [f"Reply {k}."] * 2), tokenizer) for k in range(2)]

    def client(base_url, token):
        reply = sdk(base_url, token).chat.completions.create(model="policy", messages=QUESTION)
        return base_url, reply.choices[0].message.content

    (url_a, text_a), (url_b, text_b) = asyncio.run(serve(server, [(models[0], client), (models[1], client)]))
    assert (text_a, text_b) == ("Reply 0.", "Reply 1.") and url_a != url_b
    assert [len(model.turns) for model in models] == [1, 1]
    with pytest.raises(NotFoundError) as raised:  # the episode finished: its URL is gone
        sdk(url_a, server.token).chat.completions.create(model="policy", messages=QUESTION)
    assert raised.value.code == "episode_not_found" and "finished, timed out or never existed" in str(raised.value)
    unknown = url_a.replace(url_a.split("/")[-2], "ep-000000000000000000000000")
    response = httpx.post(f"{unknown}/chat/completions", json={"messages": QUESTION},
                          headers={"Authorization": f"Bearer {server.token}"})
    assert response.status_code == 404 and response.json()["error"]["type"] == "not_found_error"
    assert [len(model.turns) for model in models] == [1, 1]


# ----------------------------------------------------------------------------- budgets


@pytest.mark.parametrize(("limits", "settings", "code"), [
    ({"max_turns": 1}, {}, "turn_limit_exceeded"),
    ({"max_model_len": 60}, {}, "context_length_exceeded"),
    ({}, {"max_episode_tokens": 3}, "token_budget_exceeded"),
])
def test_budget_exceeded_is_an_openai_error_the_agent_can_read(tokenizer, limits, settings, code):
    server = EndpointServer(EndpointConfig(**settings))
    model = make_model(ScriptedEngine(tokenizer, [FINAL, FINAL]), tokenizer, **limits)
    too_long = [{"role": "user", "content": "word " * 80}]

    def client(base_url, token):
        api = sdk(base_url, token)
        if code != "context_length_exceeded":
            api.chat.completions.create(model="policy", messages=QUESTION)
        with pytest.raises(BadRequestError) as raised:
            api.chat.completions.create(model="policy", messages=too_long if code == "context_length_exceeded" else QUESTION)
        return raised.value

    try:
        error = serve_one(server, model, client)
    finally:
        server.stop()
    assert error.code == code and error.status_code == 400 and "end the episode" in error.message
    assert error.body["type"] == "invalid_request_error"
    assert model.context_overflow == (code == "context_length_exceeded")
