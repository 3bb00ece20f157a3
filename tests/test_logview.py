"""The logview's data layer and HTTP API: runs and episode sets on disk, the episode table (sorting,
filtering, group-relative advantages), one episode in full, caching on file changes, the reward
curve, and the API's safety (model output returned verbatim as JSON, never as HTML; loopback hosts
only)."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from starlette.testclient import TestClient

from reinflow.config import load_config
from reinflow.rollout.episode_schema import JUDGED_SCHEMA, ROLLOUT_SCHEMA
from reinflow.logview import episodes
from reinflow.logview.app import create_app
from reinflow.logview.cache import FileCache
from reinflow.logview.runs import NotFound, episode_sets, find_run, list_runs
from reinflow.logview.server import LOOPBACK_NAMES, exposure_warning, is_loopback
from reinflow.logview.settings import LogviewSettings
from reinflow.logview.views import Viewer
from reinflow.run.run_state import RunInfo

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = "<script>alert(1)</script>"


def episode(task: str, k: int, reward: float | None, *, success: bool | None = None, format_errors: int = 0,
            status: str = "ok", judge_error: str | None = None, reply: str = "42", tokens: int = 3) -> dict:
    """One judged row; its sample is 2 prompt tokens then ``tokens`` generated ones."""
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": f"question {task}"},
                {"role": "assistant", "content": reply}]
    turns = [{"index": 0, "response_text": reply, "tool_calls": [], "format_errors": [], "finish_reason": "stop",
              "prompt_tokens": 2, "output_tokens": tokens, "extends_previous": False}]
    return {
        "iteration": 1, "task_id": task, "episode_id": f"{task}#{k}", "group_index": k, "question": f"question {task}",
        "reference_answer": "42", "task_row": "{}", "status": status, "error": None if status == "ok" else "boom",
        "context_overflow": False, "final_answer": reply, "workflow_reward": None, "judge_input": "{}", "metadata": "{}",
        "messages": json.dumps(messages), "turns": json.dumps(turns),
        "samples": [{"token_ids": [1, 2, *range(100, 100 + tokens)], "loss_mask": [0, 0] + [1] * tokens,
                     "logprobs": [0.0, 0.0] + [-0.25] * tokens}],
        "num_turns": 1, "num_tool_calls": 0, "format_errors": format_errors, "answered_before_tool_result": False,
        "generated_tokens": tokens, "finish_reason": "stop", "wall_seconds": 0.5,
        "raw_reward": None if reward is None or math.isnan(reward) else reward,
        "is_success": success if success is not None else (None if reward is None or math.isnan(reward) else reward > 0),
        "judge_error": judge_error, "judge_seconds": 0.01, "length_capped": False, "degenerate": False,
        "format_penalty": 0.0, "degenerate_penalty": 0.0, "reward": math.nan if reward is None else reward,
    }


GROUPS = [
    episode("a", 0, 1.0), episode("a", 1, 0.0), episode("a", 2, 0.0),                      # advantages 2/3, -1/3, -1/3
    episode("b", 0, 0.5, success=False, format_errors=2), episode("b", 1, None, judge_error="judge timed out"),
    episode("b", 2, 1.5),                                                                    # 1.0 -> -0.5, +0.5
    episode("c", 0, None, status="failed"), episode("c", 1, 1.0, reply=SCRIPT),             # lone valid: 0
]


def write(path: Path, rows: list[dict], schema: pa.Schema = JUDGED_SCHEMA) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist([{k: r.get(k) for k in schema.names} for r in rows], schema=schema), path)
    return path


def make_run(runs: Path, name: str = "run-20990101-000000", normalize_std: bool = False) -> Path:
    """A run folder as the training flow writes it: run.json, experiment.yaml, judged iteration 1."""
    config = load_config(ROOT / "tests" / "configs" / "tiny_e2e.yaml", [f"train.normalize_advantage_std={normalize_std}"])
    run_dir = runs / config.experiment / name
    RunInfo(name, config.experiment, config.fingerprint(), None, "running", 0.0).save(run_dir)
    (run_dir / "experiment.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    write(run_dir / "judged" / "iter_1.parquet", GROUPS)
    return run_dir


@pytest.fixture
def viewer(tmp_path) -> Viewer:
    make_run(tmp_path / "runs")
    return Viewer(LogviewSettings(runs_dir=tmp_path / "runs"))


RUN = "tiny_e2e/run-20990101-000000"


def test_advantages_are_group_relative_and_none_where_excluded(viewer):
    rows = {row["episode_id"]: row for row in viewer.table(RUN, "iter_1")["rows"]}
    assert rows["a#0"]["advantage"] == pytest.approx(2 / 3)
    assert rows["a#1"]["advantage"] == rows["a#2"]["advantage"] == pytest.approx(-1 / 3)
    assert rows["b#0"]["advantage"] == pytest.approx(-0.5) and rows["b#2"]["advantage"] == pytest.approx(0.5)
    assert rows["b#1"]["advantage"] is None and rows["b#1"]["reward"] is None  # judge error: NaN -> None
    assert rows["c#0"]["advantage"] is None and rows["c#1"]["advantage"] == 0.0  # a group of one valid episode


def test_advantages_follow_the_runs_std_normalisation(tmp_path):
    make_run(tmp_path / "runs", normalize_std=True)
    rows = {r["episode_id"]: r for r in Viewer(LogviewSettings(runs_dir=tmp_path / "runs")).table(RUN, "iter_1")["rows"]}
    # group a: rewards 1, 0, 0 -> mean 1/3, unbiased std 0.57735
    assert rows["a#0"]["advantage"] == pytest.approx((2 / 3) / math.sqrt(1 / 3), rel=1e-4)


def test_sorting_puts_missing_values_last_and_keeps_file_order_on_ties(viewer):
    ids = lambda data: [row["episode_id"] for row in data["rows"]]  # noqa: E731
    assert ids(viewer.table(RUN, "iter_1", sort="reward", descending=True)) == [
        "b#2", "a#0", "c#1", "b#0", "a#1", "a#2", "b#1", "c#0"]
    assert ids(viewer.table(RUN, "iter_1", sort="reward")) == ["a#1", "a#2", "b#0", "a#0", "c#1", "b#2", "b#1", "c#0"]
    assert ids(viewer.table(RUN, "iter_1", sort="advantage"))[:3] == ["b#0", "a#1", "a#2"]


def test_filters_and_their_counts(viewer):
    data = viewer.table(RUN, "iter_1", show="failed")
    assert sorted(row["episode_id"] for row in data["rows"]) == ["a#1", "a#2", "b#0", "b#1", "c#0"]
    assert [r["episode_id"] for r in viewer.table(RUN, "iter_1", show="format_errors")["rows"]] == ["b#0"]
    assert [r["episode_id"] for r in viewer.table(RUN, "iter_1", show="judge_errors")["rows"]] == ["b#1"]
    assert [r["episode_id"] for r in viewer.table(RUN, "iter_1", show="succeeded", task="a")["rows"]] == ["a#0"]
    assert data["counts"] == {"all": 8, "failed": 5, "succeeded": 3, "format_errors": 1, "tool_calls": 0,
                              "no_tool_calls": 7, "answered_before_result": 0, "judge_errors": 1, "rollout_errors": 1}


def test_bad_sort_or_filter_names_the_culprit(viewer):
    with pytest.raises(episodes.BadQuery, match="unknown sort key 'rewrd'"):
        viewer.table(RUN, "iter_1", sort="rewrd")
    with pytest.raises(episodes.BadQuery, match="unknown filter 'broken'"):
        viewer.table(RUN, "iter_1", show="broken")


def test_episode_in_full_carries_reward_advantage_and_raw_text(viewer):
    data = viewer.episode(RUN, "iter_1", "c#1")
    assert data["episode"]["reward"] == 1.0 and data["episode"]["advantage"] == 0.0
    assert data["conversation"]["messages"][-1] == {"role": "assistant", "kind": "assistant", "content": SCRIPT,
                                                    "tool_calls": [], "finish_reason": "stop"}
    (sample,) = data["samples"]
    assert sample["loss_mask"] == [0, 0, 1, 1, 1] and sample["token_ids"] == [1, 2, 100, 101, 102]
    assert sample["trained_tokens"] == 3 and sample["logprobs"][2:] == [-0.25] * 3
    assert sample["texts"] is not None and len(sample["texts"]) == 5  # the run's tokenizer decodes each id
    with pytest.raises(NotFound, match="no episode 'zz#0'"):
        viewer.episode(RUN, "iter_1", "zz#0")


def test_tool_calls_attach_to_their_assistant_message_and_tool_output_is_marked():
    messages = [{"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "<tool_call>...</tool_call>"},
                {"role": "user", "content": "<tool_response>\n4\n</tool_response>"},
                {"role": "assistant", "content": "4"}]
    turns = [{"index": 0, "tool_calls": [{"id": "c1", "name": "execute_python_code", "arguments": {"code": "print(2+2)"}}],
              "finish_reason": "stop"},
             {"index": 1, "tool_calls": [], "finish_reason": "stop"}]
    conv = episodes.conversation(json.dumps(messages), json.dumps(turns))
    assert [m["kind"] for m in conv["messages"]] == ["user", "assistant", "tool", "assistant"]
    assert conv["messages"][1]["tool_calls"] == [
        {"name": "execute_python_code", "id": "c1", "code": "print(2+2)", "is_code": True}]
    broken = episodes.conversation("[{not json", json.dumps(turns))
    assert broken["messages"] == [] and "column 'messages' is not valid JSON" in broken["problems"][0]


def test_rollout_only_iteration_is_listed_then_replaced_by_its_judged_file(tmp_path):
    run_dir = make_run(tmp_path / "runs")
    write(run_dir / "rollouts" / "iter_2.parquet", GROUPS[:3], ROLLOUT_SCHEMA)
    viewer = Viewer(LogviewSettings(runs_dir=tmp_path / "runs"))
    (iteration_2,) = [s for s in viewer.overview()["runs"][0]["sets"] if s["key"] == "iter_2"]
    assert iteration_2["judged"] is False and iteration_2["stats"]["reward_mean"] is None
    assert [row["advantage"] for row in viewer.table(RUN, "iter_2")["rows"]] == [None] * 3
    write(run_dir / "judged" / "iter_2.parquet", GROUPS[:3])
    (iteration_2,) = [s for s in viewer.overview()["runs"][0]["sets"] if s["key"] == "iter_2"]
    assert iteration_2["judged"] is True and iteration_2["stats"]["reward_mean"] == pytest.approx(1 / 3)
    assert [p["iteration"] for p in viewer.overview()["runs"][0]["curve"]] == [1, 2]


def test_curve_uses_the_training_metric_definitions(viewer):
    (point,) = viewer.overview()["runs"][0]["curve"]
    valid = [1.0, 0.0, 0.0, 0.5, 1.5, 1.0]  # ok episodes with a reward
    assert point["reward_mean"] == pytest.approx(sum(valid) / len(valid))
    assert point["success_rate"] == pytest.approx(3 / 6)  # a#0, b#2, c#1 succeed; b#0 (0.5) is marked failed
    assert point["format_error_rate"] == pytest.approx(1 / 8) and point["pass_at_1"] is None


def test_cache_recomputes_only_when_the_file_changes(tmp_path):
    path = write(tmp_path / "x.parquet", GROUPS)
    cache = FileCache(max_entries=4)
    first = cache.get(path, "n", lambda: pq.read_table(path).num_rows)
    again = cache.get(path, "n", lambda: pytest.fail("recomputed an unchanged file"))
    assert first == again == 8 and cache.computed == 1
    write(path, GROUPS[:2])
    os.utime(path, ns=(0, path.stat().st_mtime_ns + 10**9))  # a new mtime even on a coarse clock
    assert cache.get(path, "n", lambda: pq.read_table(path).num_rows) == 2 and cache.computed == 2


def test_runs_are_found_by_listing_not_by_building_paths(tmp_path):
    make_run(tmp_path / "runs")
    make_run(tmp_path / "runs", name="run-20990102-000000")
    assert [run.name for run in list_runs(tmp_path / "runs")] == ["run-20990102-000000", "run-20990101-000000"]
    (tmp_path / "secret" / "x").mkdir(parents=True)
    with pytest.raises(NotFound):
        find_run(tmp_path / "runs", "../secret")
    assert [s.key for s in episode_sets(find_run(tmp_path / "runs", RUN))] == ["iter_1"]


def test_eval_sets_of_two_iterations_compare_task_by_task(tmp_path):
    run_dir = make_run(tmp_path / "runs")
    write(run_dir / "eval" / "iter_0" / "greedy_judged.parquet", [episode("t", 0, 0.0, reply="7")])
    write(run_dir / "eval" / "iter_2" / "greedy_judged.parquet", [episode("t", 0, 1.0, reply=SCRIPT)])
    viewer = Viewer(LogviewSettings(runs_dir=tmp_path / "runs"))
    data = viewer.compare(RUN, "eval_0_greedy", "eval_2_greedy")
    assert data["common_tasks"] == ["t"] and data["task"] == "t"
    assert [side["episodes"][0]["reply"] for side in data["sides"]] == ["7", SCRIPT]
    curve = viewer.overview()["runs"][0]["curve"]
    assert [(p["iteration"], p["pass_at_1"]) for p in curve] == [(0, 0.0), (1, None), (2, 1.0)]


def client(viewer: Viewer) -> TestClient:
    return TestClient(create_app(viewer, LOOPBACK_NAMES), base_url="http://127.0.0.1:8000")


def test_api_returns_model_output_verbatim_as_json_with_a_strict_policy(viewer):
    http = client(viewer)
    response = http.get("/api/episode", params={"run": RUN, "set": "iter_1", "id": "c#1"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert response.json()["final_answer"] == SCRIPT  # data, not markup: the page inserts it as text
    page = http.get("/")
    assert page.status_code == 200 and "<script src=\"/static/app.js\" defer></script>" in page.text
    assert "alert" not in page.text and http.get("/static/app.js").status_code == 200
    assert not re.search(r"\.(inner|outer)HTML\s*=|insertAdjacentHTML|document\.write", http.get("/static/app.js").text)


def test_api_errors_are_one_line_json(viewer):
    http = client(viewer)
    assert http.get("/api/episodes", params={"run": RUN, "set": "iter_9"}).json() == {
        "error": f"run '{RUN}' has no episode set 'iter_9'"}
    bad = http.get("/api/episodes", params={"run": RUN, "set": "iter_1", "sort": "nope"})
    assert bad.status_code == 400 and "unknown sort key 'nope'" in bad.json()["error"]
    assert http.get("/api/episode", params={"run": RUN, "set": "iter_1"}).json() == {"error": "missing query parameter 'id'"}


def test_requests_for_another_host_name_are_refused(viewer):
    """A web page that rebinds its own DNS name to 127.0.0.1 cannot read the runs."""
    http = client(viewer)
    assert http.get("/api/runs", headers={"host": "attacker.example"}).status_code == 400
    assert http.get("/api/runs", headers={"host": "localhost:1234"}).status_code == 200


def test_only_loopback_binds_without_a_warning():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert exposure_warning("127.0.0.1") is None
    assert "not only on loopback" in exposure_warning("0.0.0.0")
