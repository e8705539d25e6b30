"""Python client for the embedsvc HTTP API, sync (:class:`Client`) and async (:class:`AsyncClient`).

This module depends only on httpx and the standard library, so it can be used where
torch and FAISS are not installed. Each endpoint is described once, in :class:`_Endpoints`,
as a request plus a parser; the two clients differ only in how they send it, so they
cannot drift apart.

Example::

    from embedsvc.client import Client
    with Client("http://127.0.0.1:8000") as client:
        result = client.search("scifact", "vitamin D deficiency", k=5)
        for hit in result.hits:
            print(hit.score, hit.id, hit.title)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx

T = TypeVar("T")

DEFAULT_URL = "http://127.0.0.1:8000"


class EmbedsvcError(Exception):
    """The server refused a request; ``message`` is its explanation of what to change."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


class BadRequest(EmbedsvcError):
    pass


class NotFound(EmbedsvcError):
    pass


class Conflict(EmbedsvcError):
    pass


class PayloadTooLarge(EmbedsvcError):
    pass


class Unavailable(EmbedsvcError):
    pass


class ServerError(EmbedsvcError):
    pass


class ConnectionFailed(EmbedsvcError):
    """The server could not be reached at all."""


_BY_STATUS = {400: BadRequest, 404: NotFound, 409: Conflict, 413: PayloadTooLarge,
              422: BadRequest, 503: Unavailable}


@dataclass
class Passage:
    """The passage of a document that matched a dense search."""

    ord: int
    start: int
    end: int
    text: str


@dataclass
class Hit:
    id: str
    score: float
    title: str
    text: str | None = None
    metadata: dict[str, Any] | None = None
    passage: Passage | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Hit:
        passage = data.get("passage")
        return cls(**{**data, "passage": Passage(**passage) if passage else None})


@dataclass
class SearchResult:
    collection: str
    mode: str
    fallback: str | None
    index_version: int | None
    took_ms: float
    hits: list[Hit]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SearchResult:
        return cls(**{**data, "hits": [Hit.from_json(h) for h in data["hits"]]})


@dataclass
class CollectionInfo:
    name: str
    documents: int
    index_version: int | None
    model: str | None
    index: dict[str, Any] | None = None
    model_state: str | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CollectionInfo:
        known = {k: data.get(k) for k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass
class Document:
    id: str
    title: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class Embeddings:
    model: str
    dim: int
    vectors: list[list[float]]


@dataclass(frozen=True)
class _Call(Generic[T]):
    method: str
    path: str
    parse: Callable[[Any], T]
    json: Any = None


def _raise_for(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        error = response.json()["error"]
        code, message = error["code"], error["message"]
    except (ValueError, KeyError, TypeError):
        code, message = "http_error", response.text[:500] or response.reason_phrase
    kind = _BY_STATUS.get(response.status_code)
    if kind is None:
        kind = ServerError if response.status_code >= 500 else EmbedsvcError
    raise kind(response.status_code, code, message)


def _segment(value: str) -> str:
    return quote(value, safe="")


class _Endpoints:
    """One method per endpoint. ``_send`` returns the parsed value (sync) or an awaitable."""

    def _send(self, call: _Call[T]) -> Any:
        raise NotImplementedError

    def healthz(self) -> dict[str, Any]:
        return self._send(_Call("GET", "/healthz", dict))

    def readyz(self) -> dict[str, Any]:
        """Readiness; 503 (raised as Unavailable) while a model is still loading."""
        return self._send(_Call("GET", "/readyz", dict))

    def list_collections(self) -> list[str]:
        return self._send(_Call("GET", "/v1/collections", lambda j: list(j["collections"])))

    def get_collection(self, name: str) -> CollectionInfo:
        return self._send(_Call("GET", f"/v1/collections/{_segment(name)}",
                                CollectionInfo.from_json))

    def search(self, collection: str, query: str, k: int = 10, mode: str = "auto",
               model: str | None = None, include_text: bool = False,
               include_metadata: bool = False) -> SearchResult:
        """Search a collection; ``result.mode`` and ``result.fallback`` say what answered."""
        body = {"query": query, "k": k, "mode": mode, "model": model,
                "include_text": include_text, "include_metadata": include_metadata}
        return self._send(_Call("POST", f"/v1/collections/{_segment(collection)}/search",
                                SearchResult.from_json, body))

    def get_document(self, collection: str, doc_id: str) -> Document:
        path = f"/v1/collections/{_segment(collection)}/documents/{_segment(doc_id)}"
        return self._send(_Call("GET", path, lambda j: Document(**j)))

    def embed(self, texts: list[str], model: str | None = None) -> Embeddings:
        return self._send(_Call("POST", "/v1/embed", lambda j: Embeddings(**j),
                                {"texts": texts, "model": model}))


class Client(_Endpoints):
    """Blocking client; use as a context manager or call :meth:`close`."""

    def __init__(self, base_url: str = DEFAULT_URL, timeout: float = 30.0,
                 transport: httpx.BaseTransport | None = None):
        self._http = httpx.Client(base_url=base_url, timeout=timeout, transport=transport)

    def _send(self, call: _Call[T]) -> T:
        try:
            response = self._http.request(call.method, call.path, json=call.json)
        except httpx.TransportError as exc:
            raise ConnectionFailed(0, "connection", f"{self._http.base_url}: {exc}") from exc
        _raise_for(response)
        return call.parse(response.json())

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient(_Endpoints):
    """The same methods as :class:`Client`, each returning an awaitable."""

    def __init__(self, base_url: str = DEFAULT_URL, timeout: float = 30.0,
                 transport: httpx.AsyncBaseTransport | None = None):
        self._http = httpx.AsyncClient(base_url=base_url, timeout=timeout, transport=transport)

    async def _send(self, call: _Call[T]) -> T:
        try:
            response = await self._http.request(call.method, call.path, json=call.json)
        except httpx.TransportError as exc:
            raise ConnectionFailed(0, "connection", f"{self._http.base_url}: {exc}") from exc
        _raise_for(response)
        return call.parse(response.json())

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
