"""What a request body must be before any route sees it: under the size limit (an ASGI
middleware, 413) and JSON (a route class, 400/415).

The middleware checks Content-Length up front and counts streamed bytes as well, so a
client that lies about the length or streams chunked data is cut off all the same.

JSON bodies are parsed here rather than by FastAPI so that each kind of bad body gets one
status, code and message saying what to send (FastAPI answers undecodable bytes, 10,000
levels of nesting and a 5,000-digit number all with one vague 400, and lets 900 levels
through to crash recursive code later):

=====================================  =======  ======================  ===========
body                                   status   code                    checked by
=====================================  =======  ======================  ===========
over EMBEDSVC_MAX_BODY_BYTES           413      too_large               middleware
missing (empty) where one is needed    400      invalid_json            JsonRoute
Content-Type missing or not JSON       415      unsupported_media_type  JsonRoute
not UTF-8                              400      invalid_json            JsonRoute
not JSON (syntax, BOM, huge number)    400      invalid_json            JsonRoute
nested deeper than JSON_MAX_DEPTH      400      invalid_json            JsonRoute
text that is not Unicode (\\ud800)      422      invalid_request         JsonRoute
JSON of the wrong shape or type        422      invalid_request         the schemas
over a limit of the settings           413/422  too_large, invalid_*    checks.py
=====================================  =======  ======================  ===========
"""

from __future__ import annotations

import email.message
import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from embedsvc.api.auth import authorize_request
from embedsvc.api.openai_errors import is_openai_path, openai_error_body
from embedsvc.search.filters import encodable

# Nesting a JSON body may have. Legitimate bodies stay far below it (a filter at the
# EMBEDSVC_MAX_FILTER_DEPTH default of 8 is about 20 levels); without it, a body nested a
# few hundred levels parses and then exhausts Python's recursion in code that walks it.
JSON_MAX_DEPTH = 64


def too_large_message(max_bytes: int) -> str:
    return (f"request body over {max_bytes} bytes; send less per call "
            "(raise EMBEDSVC_MAX_BODY_BYTES on the server if you must)")


class BodyTooLarge(HTTPException):
    """Raised from ``receive``; an HTTPException so FastAPI's body parsing lets it through."""

    code = "too_large"

    def __init__(self, max_bytes: int):
        super().__init__(413, too_large_message(max_bytes))


class BadBody(HTTPException):
    """A body that is not JSON at all (400) or not declared as JSON (415). An HTTPException
    because FastAPI turns any other exception raised while it reads the body into its own
    vague 400."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(status, message)
        self.code = code


def parse_json(raw: bytes, max_depth: int = JSON_MAX_DEPTH) -> Any:
    """The body as JSON, or :class:`BadBody` saying what is wrong with it and what to send."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadBody(400, "invalid_json", f"the body is not UTF-8 (byte {exc.start} is not valid); "
                                           "send JSON encoded as UTF-8") from exc
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadBody(400, "invalid_json", f"the body is not valid JSON ({exc.msg} at line {exc.lineno}, "
                                           f"column {exc.colno}); send a JSON object") from exc
    except RecursionError as exc:
        raise too_deep(max_depth) from exc
    except ValueError as exc:  # an integer of more than 4,300 digits
        raise BadBody(400, "invalid_json", f"the body holds a number JSON parsing refuses ({exc}); "
                                           "send numbers of at most 64 bits") from exc
    check_tree(value, max_depth)
    return value


def too_deep(max_depth: int) -> BadBody:
    return BadBody(400, "invalid_json", f"the body nests JSON arrays and objects deeper than {max_depth} "
                                        "levels; send a flatter JSON object")


def check_tree(value: Any, max_depth: int) -> None:
    """Refuse nesting over ``max_depth`` (400) and text that is not valid Unicode (422).

    JSON's ``"\\ud800"`` is valid JSON but decodes to a lone surrogate, which no UTF-8
    store, tokenizer or response can hold; checked here once for every field of every
    body (keys too) rather than by each piece of code it would otherwise crash. Walked
    without recursion, since the value may be nested as deep as the parser allowed.
    """
    if isinstance(value, str) and not encodable(value):
        raise not_unicode("body")
    stack: list[tuple[Any, int, str]] = [(value, 1, "")]
    while stack:
        item, depth, where = stack.pop()
        if isinstance(item, dict):
            children = [(f"{where}.{key}" if where else str(key), child) for key, child in item.items()]
            keys = list(item)
        elif isinstance(item, list):
            children, keys = [(f"{where}[{i}]", child) for i, child in enumerate(item)], []
        else:
            continue
        if depth > max_depth:
            raise too_deep(max_depth)
        for text, place in [(k, f"a key in {where or 'the body'}") for k in keys] + [(c, p) for p, c in children]:
            if isinstance(text, str) and not encodable(text):
                raise not_unicode(place)
        stack.extend((child, depth + 1, path) for path, child in children if isinstance(child, dict | list))


def not_unicode(place: str) -> BadBody:
    return BadBody(422, "invalid_request", f"{place[:200]}: text that is not valid Unicode (a lone surrogate "
                                           "such as \\ud800); send UTF-8 text")


def is_json_type(content_type: str | None) -> bool:
    """application/json or application/*+json. A missing or other type is refused, as
    FastAPI does by default: a browser sends such a body cross-site without asking first
    (a "simple request"), so accepting it would open the API to CSRF."""
    if not content_type:
        return False
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))


class JsonRequest(Request):
    """A request whose ``json()`` is :func:`parse_json`."""

    async def json(self) -> Any:
        if not hasattr(self, "_parsed_json"):
            self._parsed_json = parse_json(await self.body())
        return self._parsed_json


class JsonRoute(APIRoute):
    """A route whose JSON body is read by :class:`JsonRequest` and refused, before FastAPI
    validates it, when it is missing or declared as something other than JSON."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        takes_body = self.body_field is not None

        async def handle(request: Request) -> Response:
            request = JsonRequest(request.scope, request.receive)
            authorize_request(request)  # before a byte of the body is read
            if takes_body:
                await check_body(request)
            return await handler(request)

        return handle


async def check_body(request: Request) -> None:
    """A body is there and is declared as JSON (FastAPI would pass anything else on as
    bytes, to be refused as 'Input should be a valid dictionary')."""
    if not await request.body():
        raise BadBody(400, "invalid_json", "the request has no body; send a JSON object")
    content_type = request.headers.get("content-type")
    if not is_json_type(content_type):
        sent = f"as {content_type!r}" if content_type else "without a Content-Type"
        raise BadBody(415, "unsupported_media_type", f"the body is sent {sent}; send JSON with the "
                                                     "header Content-Type: application/json")


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    def _message(self, path: str) -> bytes:
        if is_openai_path(path):  # the OpenAI-compatible routes answer in OpenAI's shape
            return json.dumps(openai_error_body(413, "too_large", too_large_message(self.max_bytes))).encode()
        error = {"code": "too_large", "message": too_large_message(self.max_bytes)}
        return json.dumps({"error": error}).encode()

    async def _refuse(self, send: Send, path: str) -> None:
        body = self._message(path)
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._refuse(send, scope.get("path", ""))
            return
        seen = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await self._refuse(send, scope.get("path", ""))
