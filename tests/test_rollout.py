"""Rollouts end to end on the tiny random model and the real `hf` engine: workflow → Parquet."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from reinflow.config import load_config
from reinflow.data.normalize import normalize_rows, row_format
from reinflow.data.shards import write_shards
from reinflow.data.sources import iter_source_rows
from reinflow.rollout.episode_schema import ROLLOUT_SCHEMA
from reinflow.config.plugins import PluginError
from reinflow.run.rollout_runtime import build_runtime, load_workflow, rollout_iteration

ROOT = Path(__file__).resolve().parents[1]
GSM8K_DIR = Path(os.environ.get("REINFLOW_GSM8K_DIR", ROOT.parent / "shared" / "data" / "gsm8k"))


def _prepare(config, root: Path) -> Path:
    data = config.data
    path = root / data.path
    for split in (data.train_split,):
        fmt = row_format(data.source, split, data.max_question_chars, root)
        write_shards(normalize_rows(iter_source_rows(data.source, split, root), fmt), path, split, data.shard_size, {})
    return path


def _config(name: str, tmp_path: Path, *extra: str):
    return load_config(
        ROOT / "configs" / name,
        [
            "model.path=builtin:tiny-random-llama",
            "model.dtype=float32",
            "rollout.engine=hf",
            f"data.path={tmp_path / 'data'}",
            "data.tasks_per_iteration=3",
            "rollout.group_size=2",
            "rollout.max_new_tokens_per_turn=24",
            "rollout.max_model_len=1024",
            *extra,
        ],
    )


@pytest.mark.gsm8k
def test_math_agent_rollout_over_real_gsm8k_writes_a_valid_parquet(tmp_path):
    if not (GSM8K_DIR / "test.jsonl").is_file():
        pytest.skip(f"real GSM8K not found at {GSM8K_DIR} (set REINFLOW_GSM8K_DIR)")
    config = _config(
        "math_agent.yaml",
        tmp_path,
        "data.source={type: local, files: {train: %s, test: %s}}" % (GSM8K_DIR / "test.jsonl", GSM8K_DIR / "test.jsonl"),
        "rollout.max_turns=2",
    )
    data_path = _prepare(config, ROOT)
    runtime = build_runtime(config, ROOT)
    output = tmp_path / "rollouts" / "iter_1.parquet"
    metrics, cursor = rollout_iteration(runtime, data_path, iteration=1, cursor=5, output=output)

    assert cursor == 8
    table = pq.read_table(output)
    assert table.schema.equals(ROLLOUT_SCHEMA)
    rows = table.to_pylist()
    assert len(rows) == 6 and metrics["episodes"] == 6
    assert sorted({r["task_id"] for r in rows}) == sorted({r["task_id"] for r in rows[:]})
    assert len({r["task_id"] for r in rows}) == 3
    gsm_answers = [json.loads(line)["answer"].split("####")[-1].strip().replace(",", "")
                   for line in (GSM8K_DIR / "test.jsonl").read_text().splitlines()[5:8]]
    assert sorted({r["reference_answer"] for r in rows}) == sorted(set(gsm_answers))
    for row in rows:
        assert row["status"] == "ok", row["error"]
        assert 1 <= row["num_turns"] <= 2
        assert row["generated_tokens"] > 0
        for sample in row["samples"]:
            assert len(sample["token_ids"]) == len(sample["loss_mask"]) == len(sample["logprobs"])
            trained = [lp for lp, m in zip(sample["logprobs"], sample["loss_mask"]) if m]
            assert trained and all(lp <= 0 for lp in trained)
        trained_tokens = sum(sum(s["loss_mask"]) for s in row["samples"])
        assert trained_tokens == row["generated_tokens"]
        assert row["question"] in row["messages"]
    assert metrics["generated_tokens"] == sum(r["generated_tokens"] for r in rows)
    assert metrics["generated_tokens_per_second"] > 0


def test_quickstart_rollout_is_reproducible_for_a_seed(tmp_path):
    config = _config("quickstart.yaml", tmp_path, "data.source.sizes={train: 20, test: 5}")
    data_path = _prepare(config, ROOT)
    runtime = build_runtime(config, ROOT)
    first, second = tmp_path / "a.parquet", tmp_path / "b.parquet"
    rollout_iteration(runtime, data_path, iteration=3, cursor=18, output=first)
    rollout_iteration(runtime, data_path, iteration=3, cursor=18, output=second)
    a, b = (pq.read_table(p).sort_by("episode_id").to_pylist() for p in (first, second))
    assert [s["token_ids"] for r in a for s in r["samples"]] == [s["token_ids"] for r in b for s in r["samples"]]
    # logprobs agree to float rounding (rows are batched differently from run to run)
    for ra, rb in zip(a, b):
        for sa, sb in zip(ra["samples"], rb["samples"]):
            assert max(abs(x - y) for x, y in zip(sa["logprobs"], sb["logprobs"])) < 1e-5
    # the cursor wraps around the 20-row split: rows 18, 19, then 0
    assert sorted({r["task_id"].rsplit("-", 1)[1] for r in a}) == ["0", "18", "19"]


class NoRun:
    pass


class NotAWorkflow:
    async def run(self, task, model):
        return None


def test_workflow_that_is_not_a_workflow_is_refused(tmp_path):
    config = _config("quickstart.yaml", tmp_path, "rollout.workflow=tests.test_rollout->NoRun")
    with pytest.raises(PluginError, match=r"class NoRun lacks the method\(s\) run"):
        load_workflow(config, ROOT)
    config = _config("quickstart.yaml", tmp_path, "rollout.workflow=tests.test_rollout->NotAWorkflow")
    with pytest.raises(PluginError, match="must subclass reinflow.Workflow"):
        load_workflow(config, ROOT)
    config = _config("quickstart.yaml", tmp_path, "rollout.workflow=agents.nope->X")
    with pytest.raises(PluginError, match="cannot import module 'agents.nope'"):
        load_workflow(config, ROOT)
    config = _config("math_agent.yaml", tmp_path, "rollout.workflow_options={max_iter: 3}")
    with pytest.raises(PluginError, match="bad rollout.workflow_options"):
        load_workflow(config, ROOT)
