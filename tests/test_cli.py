"""The `reinflow` command as a user runs it: one-line errors with exit status 2, working verbs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REINFLOW = [sys.executable, "-c", "from cli.app import main; main()"]


def run_cli(*args: str, cwd: Path = ROOT, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([*REINFLOW, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_help_lists_verbs():
    result = run_cli("--help")
    assert result.returncode == 0
    assert "prepare-data" in result.stdout and "model" in result.stdout


def test_config_typo_is_one_line_without_traceback():
    result = run_cli("prepare-data", "--conf", "configs/quickstart.yaml", "rollout.grup_size=3")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == ["error: configs/quickstart.yaml: rollout.grup_size: unknown key (did you mean 'group_size'?)"]


def test_missing_config_file():
    result = run_cli("prepare-data", "--conf", "configs/nope.yaml")
    assert result.returncode == 2
    assert "configs/nope.yaml: no such config file" in result.stderr


def test_prepare_data_needs_a_source():
    result = run_cli("prepare-data")
    assert result.returncode == 2
    assert "needs --conf FILE, or --target DATASET and --path FOLDER" in result.stderr


def test_model_fetch_builtin_and_unknown():
    good = run_cli("model", "fetch", "builtin:tiny-random-llama")
    assert good.returncode == 0, good.stderr
    folder = Path(good.stdout.split("->")[1].strip())
    assert json.loads((folder / "config.json").read_text())["num_hidden_layers"] == 2
    bad = run_cli("model", "fetch", "builtin:nope")
    assert bad.returncode == 2
    assert "unknown built-in model 'builtin:nope'" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_rollout_prepares_the_data_itself_and_refuses_a_row_the_split_lacks(tmp_path):
    """`reinflow rollout` on a fresh project: shards are written first (as `train` does), one episode
    runs and is judged; a `--task` past the split's end is one line naming the split's size."""
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "tiny.yaml").write_text((ROOT / "tests" / "configs" / "tiny_e2e.yaml").read_text())
    env_path = {"PYTHONPATH": str(ROOT)}
    command = [*REINFLOW, "rollout", "--conf", "configs/tiny.yaml", "--task", "3"]
    result = subprocess.run(command, cwd=tmp_path, env={**os.environ, "COLUMNS": "200", **env_path},
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert (tmp_path / "data" / "tiny_e2e" / "train" / "manifest.json").is_file()
    assert "status=" in result.stdout and "final answer=" in result.stdout
    judged = list(tmp_path.glob("runs/*/debug/task_3/judged.parquet"))
    assert len(judged) == 1

    command[-1] = "99999999"
    refused = subprocess.run(command, cwd=tmp_path, env={**os.environ, "COLUMNS": "200", **env_path},
                             capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1] == (
        "error: --task 99999999: the train split has 40 tasks (rows 0 to 39)")
