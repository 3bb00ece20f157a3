"""Bad and hostile requests to the endpoint get clear 4xx answers and leave the episode intact:
no token, a wrong token, malformed JSON, unknown fields, huge bodies, a flood of requests."""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest
from helpers.endpoint_episode import serve_one
from helpers.scripted_engine import ScriptedEngine
from transformers import AutoTokenizer

from reinflow.config import EndpointConfig
from reinflow.config.models import TINY_RANDOM_LLAMA, resolve_model
from reinflow.endpoint.server import EndpointServer, run_token
from reinflow.errors import ReinflowError
from reinflow.rollout.tuned_model import TunedModel

PROMISE = "bad endpoint requests: clear 4xx, the run intact"
GOOD = {"model": "policy", "messages": [{"role": "user", "content": "What is 2 + 3?"}]}
LIMIT = 16 * 1024


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(resolve_model(TINY_RANDOM_LLAMA))


class SlowEngine(ScriptedEngine):
    """A scripted engine that takes a while per reply, so requests really overlap."""

    async def generate(self, prompt_ids, sampling):
        await asyncio.sleep(0.02)
        return await super().generate(prompt_ids, sampling)


def make_model(tokenizer, replies: int = 1) -> TunedModel:
    return TunedModel(SlowEngine(tokenizer, ["5."] * replies), tokenizer, max_model_len=512, max_new_tokens_per_turn=16)


def served(tokenizer, client, replies: int = 1, **settings):
    server = EndpointServer(EndpointConfig(**({"max_request_bytes": LIMIT} | settings)))
    model = make_model(tokenizer, replies)
    try:
        return serve_one(server, model, lambda url, token: client(url, token, server)), model
    finally:
        server.stop()


def post(url: str, token: str | None, **kwargs) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return httpx.post(f"{url}/chat/completions", headers=headers | kwargs.pop("headers", {}), timeout=30, **kwargs)


@pytest.mark.reliability(PROMISE, tried="no or wrong bearer token, malformed JSON, a non-object body, unknown "
                          "fields, image content, n=2, a huge body (declared and chunked), wrong method, unknown route")
def test_bad_requests_get_clear_errors_and_the_episode_goes_on(tokenizer):
    def client(url, token, server):
        answers = {
            "no token": post(url, None, json=GOOD),
            "wrong token": post(url, "x" * 43, json=GOOD),
            "malformed JSON": post(url, token, content=b'{"messages": [', headers={"Content-Type": "application/json"}),
            "not an object": post(url, token, json=[1, 2]),
            "unknown field": post(url, token, json=GOOD | {"presence_penalty": 0.5}),
            "unknown message field": post(url, token, json={"messages": [{"role": "user", "content": "hi", "x": 1}]}),
            "image content": post(url, token, json={"messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]}),
            "two choices": post(url, token, json=GOOD | {"n": 2}),
            "declared huge": post(url, token, json=GOOD | {"user": "u" * LIMIT}),
            "streamed huge": post(url, token, content=(b"x" * 1024 for _ in range(LIMIT // 1024 + 2))),
            "wrong method": httpx.get(f"{url}/chat/completions", headers={"Authorization": f"Bearer {token}"}),
            "no such route": httpx.get(f"{url}/completions", headers={"Authorization": f"Bearer {token}"}),
        }
        answers["then a good one"] = post(url, token, json=GOOD)
        return answers

    answers, model = served(tokenizer, client)
    status = {name: response.status_code for name, response in answers.items()}
    assert status == {"no token": 401, "wrong token": 401, "malformed JSON": 400, "not an object": 400,
                      "unknown field": 400, "unknown message field": 400, "image content": 400, "two choices": 400,
                      "declared huge": 413, "streamed huge": 413, "wrong method": 405, "no such route": 404,
                      "then a good one": 200}
    errors = {name: response.json()["error"] for name, response in answers.items() if response.status_code != 200}
    assert errors["no token"]["code"] == "invalid_api_key" and errors["no token"]["type"] == "authentication_error"
    assert errors["malformed JSON"]["code"] == "invalid_json"
    assert errors["unknown field"]["message"].startswith("unknown or unsupported field 'presence_penalty'")
    assert errors["unknown message field"]["param"] == "messages.0.x"
    assert errors["image content"]["message"] == "messages.0.content.0.type: Input should be 'text'"
    assert errors["declared huge"]["code"] == "request_too_large" and str(LIMIT) in errors["declared huge"]["message"]
    assert all(set(error) == {"message", "type", "param", "code"} for error in errors.values())
    assert len(model.turns) == 1  # only the good request became a turn
    assert answers["then a good one"].json()["choices"][0]["message"]["content"] == "5."


@pytest.mark.reliability(PROMISE, tried="a flood of 256 concurrent requests on one episode")
def test_a_flood_of_256_concurrent_requests_is_limited_and_the_run_goes_on(tokenizer):
    def client(url, token, server):
        async def flood():
            async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=256)) as http:
                return await asyncio.gather(*(http.post(f"{url}/chat/completions", json=GOOD,
                                                        headers={"Authorization": f"Bearer {token}"})
                                              for _ in range(256)))

        flooded = asyncio.run(flood())
        return [response.status_code for response in flooded], post(url, token, json=GOOD).status_code

    (statuses, after), model = served(tokenizer, client, replies=257, max_concurrent_requests=8)
    assert set(statuses) <= {200, 429} and statuses.count(429) > 0 and statuses.count(200) > 0
    assert after == 200
    assert len(model.turns) == statuses.count(200) + 1  # every answered request is a turn, nothing else


@pytest.mark.reliability(PROMISE, tried="bound to 0.0.0.0: requests without the token, the token in the log")
def test_token_is_required_everywhere_and_never_logged(tokenizer, caplog):
    caplog.set_level(logging.DEBUG)

    def client(url, token, server):
        models = httpx.get(url.split("/episodes/")[0] + "/v1/models")
        statuses = models.status_code, post(url, None, json=GOOD).status_code, post(url, token, json=GOOD).status_code
        return statuses, token

    (statuses, token), _ = served(tokenizer, client, host="0.0.0.0")
    assert statuses == (401, 401, 200)
    assert "not only on loopback" in caplog.text and token not in caplog.text


def test_run_token_comes_from_the_configured_variable_or_is_random(monkeypatch):
    assert run_token(EndpointConfig()) != run_token(EndpointConfig())
    monkeypatch.setenv("RF_TEST_TOKEN", "s" * 40)
    assert run_token(EndpointConfig(token_env="RF_TEST_TOKEN")) == "s" * 40
    monkeypatch.setenv("RF_TEST_TOKEN", "short")
    with pytest.raises(ReinflowError, match="RF_TEST_TOKEN holds a token shorter than 16"):
        run_token(EndpointConfig(token_env="RF_TEST_TOKEN"))
    monkeypatch.delenv("RF_TEST_TOKEN")
    with pytest.raises(ReinflowError, match=r"\$RF_TEST_TOKEN is not set"):
        run_token(EndpointConfig(token_env="RF_TEST_TOKEN"))
