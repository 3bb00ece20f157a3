"""The two drivers of a :class:`~reinflow.sandbox.live_run.LiveRun`: a blocking selector loop and its
asyncio twin, which watches the same fds with readers on the running event loop (no threads, no
child watcher).

Both hand every readable fd to :meth:`LiveRun.on_ready` until a condition holds (True) or a
deadline passes (False); the set of watched fds shrinks as pipes reach EOF and the launcher exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import selectors
import time
from collections.abc import Callable

from reinflow.sandbox.live_run import LiveRun

__all__ = ["pump_async", "pump_sync"]


def pump_sync(run: LiveRun, until: Callable[[], bool], deadline: float) -> bool:
    """Handle fd events until ``until()`` holds (True) or the deadline passes (False)."""
    with selectors.DefaultSelector() as selector:
        registered: set[int] = set()
        while not until():
            _sync_registrations(selector, registered, run.watched_fds())
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            for key, _ in selector.select(remaining):
                run.on_ready(key.fd)
    return True


def _sync_registrations(selector: selectors.BaseSelector, registered: set[int], wanted: set[int]) -> None:
    """Make ``selector`` watch exactly ``wanted``; ``registered`` is updated in place."""
    for fd in registered - wanted:
        selector.unregister(fd)
    for fd in wanted - registered:
        selector.register(fd, selectors.EVENT_READ)
    registered.clear()
    registered.update(wanted)


async def pump_async(run: LiveRun, until: Callable[[], bool], deadline: float) -> bool:
    """The asyncio twin of :func:`pump_sync`: fd readers on the running loop, no threads."""
    loop = asyncio.get_running_loop()
    wake = asyncio.Event()
    registered: set[int] = set()

    def on_ready(fd: int) -> None:
        run.on_ready(fd)
        wake.set()

    try:
        while not until():
            registered = _async_registrations(loop, registered, run.watched_fds(), on_ready)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), remaining)
    finally:
        for fd in registered:
            loop.remove_reader(fd)
    return True


def _async_registrations(
    loop: asyncio.AbstractEventLoop, registered: set[int], wanted: set[int], on_ready: Callable[[int], None]
) -> set[int]:
    """Make ``loop`` read exactly ``wanted`` (calling ``on_ready(fd)``); returns the new registered set."""
    for fd in registered - wanted:
        loop.remove_reader(fd)
    for fd in wanted - registered:
        loop.add_reader(fd, on_ready, fd)
    return set(wanted)
