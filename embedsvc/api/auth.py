"""Who may call which route: API keys with scopes, and per-key rate limits.

Every route's scope is written once, in :data:`SCOPES`, keyed by its operation id; a route
missing from the table needs ``admin`` (closed by default), and a test checks that the table
covers every route. With no keys configured everything is allowed: ``embedsvc serve`` then
binds to loopback only (see :func:`check_exposure`).
"""

from __future__ import annotations

import ipaddress
import math
import threading
import time
from collections import OrderedDict
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from embedsvc.keys import ApiKey, KeyRing, Scope
from embedsvc.responses import ErrorResponse
from embedsvc.settings import Settings

OPEN = None
# operation id -> scope needed (None: open to anyone, keys or not)
SCOPES: dict[str, Scope | None] = {
    "healthz": OPEN,
    "readyz": OPEN,
    "metrics": OPEN,  # or admin, by EMBEDSVC_METRICS_SCOPE
    "list_collections": Scope.read,
    "get_collection": Scope.read,
    "search": Scope.read,
    "get_document": Scope.read,
    "embed": Scope.read,
    "openai_embeddings": Scope.read,  # the OpenAI-compatible routes (routes/openai_compat.py)
    "openai_list_models": Scope.read,
    "openai_retrieve_model": Scope.read,
    "upsert_documents": Scope.write,
    "delete_documents": Scope.write,
    "create_collection": Scope.admin,
    "delete_collection": Scope.admin,
    "compact": Scope.admin,
    "snapshot_collection": Scope.admin,
    "list_jobs": Scope.admin,
    "get_job": Scope.admin,
}

AUTH_RESPONSES: dict[int | str, dict] = {
    401: {"model": ErrorResponse, "description": "No API key, or one that is not valid."},
    403: {"model": ErrorResponse, "description": "The key's scope does not allow this call."},
    429: {"model": ErrorResponse, "description": "Over the key's rate limit; see Retry-After."},
}

# Buckets kept for rate limiting by client address (no keys): oldest forgotten past this.
_MAX_BUCKETS = 10_000


class AuthError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str]):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


class TokenBucket:
    """``rate`` tokens a second up to ``burst``; a request takes one."""

    def __init__(self, rate: float, burst: int):
        self.rate, self.burst = rate, burst
        self.tokens, self.stamp = float(burst), time.monotonic()

    def take(self) -> float:
        """0 when a token was taken, else the seconds until one is available."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class Guard:
    """The keys and the rate limiters of one server process."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.keys = KeyRing(settings)
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self._lock = threading.Lock()

    def scope_of(self, operation_id: str | None) -> Scope | None:
        if operation_id == "metrics" and self.settings.metrics_scope == "admin":
            return Scope.admin
        return SCOPES.get(operation_id or "", Scope.admin)

    def authenticate(self, presented: str | None, needed: Scope, action: str,
                     client: str) -> ApiKey | None:
        """The caller's key (None when the server has no keys); AuthError if refused.
        Refused callers are rate limited by address, so guessing costs them too."""
        if not self.keys.enabled:
            return None
        how = "send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
        if not presented:
            self.throttle(f"client {client}")
            raise AuthError(401, "unauthorized", f"{action} needs an API key with the "
                            f"'{needed.name}' scope; {how}", {"WWW-Authenticate": "Bearer"})
        key = self.keys.find(presented)
        if key is None:
            self.throttle(f"client {client}")
            raise AuthError(401, "unauthorized", f"the API key is not valid (unknown or revoked); "
                            f"{action} needs one with the '{needed.name}' scope",
                            {"WWW-Authenticate": "Bearer"})
        if key.scope < needed:
            raise AuthError(403, "forbidden", f"key '{key.name}' has the '{key.scope.name}' scope; "
                            f"{action} needs '{needed.name}'", {})
        return key

    def throttle(self, who: str) -> None:
        rate = self.settings.rate_limit_per_second
        if rate <= 0:
            return
        with self._lock:
            bucket = self._buckets.pop(who, None) or TokenBucket(rate, self.settings.rate_limit_burst)
            self._buckets[who] = bucket  # most recent last
            if len(self._buckets) > _MAX_BUCKETS:
                self._buckets.popitem(last=False)
            wait = bucket.take()
        if wait > 0:
            retry = max(1, math.ceil(wait))
            raise AuthError(429, "rate_limited", f"'{who}' is over its limit of {rate:g} requests/s "
                            f"(burst {self.settings.rate_limit_burst}; EMBEDSVC_RATE_LIMIT_PER_SECOND, "
                            f"EMBEDSVC_RATE_LIMIT_BURST); retry in {retry} s",
                            {"Retry-After": str(retry)})


_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer <key>`.")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="Or the key in X-API-Key.")


async def authorize(request: Request,
                    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
                    header: Annotated[str | None, Depends(_header)]) -> None:
    """The API routes' dependency: its security parameters declare the key in the OpenAPI
    schema; the check itself is :func:`authorize_request` (done already, before the body
    was read, on routes that take one). async, as the check is in memory: a plain function
    would cost every request a trip through the thread pool."""
    authorize_request(request)


async def authorize_unlisted(request: Request) -> None:
    """The health routes' dependency, which the schema shows as open: they are, but for
    ``/metrics`` when ``EMBEDSVC_METRICS_SCOPE=admin`` (not in the schema)."""
    authorize_request(request)


def presented_key(request: Request) -> str | None:
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    bearer = credentials.strip() if scheme.lower() == "bearer" else ""
    return bearer or request.headers.get("x-api-key")


def authorize_request(request: Request) -> None:
    """Check the caller's key against the route's scope, then its rate limit, once per
    request; the key's name (never the key) is left in ``request.state.key_name`` for the
    access log."""
    state = request.scope.setdefault("state", {})
    if state.get("authorized"):
        return
    guard: Guard = request.app.state.guard
    operation = getattr(request.scope.get("route"), "operation_id", None)
    needed = guard.scope_of(operation)
    state["key_name"] = None
    if needed is not None:
        client = request.client.host if request.client else "?"
        key = guard.authenticate(presented_key(request), needed, operation or "this call", client)
        state["key_name"] = key.name if key else None
        guard.throttle(f"key {key.name}" if key else f"client {client}")
    state["authorized"] = True


def install(app: FastAPI, settings: Settings) -> None:
    app.state.guard = Guard(settings)

    @app.exception_handler(AuthError)
    async def _refused(_: Request, exc: AuthError) -> JSONResponse:
        return JSONResponse({"error": {"code": exc.code, "message": exc.message}}, exc.status,
                            headers=exc.headers)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(settings: Settings, host: str, keyed: bool) -> str | None:
    """Why serving on ``host`` is refused (None if it is not): without keys, anyone who can
    reach the port could write and delete, so only loopback is allowed unless asked."""
    if keyed or is_loopback(host) or settings.insecure:
        return None
    return (f"no API keys are configured, so serving on {host} would let anyone on the network "
            f"write and delete; create one with `embedsvc keys create --scope admin --name ops`, "
            f"or pass --insecure (EMBEDSVC_INSECURE=true) if something in front already checks callers")
