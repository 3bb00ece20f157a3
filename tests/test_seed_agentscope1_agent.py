"""The seed tutorial's AgentScope 1.x agent, one line changed, trains through ``rollout.workflow_command``.

``agents/seed_agentscope1_agent.py`` is the seed's 1.x ``ReActAgent`` (``execute_python_code``,
``InMemoryMemory()``, ``reply(msg, structured_model=FinalResult)``, the answer handed to the judge)
with an ``OpenAIChatModel`` pointed at the episode's endpoint URL. It runs in its own venv,
``.venv-agentscope1`` (AgentScope 1.x cannot share reinflow's venv), which this test builds when it
is missing or stale (``scripts/agentscope1_env.sh``, = ``make agentscope1-env``: about a minute from
the registry on the 2-core CI machine, seconds once built; skipped only when the registry cannot be
reached). Then ``reinflow train`` runs 2 iterations on the built-in SmolLM2-135M, and the test checks:

- the run finished whole (every episode ``ok``, checkpoints, MLflow: ``helpers.train_run``);
- every request the agent made was recorded as a turn with the ids the engine got and gave back
  (``helpers.endpoint_recorder``), and the samples the trainer trained on are exactly those ids
  (trained ids == recorded ids; the samples' trained spans are the sampled ids, with their logprobs);
- the requests came from the seed's toolkit (``execute_python_code`` and the structured output's
  ``generate_response`` offered as tools; the 1.x summary call after ``max_iters`` offers none);
- the judge received ``final_answer``, the agent's answer (``helpers.judge_probe``).

Measured on the 2-core CPU machine: see docs/ENDPOINT.md ("The seed's AgentScope 1.x agent").
"""

from __future__ import annotations

import json
import subprocess
import time
from collections import Counter, defaultdict
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers.endpoint_recorder import RECORD_ENV
from helpers.judge_probe import PROBE_ENV
from helpers.train_run import assert_run_is_whole, project, run_dir, train

from reinflow.config.models import SMOLLM2
from reinflow.endpoint.conversation import to_chat_turns
from reinflow.endpoint.requests import parse_request

ROOT = Path(__file__).resolve().parents[1]
VENV_PYTHON = ROOT / ".venv-agentscope1" / "bin" / "python"
AGENT = ROOT / "agents" / "seed_agentscope1_agent.py"
EX_TEMPFAIL = 75  # scripts/agentscope1_env.sh: the registry cannot be reached
OVERRIDES = (
    f"model.path={SMOLLM2}", "model.dtype=float32", "train.lr=1.0e-5",
    "rollout.workflow=null",
    f"rollout.workflow_command=[{VENV_PYTHON}, {AGENT}]",
    "rollout.workflow_options={max_iters: 2, tool_timeout_seconds: 10}",  # 2 ReAct steps + the summary: 3 calls
    "rollout.group_size=2", "rollout.max_turns=3", "rollout.max_new_tokens_per_turn=48",
    "rollout.max_model_len=2048",  # the Hermes tool block of the two tools' schemas alone is ~600 tokens
    "judge.protocol=helpers.judge_probe->FinalAnswerProbe",
    "train.micro_batch_tokens=1024",  # the 49k-vocabulary logits of 4096 tokens took the update to ~12 GB
)


def test_tool_results_with_a_name_are_accepted_as_agentscope1_sends_them():
    """AgentScope 1.x's OpenAIChatFormatter adds the tool's ``name`` to each tool message; it is
    accepted and not rendered (the call id ties a result to its call)."""
    call = {"id": "call_0_0", "type": "function", "function": {"name": "execute_python_code", "arguments": "{}"}}
    messages = [{"role": "user", "content": "2 + 3?"}, {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "call_0_0", "content": "5"}]
    named = [*messages[:2], {**messages[2], "name": "execute_python_code"}]
    plain, with_name = (parse_request(json.dumps({"messages": m}).encode()) for m in (messages, named))
    assert with_name.messages[2].name == "execute_python_code"
    assert to_chat_turns(with_name.messages, lambda _: None, True) == to_chat_turns(plain.messages, lambda _: None, True)


@pytest.fixture(scope="module")
def agentscope1_venv() -> Path:
    """``.venv-agentscope1``, built here if missing or stale (the stamp of the lock)."""
    started = time.monotonic()
    built = subprocess.run(["bash", str(ROOT / "scripts" / "agentscope1_env.sh")], cwd=ROOT,
                           capture_output=True, text=True, timeout=1200)
    seconds = time.monotonic() - started
    output = (built.stdout + built.stderr).strip()
    if built.returncode == EX_TEMPFAIL:
        pytest.skip(f".venv-agentscope1 cannot be built: the package registry is unreachable ({output.splitlines()[-1]})")
    assert built.returncode == 0, f"scripts/agentscope1_env.sh failed (exit {built.returncode}):\n{output[-4000:]}"
    print(f"\n.venv-agentscope1 ready in {seconds:.1f} s: {output.splitlines()[-1]}")
    return VENV_PYTHON


@pytest.mark.slow
def test_seed_agentscope1_agent_trains_through_workflow_command(tmp_path, agentscope1_venv):
    root = project(tmp_path)
    record, probe = tmp_path / "requests.jsonl", tmp_path / "judge.jsonl"
    started = time.monotonic()
    train(root, *OVERRIDES, env={RECORD_ENV: str(record), PROBE_ENV: str(probe)},
          preload="helpers.endpoint_recorder", timeout_s=1500)
    print(f"\nreinflow train, 2 iterations of the AgentScope 1.x agent: {time.monotonic() - started:.1f} s")
    assert_run_is_whole(root, *OVERRIDES)

    requests = defaultdict(list)
    for line in record.read_text().splitlines():
        request = json.loads(line)
        requests[request["episode"]].append(request)
    folder = run_dir(root)
    rows = [row for iteration in (1, 2) for row in pq.read_table(folder / "judged" / f"iter_{iteration}.parquet").to_pylist()]
    assert len(rows) == 2 * 2 * 2  # iterations x tasks x group

    for row in rows:
        assert row["status"] == "ok", row["error"]
        metadata = json.loads(row["metadata"])
        turns = sorted(requests.pop(metadata["endpoint_episode_id"], []), key=lambda request: request["index"])
        assert [turn["index"] for turn in turns] == list(range(row["num_turns"])) and 1 <= row["num_turns"] <= 3
        for turn in turns:  # what the episode recorded is what the engine got and sampled
            assert turn["prompt_ids"] == turn["engine_prompt_ids"]
            assert turn["output_ids"] == turn["engine_output_ids"] and turn["output_logprobs"] == turn["engine_logprobs"]
            assert turn["request_tools"] in ([], ["execute_python_code", "generate_response"])  # [] : the summary
        assert turns[0]["request_tools"] == ["execute_python_code", "generate_response"]  # the seed's toolkit
        assert_trained_ids_are_recorded_ids(row["samples"], turns)
        assert sum(sum(sample["loss_mask"]) for sample in row["samples"]) == row["generated_tokens"] > 0

    judged = [json.loads(line) for line in probe.read_text().splitlines()]
    assert all({"env", "workflow_task", "grouped_steps", "final_answer"} <= set(seen["keys"]) for seen in judged)
    answers = Counter((row["task_id"], row["final_answer"]) for row in rows)
    assert not answers - Counter((seen["task_id"], seen["final_answer"]) for seen in judged)  # every episode's answer
    assert any(row["final_answer"] for row in rows), "no episode gave the judge a final answer"


def assert_trained_ids_are_recorded_ids(samples: list[dict], turns: list[dict]) -> None:
    """The samples are the recorded turns merged (a turn whose prompt extends the sample so far joins
    it): prompt tokens masked, each turn's sampled ids trained with their sampling logprobs."""
    expected: list[dict] = []
    for turn in turns:
        current = expected[-1] if expected else None
        if current is None or turn["prompt_ids"][: len(current["token_ids"])] != current["token_ids"]:
            current = {"token_ids": [], "loss_mask": [], "logprobs": []}
            expected.append(current)
        new_prompt = turn["prompt_ids"][len(current["token_ids"]):]
        current["token_ids"] += new_prompt + turn["output_ids"]
        current["loss_mask"] += [0] * len(new_prompt) + [1] * len(turn["output_ids"])
        current["logprobs"] += [0.0] * len(new_prompt) + turn["output_logprobs"]
    assert [sample["token_ids"] for sample in samples] == [sample["token_ids"] for sample in expected]
    assert [sample["loss_mask"] for sample in samples] == [sample["loss_mask"] for sample in expected]
    for sample, wanted in zip(samples, expected, strict=True):
        assert sample["logprobs"] == pytest.approx(wanted["logprobs"], abs=1e-5)
