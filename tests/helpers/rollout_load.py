"""A rollout under load, measured in a process of its own: ``python -m helpers.rollout_load OUT.json ...``.

Runs ``--episodes`` episodes of the quickstart agent (the real path: AgentScope agent, TunedModel,
the ``hf`` engine on the tiny model, rows streamed to Parquet by ``run_rollout``) over synthetic
one-line sums, ``--concurrency`` at once. A sampler thread reads the resident set size every
20 ms. Writes JSON: the RSS before the rollout (engine loaded), its peak during the rollout, the
RSS after each ``--mark`` episodes had finished, the episodes per status, the rows in the Parquet
file, the most episodes in flight at once, the engine's largest decode batch, and the seconds taken.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import threading
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

from agents.quickstart_agent import QuickstartAgent
from reinflow.config import RolloutConfig
from reinflow.engines.hf import HFEngine
from reinflow.config.models import resolve_model
from reinflow.rollout.runner import plan_episodes, run_rollout
from reinflow.rollout.tuned_model import TunedModel
from reinflow.rollout.workflow import Task

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    """This process's resident set size now."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE


class PeakSampler:
    """The largest RSS seen by a background thread that samples it every ``every_s``."""

    def __init__(self, every_s: float = 0.02) -> None:
        self.peak, self._every, self._stop = rss_bytes(), every_s, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            self.peak = max(self.peak, rss_bytes())

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--episodes", type=int, required=True)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--max-batch-size", type=int, required=True)
    parser.add_argument("--max-new-tokens", type=int, required=True)
    parser.add_argument("--mark", type=int, action="append", default=[])
    parser.add_argument("--timeout-s", type=float, required=True)
    args = parser.parse_args()
    rollout = RolloutConfig(workflow="agents.quickstart_agent->QuickstartAgent", group_size=args.group_size,
                            max_turns=1, max_new_tokens_per_turn=args.max_new_tokens, max_model_len=256,
                            concurrency=args.concurrency, max_batch_size=args.max_batch_size)
    folder = resolve_model("builtin:tiny-random-llama")
    engine = HFEngine(folder, max_model_len=rollout.max_model_len, max_batch_size=rollout.max_batch_size)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    tasks = [Task(f"sum-{i}", f"What is {i % 97} + {i % 89}?", str(i % 97 + i % 89))
             for i in range(args.episodes // args.group_size)]
    plans = plan_episodes(tasks, args.group_size, base_seed=0, iteration=1)
    output = args.out.with_suffix(".parquet")
    statuses: Counter[str] = Counter()
    at_mark: dict[int, int] = {}
    flight = {"started": 0, "most": 0}

    def on_episode(row: dict) -> None:
        statuses[row["status"]] += 1
        done = sum(statuses.values())
        if done in args.mark:
            at_mark[done] = rss_bytes()

    def make_model(seed: int) -> TunedModel:  # called as each episode starts
        flight["started"] += 1
        flight["most"] = max(flight["most"], flight["started"] - sum(statuses.values()))
        return TunedModel.from_rollout_config(engine, tokenizer, rollout, seed)

    before = rss_bytes()
    started = time.perf_counter()
    with PeakSampler() as sampler:
        metrics = asyncio.run(asyncio.wait_for(run_rollout(
            QuickstartAgent(), plans, make_model, output, iteration=1, concurrency=rollout.concurrency,
            episode_timeout_seconds=rollout.episode_timeout_seconds,
            max_samples_per_episode=rollout.max_samples_per_episode, on_episode=on_episode,
        ), timeout=args.timeout_s))
    result = {
        "seconds": time.perf_counter() - started, "rss_before": before, "rss_peak": sampler.peak,
        "rss_at": {str(k): v for k, v in sorted(at_mark.items())}, "statuses": dict(statuses),
        "parquet_rows": pq.ParquetFile(output).metadata.num_rows, "max_rows": engine.stats.max_rows,
        "max_in_flight": flight["most"],
        "episodes_metric": metrics["episodes"], "generated_tokens": metrics["generated_tokens"],
    }
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
