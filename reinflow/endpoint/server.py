"""Serve the endpoint from a thread of the rollout's process: bind, start uvicorn, hand out URLs.

The socket is bound before uvicorn starts, so with ``port: 0`` the URL is known at once. The
server thread has its own event loop; episodes live on the rollout's loop
(``reinflow.endpoint.episodes``), so one server outlives the per-rollout event loops of a run and
is stopped once, when the run's runtime closes.

Safe by default: it binds loopback unless ``rollout.endpoint.host`` says otherwise, and every
request must carry the run's bearer token, on loopback too (another user of the machine reaches
loopback as well). The token is random per run unless ``token_env`` names a variable holding
one; it is handed only to the episodes' processes, never printed or logged.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import secrets
import socket
import threading

import uvicorn

from reinflow.config import EndpointConfig
from reinflow.endpoint.app import EndpointState, create_app
from reinflow.endpoint.episodes import EndpointEpisode, EpisodeRegistry
from reinflow.errors import ReinflowError

log = logging.getLogger(__name__)

MIN_TOKEN_CHARS = 16


def run_token(settings: EndpointConfig) -> str:
    """The bearer token of this run: ``$<token_env>`` where configured, else a fresh random one."""
    if settings.token_env is None:
        return secrets.token_urlsafe(32)
    token = os.environ.get(settings.token_env, "")
    if len(token) < MIN_TOKEN_CHARS:
        state = "is not set" if not token else f"holds a token shorter than {MIN_TOKEN_CHARS} characters"
        raise ReinflowError(f"rollout.endpoint.token_env: ${settings.token_env} {state}; set it to a long random "
                            "string (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)")
    return token


def is_loopback(host: str) -> bool:
    """True when every address ``host`` resolves to is a loopback address."""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except socket.gaierror:
        return False
    return bool(addresses) and all(ipaddress.ip_address(str(a).split("%")[0]).is_loopback for a in addresses)


class EndpointServer:
    """The OpenAI-compatible endpoint of one run: start once, open episodes, stop at the end."""

    def __init__(self, settings: EndpointConfig, model_name: str = "reinflow-policy") -> None:
        self.settings = settings
        self.token = run_token(settings)
        self.registry = EpisodeRegistry()
        self.state = EndpointState(self.registry, self.token, model_name, settings.max_request_bytes,
                                   settings.max_concurrent_requests)
        self.url: str | None = None
        """``http://host:port`` once started (the bound address; see :meth:`public_url`)."""
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._guard = threading.Lock()

    def start(self, extra_routes: list | None = None) -> None:
        """Bind and serve in a daemon thread; returns once requests are accepted. Idempotent."""
        with self._guard:
            if self._server is not None:
                return
            host, port = self.settings.host, self.settings.port
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.create_server((host, port), family=family)
            bound_host, bound_port = sock.getsockname()[:2]
            self.url = f"http://[{bound_host}]:{bound_port}" if ":" in bound_host else f"http://{bound_host}:{bound_port}"
            app = create_app(self.state, extra_routes)
            config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
            self._server = uvicorn.Server(config)
            self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True,
                                            name="reinflow-endpoint")
            self._thread.start()
            while not self._server.started and self._thread.is_alive():
                threading.Event().wait(0.01)
            if not self._server.started:
                raise RuntimeError(f"the endpoint did not start on {self.url} (see the log above)")
            if not is_loopback(host):
                log.warning("the rollout endpoint listens on %s, not only on loopback: every request needs the run's "
                            "bearer token", self.url)

    def public_url(self) -> str:
        """The base under which workers reach the endpoint (``public_url`` where configured)."""
        if self.settings.public_url is not None:
            return self.settings.public_url.rstrip("/")
        if self.url is None:
            raise RuntimeError("the endpoint is not started")
        return self.url

    def base_url(self, episode: EndpointEpisode) -> str:
        """The episode's ``OPENAI_BASE_URL``."""
        return f"{self.public_url()}/episodes/{episode.episode_id}/v1"

    def stop(self) -> None:
        """Stop serving (open episodes get no more answers); safe to call twice."""
        with self._guard:
            server, thread = self._server, self._thread
            self._server = self._thread = None
        if server is not None and thread is not None:
            server.should_exit = True
            thread.join(timeout=10)
