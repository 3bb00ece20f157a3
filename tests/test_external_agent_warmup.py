"""A workflow, judge and demonstrations file written outside the project (in a throwaway project
root, as a user would keep them next to their config) warm-start and train, end to end on the
tiny model: the agent's own tool, its own multi-turn demonstrations in the OpenAI chat format."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers.train_run import mlflow_run, project, run_dir, train

from reinflow.run.checkpoint import list_checkpoints

AGENT = '''
from agentscope.agent import Agent, ReActConfig
from agentscope.message import UserMsg
from agentscope.permission import PermissionBehavior, PermissionDecision
from agentscope.tool import FunctionTool, Toolkit

from reinflow import Task, TunedModel, Workflow, WorkflowOutput

SYSTEM_PROMPT = "You add numbers with the add tool, then say the sum."


async def add(a: int, b: int) -> str:
    """Add two integers.

    Args:
        a (int): The first number.
        b (int): The second number.
    """
    return str(int(a) + int(b))


class AddingAgent(Workflow):
    async def run(self, task: Task, model: TunedModel) -> WorkflowOutput:
        allow = PermissionDecision(behavior=PermissionBehavior.ALLOW, message="pure arithmetic")
        agent = Agent(name="adder", system_prompt=SYSTEM_PROMPT,
                      toolkit=Toolkit(tools=[FunctionTool(add, name="add", permission=allow)]),
                      react_config=ReActConfig(max_iters=2), **model.agent_kwargs())
        reply = await agent.reply(UserMsg("user", task.question))
        answer = reply.get_text_content()
        model.update_judge_input_dictionary(final_answer=answer)
        return WorkflowOutput(final_answer=answer)
'''

JUDGE = '''
class EvenLengthJudge:
    """Any class with compute_reward will do: success when the last reply has an even length."""

    def compute_reward(self, judge_input_dictionary):
        steps = judge_input_dictionary["grouped_steps"]
        success = len(steps[-1]["response_text"] if steps else "") % 2 == 0
        return float(success), success
'''

ADD_TOOL = {"type": "function", "function": {
    "name": "add", "description": "Add two integers.",
    "parameters": {"type": "object", "required": ["a", "b"], "properties": {
        "a": {"type": "integer", "description": "The first number."},
        "b": {"type": "integer", "description": "The second number."}}}}}
SUMS = [(1, 2), (3, 4), (5, 1), (2, 2)]


def demonstration(a: int, b: int) -> dict:
    """Call the tool, read its result, say the sum: the user's own conversation, OpenAI format."""
    call = {"id": "call_0", "type": "function",
            "function": {"name": "add", "arguments": json.dumps({"a": a, "b": b})}}
    return {"tools": [ADD_TOOL], "messages": [
        {"role": "system", "content": "You add numbers with the add tool, then say the sum."},
        {"role": "user", "content": f"Calculate {a} + {b}."},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_0", "content": str(a + b)},
        {"role": "assistant", "content": str(a + b)},
    ]}


def write_user_project(root: Path) -> None:
    (root / "adding_agent.py").write_text(textwrap.dedent(AGENT))
    (root / "even_judge.py").write_text(textwrap.dedent(JUDGE))
    rows = [demonstration(a, b) for a, b in SUMS] + [{"messages": "not a conversation"}]
    (root / "my_demos.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))


@pytest.mark.slow
def test_an_outside_workflow_judge_and_demonstrations_warm_start_and_train(tmp_path):
    root = project(tmp_path)
    write_user_project(root)
    result = train(root, "rollout.workflow=adding_agent->AddingAgent", "judge.protocol=even_judge->EvenLengthJudge",
          "warmup.demonstrations=my_demos.jsonl", "warmup.epochs=2", "warmup.batch_size=2", "warmup.lr=1e-3",
          "rollout.max_turns=2", "rollout.max_new_tokens_per_turn=40", "rollout.max_model_len=512", "train.iterations=1", "train.eval_interval=1",
          "train.eval_pass_k=1", "train.keep_checkpoints=2")  # iter_0 kept to look at
    client, run = mlflow_run(root)

    def history(key: str) -> list[tuple[int, float]]:
        return [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]

    assert history("warmup/conversations") == [(0, float(len(SUMS)))]  # the broken row is counted, not used
    skipped = {key: value for key, value in run.data.metrics.items() if key.startswith("warmup/skipped/")}
    assert skipped == {"warmup/skipped/bad_format": 1.0}, skipped
    assert f"{len(SUMS) + 1} rows read, {len(SUMS)} conversations used (1 skipped" in result.stderr
    assert len(history("warmup/loss")) == 4 and history("warmup/loss")[-1][1] < history("warmup/loss")[0][1]
    folder = run_dir(root)
    assert [i for i, _ in list_checkpoints(folder / "checkpoints")][0] == 0  # the warm start's checkpoint
    judged = pq.read_table(folder / "judged" / "iter_1.parquet").to_pylist()
    assert len(judged) == 2 * 3  # tasks_per_iteration × group_size of the tiny config
    system = json.loads(judged[0]["messages"])[0]["content"]
    assert system.startswith("You add numbers with the add tool") and '"name": "add"' in system
