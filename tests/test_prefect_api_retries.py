"""A Prefect API outage is ridden out (``flows/api_retries.py``, ``tracking.prefect_retry_seconds``).

Prefect's real HTTP client (the class every Prefect client sends through) talks to a port where
nothing listens yet; a small server comes up there a second later and answers 503, then 500, then
200. Inside ``ride_out_api_outages`` the request gets its answer; outside it, Prefect's own settings
fail it at once (a fresh client does not retry a refused connection, and 500 is not retried).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from prefect.client.base import PrefectHttpxAsyncClient, PrefectHttpxSyncClient
from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, PREFECT_CLIENT_RETRY_EXTRA_CODES

from flows.api_retries import retries_for, ride_out_api_outages
from reinflow.config import TrackingConfig


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class FlakyApi(BaseHTTPRequestHandler):
    """503, then 500, then 200 (``Retry-After: 0`` so the test does not wait out the back-off)."""

    answers = [503, 500, 200]
    seen: list[int] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        status = self.answers[min(len(self.seen), len(self.answers) - 1)]
        self.seen.append(status)
        body = b"true" if status == 200 else b'{"detail": "restarting"}'
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if status != 200:
            self.send_header("Retry-After", "0")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def restarting_api():
    """The base URL of an API that is down for a second, then flaky, then well; the statuses it sent."""
    port = free_port()
    FlakyApi.seen = []
    server: list[ThreadingHTTPServer] = []

    def come_up() -> None:
        time.sleep(1.0)
        server.append(ThreadingHTTPServer(("127.0.0.1", port), FlakyApi))
        server[0].serve_forever()

    threading.Thread(target=come_up, daemon=True).start()
    yield f"http://127.0.0.1:{port}/api", FlakyApi.seen
    deadline = time.monotonic() + 5
    while not server and time.monotonic() < deadline:
        time.sleep(0.05)
    if server:
        server[0].shutdown()
        server[0].server_close()


def test_the_default_window_is_about_a_minute_of_prefect_retries():
    assert TrackingConfig().prefect_retry_seconds == 60.0
    assert [retries_for(seconds) for seconds in (0, 10, 20, 60, 300)] == [0, 3, 4, 5, 8]
    assert sum(2**k for k in range(1, retries_for(60) + 1)) >= 60


def test_the_window_reaches_prefects_client_settings_and_is_undone():
    before = PREFECT_CLIENT_MAX_RETRIES.value(), set(PREFECT_CLIENT_RETRY_EXTRA_CODES.value())
    with ride_out_api_outages(300):
        assert PREFECT_CLIENT_MAX_RETRIES.value() == 8
        assert {500, 504} <= set(PREFECT_CLIENT_RETRY_EXTRA_CODES.value())
    assert (PREFECT_CLIENT_MAX_RETRIES.value(), set(PREFECT_CLIENT_RETRY_EXTRA_CODES.value())) == before
    with ride_out_api_outages(0):
        assert PREFECT_CLIENT_MAX_RETRIES.value() == before[0]


def test_a_fresh_client_rides_out_refused_connections_and_5xx(restarting_api):
    url, seen = restarting_api
    with ride_out_api_outages(20):
        started = time.monotonic()
        with PrefectHttpxSyncClient(base_url=url) as client:
            response = client.get("/health")
    assert response.status_code == 200 and response.json() is True
    assert seen == [503, 500, 200]
    assert time.monotonic() - started >= 1.0  # it waited for the server to come up


def test_a_fresh_async_client_rides_out_refused_connections_and_5xx(restarting_api):
    url, seen = restarting_api

    async def request() -> httpx.Response:
        async with PrefectHttpxAsyncClient(base_url=url) as client:
            return await client.get("/health")

    with ride_out_api_outages(20):
        response = asyncio.run(request())
    assert response.status_code == 200 and seen == [503, 500, 200]


def test_without_it_prefect_fails_a_fresh_client_at_once(restarting_api):
    url, seen = restarting_api
    started = time.monotonic()
    with PrefectHttpxSyncClient(base_url=url) as client, pytest.raises(httpx.ConnectError):
        client.get("/health")
    assert time.monotonic() - started < 1.0 and seen == []
