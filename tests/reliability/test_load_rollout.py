"""The rollout under load, on the tiny model through the ``hf`` engine (``tests/helpers/rollout_load.py``
runs it in a process of its own and measures its resident set size).

- 256 episodes in flight at once (``concurrency=256``, ``max_batch_size=256``): every one finishes
  (no deadlock: the whole rollout has a deadline) and the peak RSS during the rollout stays within
  a stated bound of the RSS before it.
- 10,000 episodes streamed to Parquet: the RSS after 10,000 episodes is within a small bound of
  the RSS after 1,000 (rows are written in row groups as they finish, not kept), so memory does
  not grow with the episode count.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.train_run import ROOT

MB = 1024 * 1024


def _load(tmp_path: Path, *args: str, timeout_s: float) -> dict:
    out, log = tmp_path / "load.json", tmp_path / "load.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    with log.open("w") as sink:
        process = subprocess.Popen([sys.executable, "-m", "helpers.rollout_load", str(out), *args],
                                   cwd=ROOT, env=env, stdout=sink, stderr=sink, start_new_session=True)
        try:
            returncode = process.wait(timeout=timeout_s + 120)
        finally:  # not `kill -9 -PGID`: procps-ng 4.0.2's kill sends that to pid -1, i.e. to everything
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
    assert returncode == 0, log.read_text()[-3000:]
    result = json.loads(out.read_text())
    print(json.dumps(result))
    return result


PEAK_BOUND_BYTES = 256 * MB
"""256 in-flight episodes may add at most this much: the engine's KV cache and parked rows for 256
rows of 256 tokens (the tiny model: 2 layers x 2 KV heads x 16 dims, 64 KiB a row; 32 MiB in all),
256 agents' and TunedModels' state and one Parquet row group."""


@pytest.mark.slow
@pytest.mark.reliability("rollout under load: no deadlock, bounded memory",
                         tried="256 episodes in flight through the hf engine (tiny model)")
def test_256_concurrent_episodes_all_finish_with_bounded_memory(tmp_path):
    result = _load(tmp_path, "--episodes", "256", "--concurrency", "256", "--max-batch-size", "256",
                   "--max-new-tokens", "8", "--timeout-s", "300", timeout_s=300)
    assert result["statuses"] == {"ok": 256} and result["parquet_rows"] == 256
    assert result["max_in_flight"] == 256  # every episode was in flight at once
    assert result["max_rows"] >= 2  # and the engine batched their requests
    growth = result["rss_peak"] - result["rss_before"]
    print(f"{result['max_in_flight']} in flight: {result['seconds']:.0f} s, peak RSS growth {growth / MB:.0f} MiB, "
          f"largest decode batch {result['max_rows']}")
    assert growth < PEAK_BOUND_BYTES


GROWTH_BOUND_BYTES = 32 * MB
"""Between 1,000 and 10,000 finished episodes the RSS may grow at most this much: the per-episode
summary the metrics need (six numbers) and allocator noise. Keeping the rows themselves (messages,
turns, token ids, logprobs: several KiB each) would add far more over 9,000 episodes."""


@pytest.mark.slow
@pytest.mark.reliability("rollout under load: no deadlock, bounded memory",
                         tried="10,000 episodes streamed to Parquet, RSS at 1k vs 10k")
def test_10k_episodes_stream_to_parquet_without_memory_growth(tmp_path):
    result = _load(tmp_path, "--episodes", "10000", "--concurrency", "64", "--max-batch-size", "64",
                   "--max-new-tokens", "1", "--mark", "1000", "--mark", "10000", "--timeout-s", "1500", timeout_s=1500)
    assert result["statuses"] == {"ok": 10000} and result["parquet_rows"] == 10000
    growth = result["rss_at"]["10000"] - result["rss_at"]["1000"]
    print(f"10k episodes: {result['seconds']:.0f} s, RSS {result['rss_at']['1000'] / MB:.0f} MiB at 1k, "
          f"{result['rss_at']['10000'] / MB:.0f} MiB at 10k ({growth / MB:+.1f} MiB)")
    assert growth < GROWTH_BOUND_BYTES
