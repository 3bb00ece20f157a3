"""The logview's HTTP routes (Starlette): the page, its static files and a small JSON API.

    GET /                    the page (static/index.html)
    GET /static/<file>       app.js, style.css
    GET /api/runs            runs, episode sets, statistics, reward curves (the page polls it)
    GET /api/episodes        ?run=&set=&show=&sort=&desc=&task=   one set's episode table
    GET /api/episode         ?run=&set=&id=                        one episode in full
    GET /api/compare         ?run=&a=&b=&task=                     two sets side by side for a task

Model output travels as JSON strings and the page inserts it as text. Every response forbids
inline scripts and content sniffing (defence in depth), and requests must name one of the hosts
the server was bound as (no DNS rebinding from a web page).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from reinflow.logview.episodes import BadQuery
from reinflow.logview.runs import NotFound
from reinflow.logview.views import Viewer

STATIC = Path(__file__).parent / "static"
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}


def create_app(viewer: Viewer, allowed_hosts: list[str]) -> Starlette:
    """The ASGI app serving ``viewer``'s data; only requests for ``allowed_hosts`` are answered."""
    routes = [
        Route("/", lambda request: FileResponse(STATIC / "index.html")),
        Route("/api/runs", _json(lambda request: viewer.overview())),
        Route("/api/episodes", _json(lambda request: _table(viewer, request))),
        Route("/api/episode", _json(lambda request: viewer.episode(
            _param(request, "run"), _param(request, "set"), _param(request, "id")))),
        Route("/api/compare", _json(lambda request: viewer.compare(
            _param(request, "run"), _param(request, "a"), _param(request, "b"), request.query_params.get("task")))),
        Mount("/static", StaticFiles(directory=STATIC)),
    ]
    middleware = [Middleware(SecurityHeaders), Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)]
    return Starlette(routes=routes, middleware=middleware)


def _table(viewer: Viewer, request: Request) -> dict[str, Any]:
    query = request.query_params
    return viewer.table(
        _param(request, "run"), _param(request, "set"), show=query.get("show", "all"), sort=query.get("sort") or None,
        descending=query.get("desc") == "1", task=query.get("task", ""),
    )


def _param(request: Request, name: str) -> str:
    value = request.query_params.get(name)
    if not value:
        raise BadQuery(f"missing query parameter '{name}'")
    return value


def _json(handler: Callable[[Request], Any]) -> Callable[[Request], Response]:
    """A sync endpoint (Starlette runs it in its thread pool) answering JSON; bad requests get 400/404."""

    def endpoint(request: Request) -> Response:
        try:
            return JSONResponse(handler(request))
        except BadQuery as error:
            return JSONResponse({"error": str(error)}, status_code=400)
        except NotFound as error:
            return JSONResponse({"error": str(error)}, status_code=404)

    return endpoint


class SecurityHeaders:
    """Adds :data:`SECURITY_HEADERS` to every HTTP response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.decode().lower() not in SECURITY_HEADERS]
                headers += [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
                message = message | {"headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)
