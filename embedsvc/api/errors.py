"""Every error a client can cause becomes a 4xx with a message saying what to change.

Handlers map our domain exceptions to status codes in one place; anything unmapped is
a bug, logged with its traceback and answered with a 500 that hides internals.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable, Iterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Match

from embedsvc.api.openai_errors import is_openai_path, openai_error_response
from embedsvc.collection import CollectionBusy, CollectionError, CollectionExists, CollectionNotFound
from embedsvc.encoders import ModelError
from embedsvc.responses import ErrorResponse
from embedsvc.search.filters import FilterError
from embedsvc.search.searcher import SearchConflict, SearchUnavailable
from embedsvc.vectors_in import VectorMismatch

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error raised by a route with its status, a stable code and a message."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def error_response(status: int, code: str, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status, headers=headers)


_DESCRIPTIONS = {
    400: "The body is not JSON (`invalid_json`), or a collection name breaks the naming rule "
         "(`bad_request`).",
    404: "No such collection, document, job or model (`not_found`).",
    409: "Conflicts with the collection's state (`exists`, `busy`, `conflict`).",
    413: "The body, a batch or a document is over a limit of the settings (`too_large`).",
    415: "The body is not sent as `application/json` (`unsupported_media_type`).",
    422: "JSON that breaks the schema or a limit (`invalid_request`, `invalid_filter`).",
    503: "A model is loading or failed, or the database is busy; retry after `Retry-After` seconds.",
}
_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying.",
                                "schema": {"type": "string", "pattern": "^[0-9]+$"}}}
# What every route that reads a JSON body can answer about the body itself.
JSON_BODY = (400, 413, 415, 422)


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI declarations of the error answers a route can give, all :class:`ErrorResponse`."""
    declared: dict[int | str, dict[str, Any]] = {}
    for status in sorted(set(statuses)):
        declared[status] = {"model": ErrorResponse, "description": _DESCRIPTIONS[status]}
        if status == 503:
            declared[status]["headers"] = _RETRY_AFTER
    return declared


_DOMAIN = [
    (CollectionNotFound, 404, "not_found"),
    (FilterError, 422, "invalid_request"),
    (CollectionExists, 409, "exists"),
    (CollectionBusy, 409, "busy"),
    (VectorMismatch, 422, "invalid_request"),
    (CollectionError, 400, "bad_request"),
    (SearchConflict, 409, "conflict"),
    (SearchUnavailable, 503, "unavailable"),
    (ModelError, 503, "model_unavailable"),
]


_JSON_KINDS = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
               float: "a number", type(None): "null"}


def _describe_validation(exc: RequestValidationError) -> str:
    """Each error as 'where: what' and, for a wrong type, what was sent ("k": "5" is refused:
    requests are strict, so a string, 5.0 or true is never taken for an integer)."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        message = f"{loc or 'body'}: {err.get('msg')}"
        if str(err.get("type", "")).endswith("_type") and "input" in err:
            message += f" (got {_JSON_KINDS.get(type(err['input']), 'another type')})"
        parts.append(message)
    return "; ".join(parts) or "invalid request"


def _routes(routes: Iterable[BaseRoute]) -> Iterator[BaseRoute]:
    """The routes of an app, those of included routers too (FastAPI keeps an included
    router as one entry; this app includes them without a prefix of their own)."""
    for route in routes:
        included = getattr(route, "original_router", None)
        yield from _routes(included.routes) if included is not None else [route]


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route serves on this path (the 405 of Starlette and FastAPI names
    only the methods of the first route whose path matched)."""
    methods: set[str] = set()
    for route in _routes(request.app.router.routes):
        methods_of = getattr(route, "methods", None)
        if methods_of and route.matches(dict(request.scope))[0] != Match.NONE:
            methods |= methods_of
    return sorted(methods)


_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "too_large",
          415: "unsupported_media_type"}


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        if any(err.get("type") == "json_invalid" for err in exc.errors()):  # a route not parsing with JsonRoute
            return error_response(400, "invalid_json", "the body is not valid JSON; send a JSON object")
        return error_response(422, "invalid_request", _describe_validation(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 404 and message == "Not Found":
            message = "no such endpoint; see /docs for the API"
        if exc.status_code == 400 and "parsing the body" in message:
            message = "the body could not be parsed; send a JSON object encoded as UTF-8"
        if exc.status_code == 405:
            allowed = _allowed_methods(request)
            headers["Allow"] = ", ".join(allowed)
            message = f"{request.method} is not served on {request.url.path[:200]}; use {' or '.join(allowed)}"
        code = getattr(exc, "code", None) or _CODES.get(exc.status_code, "http_error")
        if is_openai_path(request.url.path):  # e.g. a 405 on /v1/embeddings: in OpenAI's shape
            return openai_error_response(exc.status_code, code, message, headers=headers or None)
        return error_response(exc.status_code, code, message, headers or None)

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
