"""Binding and serving: a socket on the requested address, the app, uvicorn; loopback unless asked.

The socket is bound before uvicorn starts, so with ``port=0`` the chosen port (and URL) is known
at once: printed, and recorded in the pid file when the process registers itself.
"""

from __future__ import annotations

import importlib
import ipaddress
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from reinflow.run import pidfiles
from reinflow.logview.settings import LogviewSettings

LOOPBACK_NAMES = ["127.0.0.1", "localhost", "::1"]


def is_loopback(host: str) -> bool:
    """True when every address ``host`` resolves to is a loopback address."""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except socket.gaierror:
        return False
    return bool(addresses) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)


def exposure_warning(host: str) -> str | None:
    """The warning to print when ``host`` is reachable from other machines."""
    if is_loopback(host):
        return None
    return (f"logview is listening on {host}, not only on loopback: anyone who can reach this machine "
            "can read your runs (prompts, answers, rewards)")


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (IPv6 when the host is an IPv6 address)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, reuse_port=False)


def url_of(sock: socket.socket) -> str:
    """``http://host:port/`` of a bound socket."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def _server(settings: LogviewSettings) -> uvicorn.Server:
    # imported here, after the socket is bound and registered: the data layer pulls in torch (seconds)
    from reinflow.logview.app import create_app
    from reinflow.logview.views import Viewer

    # torch (for the advantages) takes seconds to import: start now, so the first page does not wait
    threading.Thread(target=importlib.import_module, args=("reinflow.training.train_batch",), daemon=True).start()
    hosts = [*LOOPBACK_NAMES, settings.host] if is_loopback(settings.host) else ["*"]
    app = create_app(Viewer(settings), hosts)
    return uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))


def serve(settings: LogviewSettings, project_root: Path, register_as: str | None, on_ready: Callable[[str], None]) -> None:
    """Serve until SIGINT/SIGTERM. With ``register_as``, record this process in a pid file (with its
    URL and runs folder) while it serves, so ``reinflow stop`` can stop it."""
    sock = bind(settings.host, settings.port)
    url = url_of(sock)
    if register_as:
        pidfiles.register(project_root, register_as, {"url": url, "runs_dir": str(Path(settings.runs_dir).resolve())})
    try:
        on_ready(url)
        _server(settings).run(sockets=[sock])
    finally:
        if register_as:
            pidfiles.unregister(project_root, register_as)


@dataclass
class RunningServer:
    """A logview served from a thread of this process (tests and the benchmark)."""

    url: str
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def serve_in_thread(settings: LogviewSettings) -> RunningServer:
    """Start serving in a daemon thread; returns once the server accepts requests."""
    sock = bind(settings.host, settings.port)
    server = _server(settings)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="logview")
    thread.start()
    while not server.started and thread.is_alive():
        threading.Event().wait(0.02)
    if not server.started:
        raise RuntimeError(f"logview did not start on {url_of(sock)} (see the log above)")
    return RunningServer(url_of(sock), server, thread)
