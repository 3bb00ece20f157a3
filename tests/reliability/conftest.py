"""Tallies the reliability battery into the table of `docs/RELIABILITY.md`.

Every case carries `@pytest.mark.reliability("promise", tried="what was tried")`. Each test item
(a parametrised case counts once) is one case of its promise; it *held* when the test passed.
With `REINFLOW_RELIABILITY_REPORT=path` the session writes the table there in Markdown, between the
file's table markers where it has them (`make reliability-report` regenerates `docs/RELIABILITY.md`).
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

import pytest

_tally: dict[str, dict] = defaultdict(lambda: {"tried": set(), "cases": 0, "held": 0, "failed": []})


def _reliability_marker(item: pytest.Item):
    return item.get_closest_marker("reliability")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    marker = getattr(report, "_reliability", None)
    if marker is None:
        return
    promise, tried = marker
    # A case is decided by its call phase, or by its setup when setup failed or skipped it.
    if report.when == "call" or (report.when == "setup" and not report.passed):
        row = _tally[promise]
        if report.skipped:
            return
        row["tried"].add(tried)
        row["cases"] += 1
        if report.passed:
            row["held"] += 1
        else:
            row["failed"].append(report.nodeid.split("::", 1)[-1])


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call):
    outcome = yield
    marker = _reliability_marker(item)
    if marker is not None:
        promise = marker.args[0]
        tried = marker.kwargs.get("tried", "")
        outcome.get_result()._reliability = (promise, tried)


def render_table(tally: dict[str, dict]) -> str:
    lines = [
        "| promise | what was tried | cases | held |",
        "|---|---|---:|---:|",
    ]
    for promise in sorted(tally):
        row = tally[promise]
        tried = "; ".join(sorted(t for t in row["tried"] if t))
        lines.append(f"| {promise} | {tried} | {row['cases']} | {row['held']} |")
    return "\n".join(lines) + "\n"


def pytest_sessionfinish(session: pytest.Session) -> None:
    target = os.environ.get("REINFLOW_RELIABILITY_REPORT")
    if not target or not _tally:
        return
    failed = [f"- {promise}: {name}" for promise, row in sorted(_tally.items()) for name in row["failed"]]
    body = render_table(_tally)
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
