# Generated from embedsvc/client/_sync.py by embedsvc/client/_generate.py: do not edit.
"""The asyncio client: the same methods as :class:`~embedsvc.client.Client`, each a coroutine.

Generated from ``_sync.py``; edit that file and run ``python embedsvc/client/_generate.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import httpx

from embedsvc import __version__
from embedsvc.client import _routes as routes
from embedsvc.client._errors import EmbedsvcError, connection_failed
from embedsvc.client._retry import RetryPolicy, log_retry
from embedsvc.client._routes import collection_names as _collection_names
from embedsvc.client._routes import document_body as _document_body
from embedsvc.client._routes import job_list as _job_list
from embedsvc.responses import (
    CollectionInfo,
    Deleted,
    DeleteResult,
    Document,
    Embeddings,
    Health,
    Job,
    Readiness,
    SearchResult,
    Snapshot,
    UpsertResult,
)

T = TypeVar("T")

DEFAULT_URL = "http://127.0.0.1:8000"


class AsyncClient:
    """A client of one embedsvc server; use it as a context manager or call :meth:`aclose`.

    ``api_key`` is sent as ``Authorization: Bearer <key>`` and shown nowhere (not in repr,
    not in exceptions). ``timeout`` (seconds, or an ``httpx.Timeout``) bounds each attempt.
    Calls that are safe to repeat are tried up to ``retries`` more times after a connection
    failure, a 429 or a 503, waiting ``backoff * 2**attempt`` seconds at most (with full
    jitter, capped at ``max_backoff``) or what the server's ``Retry-After`` says. Other calls
    are retried only when the connection could not be made at all, since the server then
    never saw them. ``transport`` replaces httpx's network transport (for tests).
    """

    def __init__(
        self, base_url: str = DEFAULT_URL, *, api_key: str | None = None, timeout: float | httpx.Timeout = 30.0,
        retries: int = 3, backoff: float = 0.25, max_backoff: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        headers = {"User-Agent": f"embedsvc-client/{__version__}"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._has_key = bool(api_key)
        self._retry = RetryPolicy(retries, backoff, max_backoff)
        self._http = httpx.AsyncClient(base_url=base_url, timeout=timeout, headers=headers, transport=transport)

    def __repr__(self) -> str:
        key = "'***'" if self._has_key else "None"
        return (f"{type(self).__name__}(base_url='{self._http.base_url}', api_key={key}, "
                f"retries={self._retry.retries})")

    # --- sending ----------------------------------------------------------------------------
    async def _send(self, call: routes.Call[T]) -> T:
        """Send ``call``, trying again while the retry policy says it is worth it."""
        attempt = 0
        while True:
            try:
                return await self._attempt(call)
            except EmbedsvcError as error:
                wait = self._retry.wait_before_retry(error, attempt, call.route.idempotent)
                if wait is None:
                    raise
                log_retry(call.route.method, call.path, attempt, self._retry, error, wait)
            await asyncio.sleep(wait)
            attempt += 1

    async def _attempt(self, call: routes.Call[T]) -> T:
        try:
            response = await self._http.request(call.route.method, call.path, json=call.body)
        except httpx.TransportError as exc:
            raise connection_failed(exc, self._http.base_url) from exc
        return call.answer(response)

    # --- the API ----------------------------------------------------------------------------
    async def healthz(self) -> Health:
        """Liveness: the server process is up and answering."""
        return await self._send(routes.HEALTHZ.call(Health.model_validate))

    async def readyz(self) -> Readiness:
        """Readiness: ``status`` is "ready" once every model and index is loaded, else
        "degraded" (200), "starting" or "stopping" (the server's 503 is returned, not raised)."""
        return await self._send(routes.READYZ.call(Readiness.model_validate))

    async def list_collections(self) -> list[str]:
        return await self._send(routes.LIST_COLLECTIONS.call(_collection_names))

    async def get_collection(self, name: str) -> CollectionInfo:
        return await self._send(routes.GET_COLLECTION.call(CollectionInfo.model_validate, name=name))

    async def create_collection(
        self, name: str, model: str | None = None, indexed_fields: list[str] | None = None,
        dimension: int | None = None,
    ) -> CollectionInfo:
        """An empty collection whose documents the server embeds with ``model`` (default:
        the server's); ``indexed_fields`` are metadata fields indexed for fast filters. With
        ``dimension`` and no ``model``, its documents carry their own vectors."""
        body = {"name": name, "model": model, "indexed_fields": indexed_fields or [],
                "dimension": dimension}
        return await self._send(routes.CREATE_COLLECTION.call(CollectionInfo.model_validate, body))

    async def delete_collection(self, name: str) -> None:
        await self._send(routes.DELETE_COLLECTION.call(Deleted.model_validate, name=name))

    async def search(
        self, collection: str, query: str | None = None, k: int = 10, mode: str = "auto",
        model: str | None = None, include_text: bool = False, include_metadata: bool = False,
        filter: dict[str, Any] | None = None, rrf_k: int | None = None,
        dense_weight: float | None = None, lexical_weight: float | None = None,
        vector: Sequence[float] | None = None,
    ) -> SearchResult:
        """Search a collection by text ``query`` or by a ``vector`` made elsewhere (dense);
        ``result.mode`` and ``result.fallback`` say what answered.

        ``filter`` restricts every mode to documents whose metadata match, e.g.
        ``{"year": {"$gte": 2015}, "kind": {"$in": ["review", "trial"]}}``; ``rrf_k`` and the
        weights tune hybrid fusion (the server's settings when None).
        """
        body = {"query": query, "k": k, "mode": mode, "model": model, "filter": filter,
                "vector": [float(x) for x in vector] if vector is not None else None,
                "rrf_k": rrf_k, "dense_weight": dense_weight, "lexical_weight": lexical_weight,
                "include_text": include_text, "include_metadata": include_metadata}
        return await self._send(routes.SEARCH.call(SearchResult.model_validate, body, name=collection))

    async def upsert(self, collection: str, documents: Sequence[Document | Mapping[str, Any]]) -> UpsertResult:
        """Insert or replace documents (``id``, ``text``, optional ``title``, ``metadata`` and
        ``vector``: one made elsewhere, stored instead of embedding the text), given as
        :class:`Document` models or dicts.

        Returns once the write is committed: lexical search sees it at once, dense search
        once the server has embedded it (see ``get_collection(...).pending``).
        """
        body = {"documents": [_document_body(d) for d in documents]}
        return await self._send(routes.UPSERT.call(UpsertResult.model_validate, body, name=collection))

    async def delete(
        self, collection: str, ids: list[str] | None = None, filter: dict[str, Any] | None = None,
    ) -> DeleteResult:
        """Delete documents by ids, or every document ``filter`` matches (never retried:
        documents written in between could match too)."""
        route = routes.DELETE_BY_IDS if filter is None else routes.DELETE_BY_FILTER
        body = {"ids": ids, "filter": filter}
        return await self._send(route.call(DeleteResult.model_validate, body, name=collection))

    async def get_document(self, collection: str, doc_id: str) -> Document:
        call = routes.GET_DOCUMENT.call(Document.model_validate, name=collection, doc_id=doc_id)
        return await self._send(call)

    async def compact(self, collection: str) -> Job:
        """Start folding fresh and deleted vectors into a new index version; poll :meth:`job`."""
        return await self._send(routes.COMPACT.call(Job.model_validate, name=collection))

    async def snapshot(self, collection: str) -> Snapshot:
        """Write a consistent snapshot on the server (admin); restore it there with
        ``embedsvc restore PATH``."""
        return await self._send(routes.SNAPSHOT.call(Snapshot.model_validate, name=collection))

    async def job(self, job_id: str) -> Job:
        return await self._send(routes.GET_JOB.call(Job.model_validate, job_id=job_id))

    async def jobs(self) -> list[Job]:
        return await self._send(routes.LIST_JOBS.call(_job_list))

    async def embed(self, texts: list[str], model: str | None = None) -> Embeddings:
        body = {"texts": texts, "model": model}
        return await self._send(routes.EMBED.call(Embeddings.model_validate, body))

    # --- lifetime ---------------------------------------------------------------------------
    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
