"""Request ids, request metrics and the JSON access log, in one pure ASGI middleware.

Pure ASGI (not ``BaseHTTPMiddleware``) so streamed responses stay streamed and the body
limit middleware's ``receive`` keeps working. It is installed outermost among the app's
middleware, so 413s from the body limit and 401s from authentication are counted and
logged like any other answer. Routes are labelled by their template
(``/v1/collections/{name}/search``), never the raw path: a client must not be able to
create label values, and so series, at will.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from embedsvc import metrics
from embedsvc.settings import Settings

ACCESS_LOGGER = "embedsvc.access"
REQUEST_ID_HEADER = b"x-request-id"
UNMATCHED = "unmatched"
# Methods a label may hold; any other (a client may send any token) is counted as "OTHER".
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

access_log = logging.getLogger(ACCESS_LOGGER)
_SANE_ID = re.compile(r"[\x20-\x7e]{1,128}")


def request_id_of(headers: list[tuple[bytes, bytes]]) -> str:
    """The client's X-Request-ID when it is printable ASCII of at most 128 characters,
    else a new uuid4 hex."""
    for name, value in headers:
        if name.lower() == REQUEST_ID_HEADER:
            text = value.decode("latin-1").strip()
            if _SANE_ID.fullmatch(text):
                return text
            break
    return uuid.uuid4().hex


def route_of(scope: Scope) -> str:
    """The template of the route that handled the request; ``unmatched`` when none did
    (an unknown path, or a body refused by the body limit before routing)."""
    path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) else UNMATCHED


def method_of(scope: Scope) -> str:
    method = scope["method"]
    return method if method in _METHODS else "OTHER"


class ObservabilityMiddleware:
    def __init__(self, app: ASGIApp, service: metrics.Describes | None = None):
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_of(scope.get("headers") or [])
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        sizes = {"in": 0, "out": 0}
        status = 500  # what the client gets if the app raises before answering

        async def counting_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                sizes["in"] += len(message.get("body", b""))
            return message

        async def tagging_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != REQUEST_ID_HEADER]
                headers.append((REQUEST_ID_HEADER, request_id.encode("latin-1")))
                message = {**message, "headers": headers}
            elif message["type"] == "http.response.body":
                sizes["out"] += len(message.get("body", b""))
            await send(message)

        token = metrics.current_service.set(self.service)
        metrics.HTTP_IN_PROGRESS.inc()
        try:
            await self.app(scope, counting_receive, tagging_send)
        finally:
            metrics.HTTP_IN_PROGRESS.dec()
            metrics.current_service.reset(token)
            seconds = time.perf_counter() - started
            route = route_of(scope)
            metrics.record_request(route, method_of(scope), status, seconds)
            _log_access(scope, request_id, route, status, seconds, sizes)


def _log_access(scope: Scope, request_id: str, route: str, status: int, seconds: float,
                sizes: dict[str, int]) -> None:
    if not access_log.isEnabledFor(logging.INFO):
        return
    client = scope.get("client")
    line: dict[str, Any] = {
        "ts": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "request_id": request_id,
        "method": scope["method"],
        "route": route,
        "path": scope.get("path", ""),
        "status": status,
        "duration_ms": round(seconds * 1000, 3),
        "bytes_in": sizes["in"],
        "bytes_out": sizes["out"],
        "client": client[0] if client else None,
        # the name of the API key (set by authentication), never the key itself
        "key": (scope.get("state") or {}).get("key_name"),
    }
    access_log.info(json.dumps(line))


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (test runners swap it)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _: object) -> None:
        pass


def configure_access_log() -> None:
    """Send access lines to stderr as bare JSON, unless the logger was configured already
    (by an operator's logging config or a test's handler)."""
    if access_log.handlers:
        return
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    access_log.addHandler(handler)
    access_log.setLevel(logging.INFO)
    access_log.propagate = False  # the root handler's format would wrap the JSON


def install(app: FastAPI, settings: Settings) -> None:
    """Add the middleware (outermost: Starlette runs the last added first) and report the
    app's collections at scrape time."""
    service = app.state.service
    metrics.watch(service)
    configure_access_log()
    app.add_middleware(ObservabilityMiddleware, service=service)
