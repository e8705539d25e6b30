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
from dataclasses import asdict, dataclass, field
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


def _known(cls: type[T], data: dict[str, Any]) -> T:
    """The fields this client knows: a newer server may send more."""
    return cls(**{k: data.get(k) for k in cls.__dataclass_fields__})  # type: ignore[attr-defined]


@dataclass
class CollectionInfo:
    """What a collection holds: ``fresh_vectors`` are searched exactly until the next
    compaction, ``deleted_vectors`` are skipped until then, ``pending`` documents are
    answered lexically until the server has embedded them."""

    name: str
    documents: int
    index_version: int | None
    model: str | None
    index: dict[str, Any] | None = None
    model_state: str | None = None
    indexed_vectors: int = 0
    fresh_vectors: int = 0
    deleted_vectors: int = 0
    pending: int = 0
    layout: str | None = None
    indexed_fields: list[str] = field(default_factory=list)
    complete: bool = True
    leader: str | None = None
    last_compaction: float | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CollectionInfo:
        return _known(cls, data)


@dataclass
class Document:
    id: str
    title: str = ""
    text: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class WriteResult:
    """A committed write; ``seq`` numbers it (later writes have larger numbers)."""

    collection: str
    seq: int
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    missing: list[str] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WriteResult:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


@dataclass
class Job:
    """A background job (a compaction): ``state`` is queued, running, done or failed."""

    id: str
    collection: str
    kind: str
    state: str
    phase: str | None = None
    progress: float = 0.0
    error: str | None = None
    result: dict[str, Any] = field(default_factory=dict)
    attempts: int = 0
    created_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed")

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Job:
        return _known(cls, data)


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

    def create_collection(self, name: str, model: str | None = None,
                          indexed_fields: list[str] | None = None) -> CollectionInfo:
        """An empty collection whose documents the server embeds with ``model`` (default:
        the server's); ``indexed_fields`` are metadata fields indexed for fast filters."""
        body = {"name": name, "model": model, "indexed_fields": indexed_fields or []}
        return self._send(_Call("POST", "/v1/collections", CollectionInfo.from_json, body))

    def delete_collection(self, name: str) -> None:
        return self._send(_Call("DELETE", f"/v1/collections/{_segment(name)}", lambda j: None))

    def search(self, collection: str, query: str, k: int = 10, mode: str = "auto",
               model: str | None = None, include_text: bool = False,
               include_metadata: bool = False, filter: dict[str, Any] | None = None,
               rrf_k: int | None = None, dense_weight: float | None = None,
               lexical_weight: float | None = None) -> SearchResult:
        """Search a collection; ``result.mode`` and ``result.fallback`` say what answered.

        ``filter`` restricts every mode to documents whose metadata match, e.g.
        ``{"year": {"$gte": 2015}, "kind": {"$in": ["review", "trial"]}}``; ``rrf_k`` and the
        weights tune hybrid fusion (the server's settings when None).
        """
        body = {"query": query, "k": k, "mode": mode, "model": model, "filter": filter,
                "rrf_k": rrf_k, "dense_weight": dense_weight, "lexical_weight": lexical_weight,
                "include_text": include_text, "include_metadata": include_metadata}
        return self._send(_Call("POST", f"/v1/collections/{_segment(collection)}/search",
                                SearchResult.from_json, body))

    def upsert(self, collection: str, documents: list[Document | dict[str, Any]]) -> WriteResult:
        """Insert or replace documents (``id``, ``text``, optional ``title`` and ``metadata``).

        Returns once the write is committed: lexical search sees it at once, dense search
        once the server has embedded it (see ``get_collection(...).pending``).
        """
        body = {"documents": [asdict(d) if isinstance(d, Document) else d for d in documents]}
        return self._send(_Call("PUT", f"/v1/collections/{_segment(collection)}/documents",
                                WriteResult.from_json, body))

    def delete(self, collection: str, ids: list[str] | None = None,
               filter: dict[str, Any] | None = None) -> WriteResult:
        """Delete documents by ids, or every document ``filter`` matches."""
        body = {"ids": ids, "filter": filter}
        return self._send(_Call("POST", f"/v1/collections/{_segment(collection)}/documents/delete",
                                WriteResult.from_json, body))

    def get_document(self, collection: str, doc_id: str) -> Document:
        path = f"/v1/collections/{_segment(collection)}/documents/{_segment(doc_id)}"
        return self._send(_Call("GET", path, lambda j: Document(**j)))

    def compact(self, collection: str) -> Job:
        """Start folding fresh and deleted vectors into a new index version; poll ``job``."""
        return self._send(_Call("POST", f"/v1/collections/{_segment(collection)}/compact",
                                Job.from_json))

    def job(self, job_id: str) -> Job:
        return self._send(_Call("GET", f"/v1/jobs/{_segment(job_id)}", Job.from_json))

    def jobs(self) -> list[Job]:
        return self._send(_Call("GET", "/v1/jobs", lambda j: [Job.from_json(x) for x in j["jobs"]]))

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
