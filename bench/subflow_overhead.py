"""What a Prefect subflow costs, with and without its heartbeat thread, in one process.

    .venv/bin/python bench/subflow_overhead.py            # 20 subflows each way (~30 s with the server's start)

Runs a parent flow (in Prefect's ephemeral mode, like ``reinflow train``) that calls an empty
subflow holding one task ``--runs`` times as Prefect starts it (a heartbeat thread, joined at exit)
and ``--runs`` times inside ``flows.subflow_heartbeat.without_subflow_heartbeat`` (what the train flow
does for each iteration), alternating, and prints the median milliseconds per subflow and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prefect import flow, task  # noqa: E402

from flows.subflow_heartbeat import without_subflow_heartbeat  # noqa: E402


@task
def nothing(i: int) -> int:
    return i


@flow
def empty_subflow(i: int) -> int:
    return nothing(i)


@flow
def parent(runs: int) -> dict[str, list[float]]:
    seconds: dict[str, list[float]] = {"with heartbeat": [], "without": []}
    empty_subflow(-1)  # warm-up
    for i in range(runs):
        for mode, context in (("with heartbeat", nullcontext), ("without", without_subflow_heartbeat)):
            started = time.perf_counter()
            with context():
                empty_subflow(i)
            seconds[mode].append(time.perf_counter() - started)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    seconds = parent(parser.parse_args().runs)
    medians = {mode: 1000 * statistics.median(values) for mode, values in seconds.items()}
    for mode, median in medians.items():
        print(f"{mode:15s} {median:7.0f} ms per subflow (median of {len(seconds[mode])})")
    print(f"with / without: {medians['with heartbeat'] / medians['without']:.1f}x")


if __name__ == "__main__":
    main()
