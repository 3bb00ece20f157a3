"""Shared fixtures. The environment defaults every reinflow process needs are set before torch loads."""

from __future__ import annotations

import os

from reinflow.run import environment

environment.apply_defaults()  # before anything loads torch, MLflow, Ray or Prefect


# ----------------------------------------------------------------------------- data preparation tests
# Tests never reach the Hugging Face hub: `datasets` reads these when it is first imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """A temporary Prefect server + database for the whole session (started once: ~20 s on 2 cores).

    Flow-run heartbeats are off: their thread sleeps in 1 s steps, so every flow run would wait up to
    a second for it at exit.
    """
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=None):
        with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            yield


@pytest.fixture(scope="session")
def gsm8k_dir() -> Path:
    """The real GSM8K folder (`$REINFLOW_GSM8K_DIR`, default `../shared/data/gsm8k`); skips where absent."""
    folder = Path(os.environ.get("REINFLOW_GSM8K_DIR", PROJECT_ROOT.parent / "shared" / "data" / "gsm8k"))
    if not (folder / "train.jsonl").is_file() or not (folder / "test.jsonl").is_file():
        pytest.skip(f"real GSM8K not found at {folder} (set REINFLOW_GSM8K_DIR)")
    return folder
