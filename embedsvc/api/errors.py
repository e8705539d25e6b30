"""Every error a client can cause becomes a 4xx with a message saying what to change.

Handlers map our domain exceptions to status codes in one place; anything unmapped is
a bug, logged with its traceback and answered with a 500 that hides internals.
"""

from __future__ import annotations

import logging
import sqlite3

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from embedsvc.collection import CollectionBusy, CollectionError, CollectionExists, CollectionNotFound
from embedsvc.encoders import ModelError
from embedsvc.search.filters import FilterError
from embedsvc.search.searcher import SearchConflict, SearchUnavailable

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error raised by a route with its status, a stable code and a message."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def error_response(status: int, code: str, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status, headers=headers)


_DOMAIN = [
    (CollectionNotFound, 404, "not_found"),
    (FilterError, 422, "invalid_request"),
    (CollectionExists, 409, "exists"),
    (CollectionBusy, 409, "busy"),
    (CollectionError, 400, "bad_request"),
    (SearchConflict, 409, "conflict"),
    (SearchUnavailable, 503, "unavailable"),
    (ModelError, 503, "model_unavailable"),
]


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        if err.get("type") == "json_invalid":
            parts.append("the body is not valid JSON: send a JSON object")
        else:
            parts.append(f"{loc or 'body'}: {err.get('msg')}")
    return "; ".join(parts) or "invalid request"


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "invalid_request", _describe_validation(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = "no such endpoint; see /docs for the API"
        if exc.status_code == 400 and "parsing the body" in message:
            message = "the body could not be parsed: send UTF-8 encoded JSON"
        code = {413: "too_large", 400: "invalid_body"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, message, getattr(exc, "headers", None))

    @app.exception_handler(UnicodeEncodeError)
    async def _not_unicode(_: Request, exc: UnicodeEncodeError) -> JSONResponse:
        # JSON's "\\ud800" decodes to a lone surrogate, which no UTF-8 store can hold
        return error_response(422, "invalid_request", f"the request holds text that is not "
                              f"valid Unicode ({exc.reason}); send UTF-8 text")

    @app.exception_handler(OverflowError)
    async def _overflow(_: Request, exc: OverflowError) -> JSONResponse:
        return error_response(422, "invalid_request", "a number in the request is beyond 64-bit "
                              "integers; send a smaller one")

    @app.exception_handler(sqlite3.OperationalError)
    async def _busy(request: Request, exc: sqlite3.OperationalError) -> JSONResponse:
        if "locked" not in str(exc) and "busy" not in str(exc):
            return await _bug(request, exc)
        log.warning("database busy past its timeout on %s %s", request.method, request.url.path)
        return error_response(503, "busy", "the collection is busy with a long write (a build "
                              "switching in); retry shortly", {"Retry-After": "5"})

    for exc_type, status, code in _DOMAIN:
        def handler(_: Request, exc: Exception, status: int = status, code: str = code) -> JSONResponse:
            headers = {"Retry-After": "5"} if status == 503 else None
            return error_response(status, code, str(exc), headers)

        app.add_exception_handler(exc_type, handler)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal", "internal error (a bug): see the server log")
