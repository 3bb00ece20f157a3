"""Ride out a Prefect API outage (a server restart): retry with back-off for a configured window.

Prefect's client already retries a request that gets 429, 502 or 503 or loses its connection, with
an exponential back-off (2, 4, 8, ... s, jittered), ``PREFECT_CLIENT_MAX_RETRIES`` times (5 by
default). Two gaps made a brief outage fail a run within seconds:

- a refused connection is retried only by a client that has connected once; Prefect makes a fresh
  client in each thread that runs a task or subflow, so its first request failed at once;
- a 500 (the restarting server's database not ready) or a 504 was not retried at all.

:func:`ride_out_api_outages` closes both for the flow body it wraps, from
``tracking.prefect_retry_seconds``: the retries whose back-off adds up to that window, 500 and 504
added to the retried codes, and a refused connection retried by every client (the run's API was up
when the flow started, so a refused connection is an outage, not a wrong URL). Outside it, Prefect
behaves as configured.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from prefect.client.base import PrefectHttpxAsyncClient, PrefectHttpxSyncClient
from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, PREFECT_CLIENT_RETRY_EXTRA_CODES, temporary_settings

EXTRA_RETRIED_CODES = {500, 504}
"""Retried besides Prefect's own 408, 429, 502 and 503."""
RIDING_OUT: ContextVar[bool] = ContextVar("reinflow_riding_out_api_outages", default=False)
"""Set inside :func:`ride_out_api_outages`; Prefect copies it into the threads that run tasks."""


def retries_for(window_seconds: float) -> int:
    """The fewest retries whose back-off (2 + 4 + ... + 2**n s) covers ``window_seconds``.

    >>> retries_for(60), retries_for(20), retries_for(0), retries_for(1)
    (5, 4, 0, 1)
    """
    if window_seconds <= 0:
        return 0
    return max(1, math.ceil(math.log2(window_seconds + 2)) - 1)


@contextmanager
def ride_out_api_outages(window_seconds: float) -> Iterator[None]:
    """Within this block, Prefect API requests are retried for about ``window_seconds`` (see the
    module docstring); 0 leaves Prefect's own settings."""
    if window_seconds <= 0:
        yield
        return
    install_connect_retry()
    codes = set(PREFECT_CLIENT_RETRY_EXTRA_CODES.value()) | EXTRA_RETRIED_CODES
    token = RIDING_OUT.set(True)
    try:
        with temporary_settings(updates={PREFECT_CLIENT_MAX_RETRIES: retries_for(window_seconds),
                                         PREFECT_CLIENT_RETRY_EXTRA_CODES: codes}):
            yield
    finally:
        RIDING_OUT.reset(token)


def install_connect_retry() -> None:
    """Have Prefect's HTTP clients retry a refused connection on their first request too, inside
    :func:`ride_out_api_outages` (Prefect keeps that for clients that have connected: its
    ``_has_connected`` flag, set here before each send). Installed once per process."""
    for cls in (PrefectHttpxSyncClient, PrefectHttpxAsyncClient):
        if not getattr(cls.send, "reinflow_connect_retry", False):
            cls.send = connect_retrying(cls.send)


def connect_retrying(send: Any) -> Any:
    """``send`` that marks its client as having connected while riding out an outage."""

    def wrapped(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        if RIDING_OUT.get():
            self._has_connected = True
        return send(self, request, *args, **kwargs)

    wrapped.reinflow_connect_retry = True  # type: ignore[attr-defined]
    wrapped.__doc__ = send.__doc__
    return wrapped
