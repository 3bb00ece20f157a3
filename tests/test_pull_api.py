"""The pull API: remote workers claim episodes, run them through the endpoint, finish or abort them;
a worker that claims and goes silent costs only its episode (a timeout), and the run goes on."""

from __future__ import annotations

import asyncio
import json
import threading

import httpx
import pyarrow.parquet as pq
import pytest
from agents.openai_sdk_agent import solve
from helpers.scripted_engine import ScriptedEngine
from openai import OpenAI
from transformers import AutoTokenizer

from reinflow.config import RolloutConfig
from reinflow.config.models import TINY_RANDOM_LLAMA, resolve_model
from reinflow.endpoint.pull_workflow import PullWorkflow
from reinflow.rollout.runner import plan_episodes, run_rollout
from reinflow.rollout.tuned_model import TunedModel
from reinflow.rollout.workflow import Task

TASKS = [Task(f"t-{k}", f"What is {k} + 3?", str(k + 3)) for k in range(3)]


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(resolve_model(TINY_RANDOM_LLAMA))


def worker(url: str, token: str, log: dict) -> None:
    """Claims three episodes: solves the first with the OpenAI-SDK agent, aborts the second and
    goes silent on the third (a worker that died); then checks the reports that must fail."""
    pull = httpx.Client(base_url=f"{url}/pull/v1", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    claims = [pull.post("/claim", json={"wait_seconds": 10}).json() for _ in range(3)]
    log["claims"] = claims
    first, second, _silent = claims
    text, stats = solve(OpenAI(base_url=first["base_url"], api_key=token, max_retries=0), first["task"]["question"], 2)
    log["finish"] = pull.post(f"/episodes/{first['episode_id']}/finish",
                              json={"final_answer": text, "metadata": stats}).status_code
    log["abort"] = pull.post(f"/episodes/{second['episode_id']}/abort", json={"reason": "tool server down"}).status_code
    log["finish again"] = pull.post(f"/episodes/{first['episode_id']}/finish", json={}).status_code
    log["bad finish"] = pull.post(f"/episodes/{_silent['episode_id']}/finish", json={"answer": 1}).json()
    log["empty queue"] = pull.post("/claim", json={"wait_seconds": 0}).status_code


def test_remote_worker_claims_finishes_aborts_and_dies(tokenizer, tmp_path):
    rollout = RolloutConfig(workflow_pull=True, workflow_options={"max_steps": 2}, max_model_len=512,
                            max_new_tokens_per_turn=16)
    workflow = PullWorkflow.from_rollout_config(rollout)
    workflow.start()
    log: dict = {}
    thread = threading.Thread(target=worker, args=(workflow.server.url, workflow.server.token, log))
    thread.start()
    make_model = lambda seed: TunedModel(ScriptedEngine(tokenizer, ["The answer is 3."]), tokenizer,  # noqa: E731
                                         max_model_len=512, max_new_tokens_per_turn=16, seed=seed)
    output = tmp_path / "rollout.parquet"
    try:
        asyncio.run(run_rollout(workflow, plan_episodes(TASKS, 1, 0, 1), make_model, output, iteration=1,
                                concurrency=3, episode_timeout_seconds=8.0, max_samples_per_episode=2))
    finally:
        thread.join(timeout=60)
        workflow.close()

    claims = log["claims"]
    assert [claim["task"]["task_id"] for claim in claims] == ["t-0", "t-1", "t-2"]
    assert claims[0]["task"]["options"] == {"max_steps": 2}
    assert claims[0]["base_url"] == f"{workflow.server.url}/episodes/{claims[0]['episode_id']}/v1"
    assert (log["finish"], log["abort"], log["finish again"], log["empty queue"]) == (200, 200, 404, 204)
    assert log["bad finish"]["error"]["param"] == "answer"  # refused, the episode still waited for its report
    rows = {row["task_id"]: row for row in pq.read_table(output).to_pylist()}
    assert (rows["t-0"]["status"], rows["t-0"]["final_answer"], rows["t-0"]["num_turns"]) == ("ok", "The answer is 3.", 1)
    assert json.loads(rows["t-0"]["metadata"])["ended_by"] == "answer" and rows["t-0"]["samples"]
    assert (rows["t-1"]["status"], rows["t-1"]["error"]) == ("failed", "EpisodeAborted: tool server down")
    assert (rows["t-2"]["status"], rows["t-2"]["error"]) == ("timeout", "episode took longer than 8s")
