"""Tallies the reliability battery into the table of `docs/RELIABILITY.md`.

Every case carries `@pytest.mark.reliability("promise", tried="what was tried")`. Each test item
(a parametrised case counts once) is one case of its promise; it *held* when the test passed.
With `REINFLOW_RELIABILITY_REPORT=path` the session writes the table there in Markdown, between the
file's table markers where it has them (`make reliability-report` regenerates `docs/RELIABILITY.md`).

Sessions add up: every case's outcome is kept in `<path>.cases.json` (keyed by test id), and the
table is drawn from all cases recorded there, so the fast and the slow session of `.ci/run` write
one table. Delete that file to start a tally afresh (`.ci/run` does).
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

import pytest

_cases: dict[str, dict] = {}  # test id -> {"promise", "tried", "held"}


def _reliability_marker(item: pytest.Item):
    return item.get_closest_marker("reliability")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    marker = getattr(report, "_reliability", None)
    if marker is None:
        return
    promise, tried = marker
    # A case is decided by its call phase, or by its setup when setup failed or skipped it.
    if report.when == "call" or (report.when == "setup" and not report.passed):
        if report.skipped:
            return
        _cases[report.nodeid] = {"promise": promise, "tried": tried, "held": bool(report.passed)}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call):
    outcome = yield
    marker = _reliability_marker(item)
    if marker is not None:
        promise = marker.args[0]
        tried = marker.kwargs.get("tried", "")
        outcome.get_result()._reliability = (promise, tried)


def tally(cases: dict[str, dict]) -> dict[str, dict]:
    """Per promise: what was tried, how many cases, how many held, and the cases that did not."""
    rows: dict[str, dict] = defaultdict(lambda: {"tried": set(), "cases": 0, "held": 0, "failed": []})
    for nodeid, case in sorted(cases.items()):
        row = rows[case["promise"]]
        row["tried"].add(case["tried"])
        row["cases"] += 1
        row["held"] += case["held"]
        if not case["held"]:
            row["failed"].append(nodeid.split("::", 1)[-1])
    return rows


def render_table(rows: dict[str, dict]) -> str:
    lines = [
        "| promise | what was tried | cases | held |",
        "|---|---|---:|---:|",
    ]
    for promise in sorted(rows):
        row = rows[promise]
        tried = "; ".join(sorted(t for t in row["tried"] if t))
        lines.append(f"| {promise} | {tried} | {row['cases']} | {row['held']} |")
    return "\n".join(lines) + "\n"


def pytest_sessionfinish(session: pytest.Session) -> None:
    target = os.environ.get("REINFLOW_RELIABILITY_REPORT")
    if not target or not _cases:
        return
    store = Path(f"{target}.cases.json")
    cases = (json.loads(store.read_text()) if store.is_file() else {}) | _cases
    store.write_text(json.dumps(cases, indent=1, sort_keys=True))
    rows = tally(cases)
    failed = [f"- {promise}: {name}" for promise, row in sorted(rows.items()) for name in row["failed"]]
    body = render_table(rows)
    if failed:
        body += "\nCases that did not hold:\n\n" + "\n".join(failed) + "\n"
    Path(target).write_text(_spliced(Path(target), body))


TABLE_START, TABLE_END = "<!-- reliability-table:start -->", "<!-- reliability-table:end -->"


def _spliced(target: Path, body: str) -> str:
    """The target's text with ``body`` between the table markers (the prose around them kept), or
    ``body`` alone where the target has no markers."""
    text = target.read_text() if target.is_file() else ""
    if TABLE_START not in text or TABLE_END not in text:
        return body
    head, rest = text.split(TABLE_START, 1)
    tail = rest.split(TABLE_END, 1)[1]
    return f"{head}{TABLE_START}\n{body}{TABLE_END}{tail}"
