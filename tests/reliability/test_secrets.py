"""Secrets live in the environment only: a planted API key and tracking password appear in no artifact
of a real training run (run folder, MLflow SQLite and artifacts, Parquet, checkpoints, Prefect result
storage and database, the captured stdout/stderr), and never in the sandboxed code's view."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from reinflow.sandbox.runner import probe_isolation, run_python

PROMISE = "secrets: read from the environment, written nowhere"
SECRETS = {
    "OPENAI_API_KEY": "sk-reinflow-planted-4f9c2a7e1b",
    "MLFLOW_TRACKING_PASSWORD": "mlflow-planted-pw-8d3e6b0a",
}
USERNAME = {"MLFLOW_TRACKING_USERNAME": "planted-user-c41d"}
"""Not a secret: MLflow records it as the run's owner (the ``mlflow.user`` tag), as its UI shows it."""

CONFIG = {
    "experiment": "secrets",
    "data": {"source": {"type": "reasoning_gym", "name": "basic_arithmetic", "sizes": {"train": 8, "test": 4}, "seed": 1,
                        "options": {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}},
             "path": "data/secrets", "tasks_per_iteration": 2, "eval_tasks": 2},
    "rollout": {"workflow": "agents.quickstart_agent->QuickstartAgent", "group_size": 2, "max_turns": 1,
                "max_new_tokens_per_turn": 8, "max_model_len": 256, "concurrency": 4},
    "judge": {"protocol": "judges.math_answer->MathAnswerJudge"},
    "model": {"path": "builtin:tiny-random-llama"},
    "train": {"iterations": 1, "lr": 1.0e-3, "eval_interval": 1, "eval_pass_k": 1},
    "tracking": {"mlflow_uri": "sqlite:///runs/mlflow.db", "run_dir": "runs"},
}


def files_holding(root: Path, needles: list[bytes]) -> dict[str, list[str]]:
    """Every file under ``root`` that contains one of ``needles``, with the needles it holds."""
    found: dict[str, list[str]] = {}
    for path in (p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
        data = path.read_bytes()
        hits = [needle.decode() for needle in needles if needle in data]
        if hits:
            found[str(path)] = hits
    return found


@pytest.mark.slow
@pytest.mark.reliability(PROMISE, tried="planted OPENAI_API_KEY / MLFLOW_TRACKING_PASSWORD grepped in every file of "
                                        "a real 1-iteration run (runs/, MLflow DB, Parquet, checkpoints, Prefect "
                                        "results and DB, stdout/stderr)")
def test_planted_secrets_appear_in_no_artifact_of_a_run(tmp_path: Path) -> None:
    (tmp_path / "secrets.yaml").write_text(yaml.safe_dump(CONFIG))
    stdout, stderr = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    env = {**os.environ, **SECRETS, **USERNAME, "PREFECT_HOME": str(tmp_path / "prefect-home"), "COLUMNS": "200",
           "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "900"}  # a fresh database migrates first
    command = [sys.executable, "-c", "from cli.app import main; main()", "train", "--conf", "secrets.yaml"]
    with stdout.open("w") as out, stderr.open("w") as err:
        process = subprocess.Popen(command, cwd=tmp_path, stdout=out, stderr=err, env=env, start_new_session=True)
        try:
            code = process.wait(timeout=1500)
        finally:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert code == 0, stderr.read_text()[-3000:]
    written = {p.suffix for p in tmp_path.rglob("*") if p.is_file()}
    assert {".parquet", ".db", ".json"} <= written  # the grep below covered real artifacts
    assert list((tmp_path / "runs").rglob("checkpoints/*")), "no checkpoint was written"
    assert list((tmp_path / ".prefect-results").iterdir()), "no Prefect result was stored"
    assert files_holding(tmp_path, [value.encode() for value in SECRETS.values()]) == {}
    assert list(files_holding(tmp_path, [USERNAME["MLFLOW_TRACKING_USERNAME"].encode()])) == [
        str(tmp_path / "runs" / "mlflow.db")
    ]  # the owner's name, and only in the tracking database


@pytest.mark.reliability(PROMISE, tried="sandboxed code looks for the planted keys in os.environ and every "
                                        "/proc/*/environ it can see")
def test_sandboxed_code_never_sees_the_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    if not probe_isolation().drops_privileges:
        pytest.skip("without root the sandbox runs as the trainer's user: see docs/SANDBOX.md")
    for key, value in SECRETS.items():
        monkeypatch.setenv(key, value)
    program = (
        "import os\nprint(dict(os.environ))\n"
        "for pid in [p for p in os.listdir('/proc') if p.isdigit()] + ['self', str(os.getppid())]:\n"
        "    try:\n        print(pid, open(f'/proc/{pid}/environ', 'rb').read())\n"
        "    except OSError as e:\n        print(pid, type(e).__name__)\n"
    )
    result = run_python(program)
    assert result.exit_code == 0, result
    assert "PATH" in result.stdout  # the program did print what it could see
    for key, value in SECRETS.items():
        assert value not in result.stdout + result.stderr and key not in result.stdout
