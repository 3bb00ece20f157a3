"""The judge stage: rollout Parquet → judged Parquet, errors isolated, metrics right."""

from __future__ import annotations

import asyncio
import json
import math
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from reinflow.config import JudgeConfig
from reinflow.rollout.episode_schema import JUDGED_SCHEMA, ROLLOUT_SCHEMA
from reinflow.judging.judge import Judge, judge_all, load_judge
from reinflow.judging.judge_rollouts import judge_metrics, judge_rollout_file
from reinflow.config.plugins import PluginError

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def episode(task_id: str, k: int, answer_text: str, *, status: str = "ok", workflow_reward=None,
            format_errors: int = 0, tokens: int = 5) -> dict:
    return {
        "iteration": 1, "task_id": task_id, "episode_id": f"{task_id}#{k}", "group_index": k,
        "question": "What is 2 + 3?", "reference_answer": "5", "task_row": "{}", "status": status,
        "error": None if status == "ok" else "boom", "context_overflow": False, "final_answer": None,
        "workflow_reward": workflow_reward, "judge_input": "{}", "metadata": "{}", "messages": "[]",
        "turns": json.dumps([{"response_text": answer_text}]),
        "samples": [{"token_ids": list(range(tokens)), "loss_mask": [1] * tokens, "logprobs": [-0.1] * tokens}],
        "num_turns": 1, "num_tool_calls": 0, "format_errors": format_errors, "generated_tokens": tokens,
        "finish_reason": "stop", "wall_seconds": 0.1,
    }


def write_rollout(path: Path, rows: list[dict]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows, schema=ROLLOUT_SCHEMA), path)
    return path


class RaisesOnOdd(Judge):
    def compute_reward(self, judge_input_dictionary):
        if "7" in judge_input_dictionary["grouped_steps"][0]["response_text"]:
            raise RuntimeError("judge blew up")
        return 1.0, True


class Hangs(Judge):
    async def compute_reward(self, judge_input_dictionary):
        await asyncio.sleep(60)


class ReturnsGarbage(Judge):
    def compute_reward(self, judge_input_dictionary):
        return "yes"


def test_math_judge_over_a_rollout_file(tmp_path):
    rows = [
        episode("a", 0, "The answer is 5"), episode("a", 1, "It is \\boxed{5}"),      # group a: all right
        episode("b", 0, "I think 50"), episode("b", 1, "5"),                          # group b: mixed
        episode("c", 0, "x", status="failed"), episode("c", 1, "6", format_errors=2),  # failed + wrong
        episode("d", 0, "whatever", workflow_reward=0.25), episode("d", 1, "5"),      # workflow reward
    ]
    config = JudgeConfig(protocol="judges.math_answer->MathAnswerJudge", format_penalty=0.1)
    judge = load_judge(config, ROOT)
    metrics = judge_rollout_file(write_rollout(tmp_path / "r.parquet", rows), tmp_path / "j.parquet", judge, config)
    table = pq.read_table(tmp_path / "j.parquet")
    assert table.schema.equals(JUDGED_SCHEMA)
    judged = {r["episode_id"]: r for r in table.to_pylist()}
    assert [judged[f"a#{k}"]["reward"] for k in (0, 1)] == [1.0, 1.0]
    assert [judged[f"b#{k}"]["reward"] for k in (0, 1)] == [0.0, 1.0]
    assert math.isnan(judged["c#0"]["reward"]) and judged["c#0"]["judge_error"] is None
    assert judged["c#1"]["reward"] == pytest.approx(-0.2) and judged["c#1"]["format_penalty"] == pytest.approx(0.2)
    assert judged["d#0"]["reward"] == 0.25 and judged["d#0"]["raw_reward"] == 0.25
    assert metrics["episodes"] == 8 and metrics["episodes_failed"] == 1
    assert metrics["success_rate"] == pytest.approx(5 / 7)
    # groups: a flat (1,1), b signal, c single valid episode → flat, d signal (0.25 vs 1)
    assert metrics["groups_without_signal_share"] == pytest.approx(2 / 4)
    valid = [-0.2, 0.0, 0.25, 1.0, 1.0, 1.0, 1.0]
    assert metrics["reward_mean"] == pytest.approx(sum(valid) / 7)


@pytest.mark.parametrize(
    "judge_class,error_fragment",
    [(RaisesOnOdd, "RuntimeError: judge blew up"), (Hangs, "timeout after 0.3s"), (ReturnsGarbage, "must return")],
)
def test_a_failing_judge_marks_only_its_episodes(tmp_path, judge_class, error_fragment):
    rows = [episode("a", 0, "5"), episode("a", 1, "7"), episode("b", 0, "7"), episode("b", 1, "5")]
    config = JudgeConfig(protocol=f"test_judge_rollouts:{judge_class.__name__}", timeout_seconds=0.3)
    judge = load_judge(config, ROOT / "tests")
    metrics = judge_rollout_file(write_rollout(tmp_path / "r.parquet", rows), tmp_path / "j.parquet", judge, config)
    judged = pq.read_table(tmp_path / "j.parquet").to_pylist()
    errors = [r for r in judged if r["judge_error"]]
    expected_errors = 2 if judge_class is RaisesOnOdd else 4
    assert len(errors) == expected_errors
    assert all(error_fragment in r["judge_error"] for r in errors)
    assert all(math.isnan(r["reward"]) for r in errors)
    assert metrics["judge_error_rate"] == expected_errors / 4
    assert len(judged) == 4  # nothing lost


def test_judge_all_respects_concurrency():
    in_flight = peak = 0

    class Counting(Judge):
        async def compute_reward(self, judge_input_dictionary):
            nonlocal in_flight, peak
            in_flight += 1
            peak = max(peak, in_flight)
            await asyncio.sleep(0.01)
            in_flight -= 1
            return 1.0, True

    verdicts = asyncio.run(judge_all(Counting(), [{}] * 20, concurrency=3, timeout_seconds=5))
    assert len(verdicts) == 20 and all(v.raw_reward == 1.0 for v in verdicts)
    assert peak == 3


def test_bad_judge_configs_give_one_line_errors():
    with pytest.raises(PluginError, match="cannot import module 'judges.nope'"):
        load_judge(JudgeConfig(protocol="judges.nope->X"), ROOT)
    with pytest.raises(PluginError, match="has no class 'Nope'"):
        load_judge(JudgeConfig(protocol="judges.math_answer->Nope"), ROOT)
    with pytest.raises(PluginError, match="bad judge.options"):
        load_judge(JudgeConfig(protocol="judges.math_answer->MathAnswerJudge", options={"strict": True}), ROOT)


def test_degenerate_thresholds_come_from_the_judge_config(tmp_path):
    looping = episode("a", 0, "5 5 5 5")
    looping["samples"] = [{"token_ids": [7, 8, 9] * 10, "loss_mask": [1] * 30, "logprobs": [-0.1] * 30}]
    rows = [looping, episode("a", 1, "\ufffd\ufffd\ufffd 5")]  # 3 of 5 characters are garbage
    rollout = write_rollout(tmp_path / "r.parquet", rows)
    judge = load_judge(JudgeConfig(protocol="judges.math_answer->MathAnswerJudge"), ROOT)

    def degenerate(**thresholds) -> list[bool]:
        config = JudgeConfig(protocol="judges.math_answer->MathAnswerJudge", degenerate_penalty=0.5, **thresholds)
        judge_rollout_file(rollout, tmp_path / "j.parquet", judge, config)
        judged = pq.read_table(tmp_path / "j.parquet").to_pylist()
        assert [r["degenerate_penalty"] for r in judged] == [0.5 if r["degenerate"] else 0.0 for r in judged]
        return [r["degenerate"] for r in judged]

    assert degenerate() == [False, True]  # 30 tokens: too short to call repetitive by default (64)
    assert degenerate(degenerate_min_tokens=30) == [True, True]
    assert degenerate(degenerate_min_tokens=30, degenerate_repeated_share=0.95) == [False, True]  # 24/27 repeat
    assert degenerate(degenerate_min_tokens=30, degenerate_ngram=28) == [False, True]  # 3 distinct 28-grams of 3
    assert degenerate(degenerate_garbage_share=0.6) == [False, False]


def test_metrics_of_an_empty_or_all_failed_file():
    metrics = judge_metrics([])
    assert metrics["episodes"] == 0 and math.isnan(metrics["reward_mean"])


def test_judge_stage_on_a_file_made_by_the_rollout_runner(tmp_path):
    from test_rollout import _config, _prepare

    from reinflow.run.rollout_runtime import build_runtime, rollout_iteration

    config = _config("quickstart.yaml", tmp_path, "data.source.sizes={train: 10, test: 5}")
    runtime = build_runtime(config, ROOT)
    rollout_path = tmp_path / "rollouts" / "iter_1.parquet"
    rollout_iteration(runtime, _prepare(config, ROOT), 1, 0, rollout_path)
    judge = load_judge(config.judge, ROOT)
    metrics = judge_rollout_file(rollout_path, tmp_path / "judged" / "iter_1.parquet", judge, config.judge)
    judged = pq.read_table(tmp_path / "judged" / "iter_1.parquet").to_pylist()
    assert len(judged) == 6 and metrics["episodes"] == 6
    for row in judged:
        assert row["judge_error"] is None
        assert row["reward"] in (0.0, 1.0)  # the tiny random model's answers: right or wrong, no penalty set
