"""Python client for the embedsvc HTTP API, sync (:class:`Client`) and async (:class:`AsyncClient`).

It depends only on httpx, pydantic and the standard library, so it can be used where torch
and FAISS are not installed. Results are the server's own response models
(:mod:`embedsvc.responses`). The blocking client (``_sync.py``) is the one source of the
endpoint logic; the async client (``_async.py``) is generated from it.

Example::

    from embedsvc.client import Client, NotFound
    with Client("http://127.0.0.1:8000", api_key="esk_...", retries=3, timeout=10) as client:
        try:
            result = client.search("scifact", "vitamin D deficiency", k=5)
        except NotFound as exc:
            raise SystemExit(exc.message)
        for hit in result.hits:
            print(hit.score, hit.id, hit.title)

Errors raise a subclass of :class:`EmbedsvcError` carrying the server's ``code`` and
``message``. Searches, reads, embedding, upserts and deletes by id are retried on connection
failures, 429 and 503 (see :class:`Client`).
"""

from embedsvc.client._async import AsyncClient
from embedsvc.client._errors import (
    Conflict,
    ConnectionFailed,
    EmbedsvcError,
    Forbidden,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    ServerError,
    Unauthorized,
    Unavailable,
    parse_retry_after,
)
from embedsvc.client._retry import RetryPolicy
from embedsvc.client._sync import DEFAULT_URL, Client
from embedsvc.responses import (
    CollectionInfo,
    DeleteResult,
    Document,
    Embeddings,
    Health,
    Hit,
    Job,
    Passage,
    Readiness,
    SearchResult,
    Snapshot,
    UpsertResult,
)

__all__ = [
    "DEFAULT_URL", "AsyncClient", "Client", "RetryPolicy", "parse_retry_after",
    "EmbedsvcError", "InvalidRequest", "PayloadTooLarge", "Unauthorized", "Forbidden", "NotFound",
    "Conflict", "RateLimited", "Unavailable", "ServerError", "ConnectionFailed",
    "CollectionInfo", "DeleteResult", "Document", "Embeddings", "Health", "Hit", "Job", "Passage",
    "Readiness", "SearchResult", "Snapshot", "UpsertResult",
]
