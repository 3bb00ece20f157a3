"""Progress bars for the stages of a run (rich): counts, elapsed time and ETA.

The library reports progress through plain callbacks (``on_episode``, ``on_done``,
``on_progress``); these context managers turn them into bars, so ``reinflow/`` never draws.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

_COLUMNS = (
    TextColumn("{task.description:<22}"),
    BarColumn(),
    MofNCompleteColumn(),
    TimeElapsedColumn(),
    TextColumn("eta"),
    TimeRemainingColumn(),
)


@contextmanager
def stage_progress(label: str, total: int) -> Iterator[Callable[..., None]]:
    """A bar of ``total`` units; yields ``advance(*_)``, which moves it by one unit per call."""
    with Progress(*_COLUMNS, transient=False) as progress:
        bar = progress.add_task(label, total=total)
        yield lambda *_: progress.advance(bar, 1)


@contextmanager
def count_progress(label: str, total: int | None = None) -> Iterator[Callable[..., None]]:
    """A bar whose callback sets the count reached: ``on_progress(done)`` or, where the total is
    only known once work starts, ``on_progress(done, total)``."""
    with Progress(*_COLUMNS, transient=False) as progress:
        bar = progress.add_task(label, total=total)

        def on_progress(done: int, new_total: int | None = None) -> None:
            progress.update(bar, completed=done, **({"total": new_total} if new_total is not None else {}))

        yield on_progress
