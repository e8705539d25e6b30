"""The exceptions of the client, one class per kind of refusal, built from the server's
``{"error": {"code", "message"}}`` body so callers can catch what they can act on."""

from __future__ import annotations

import time
from email.utils import parsedate_to_datetime

import httpx
from pydantic import ValidationError

from embedsvc.responses import ErrorResponse


class EmbedsvcError(Exception):
    """The server refused a call (or could not be reached: ``status`` 0).

    ``code`` is the server's stable machine-readable code, ``message`` its explanation of
    what to change; ``str(exc)`` shows both with the HTTP status.
    """

    def __init__(self, status: int, code: str, message: str):
        super().__init__(status, code, message)
        self.status, self.code, self.message = status, code, message

    def __str__(self) -> str:
        where = f"HTTP {self.status} {self.code}" if self.status else self.code
        return f"{self.message} ({where})"


class InvalidRequest(EmbedsvcError):
    """400 or 422: the request itself is wrong; sending it again will not help."""


class PayloadTooLarge(InvalidRequest):
    """413: too many documents or bytes in one call; split it."""


class Unauthorized(EmbedsvcError):
    """401: no API key, or one the server does not know (or has revoked)."""


class Forbidden(EmbedsvcError):
    """403: the key is valid but its scope does not allow this call."""


class NotFound(EmbedsvcError):
    """404: no such collection, document, job or endpoint."""


class Conflict(EmbedsvcError):
    """409: the collection exists already, or is busy with another operation."""


class _RetryLater(EmbedsvcError):
    """A refusal that says when to come back (``Retry-After``, seconds; None if not sent)."""

    def __init__(self, status: int, code: str, message: str, retry_after: float | None = None):
        super().__init__(status, code, message)
        self.retry_after = retry_after

    def __reduce__(self):  # keep retry_after across pickling (multiprocessing, logging)
        return type(self), (self.status, self.code, self.message, self.retry_after)


class RateLimited(_RetryLater):
    """429: over the key's rate limit."""


class Unavailable(_RetryLater):
    """503: the server is busy or a model is not loaded yet; try again shortly."""


class ServerError(EmbedsvcError):
    """Any other 5xx: a bug or a failure on the server's side."""


class ConnectionFailed(EmbedsvcError):
    """The server could not be reached, or the connection broke before an answer came.

    ``sent`` is False when the request certainly never reached the server (the connection
    was not established), which makes it safe to retry even a call that is not idempotent.
    """

    def __init__(self, status: int, code: str, message: str, sent: bool = True):
        super().__init__(status, code, message)
        self.sent = sent

    def __reduce__(self):
        return type(self), (self.status, self.code, self.message, self.sent)


_BY_STATUS: dict[int, type[EmbedsvcError]] = {
    400: InvalidRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound, 409: Conflict,
    413: PayloadTooLarge, 422: InvalidRequest, 429: RateLimited, 503: Unavailable,
}


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date (RFC 9110).

    None when absent or unreadable; never negative (a date in the past means "now").
    ``now`` (a Unix time) is for tests.
    """
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # an HTTP date is always GMT
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


def _code_and_message(response: httpx.Response) -> tuple[str, str]:
    try:
        error = ErrorResponse.model_validate_json(response.content).error
        return error.code, error.message
    except ValidationError:
        return "http_error", response.text[:500].strip() or response.reason_phrase


def error_from_response(response: httpx.Response) -> EmbedsvcError:
    """The exception for an error answer (status >= 400)."""
    status = response.status_code
    code, message = _code_and_message(response)
    kind = _BY_STATUS.get(status) or (ServerError if status >= 500 else EmbedsvcError)
    if issubclass(kind, _RetryLater):
        return kind(status, code, message, parse_retry_after(response.headers.get("retry-after")))
    return kind(status, code, message)


def _never_sent(exc: httpx.TransportError) -> bool:
    """The connection was never made (or never taken from the pool), so the server cannot
    have seen the request."""
    return isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout))


def connection_failed(exc: httpx.TransportError, base_url: httpx.URL) -> ConnectionFailed:
    """A ConnectionFailed naming the server (never the key: httpx errors do not hold headers)."""
    reason = str(exc) or type(exc).__name__
    if _never_sent(exc):
        return ConnectionFailed(0, "connection", f"could not reach {base_url}: {reason}", sent=False)
    return ConnectionFailed(0, "connection", f"the connection to {base_url} failed before an answer "
                            f"came: {reason}", sent=True)


def unreadable_answer(response: httpx.Response, exc: ValueError) -> ServerError:
    """A success status whose body is not the JSON we expect (a proxy's page, a truncation)."""
    request = response.request
    return ServerError(response.status_code, "unreadable_answer",
                       f"the answer to {request.method} {request.url.path} could not be read: {exc}")
