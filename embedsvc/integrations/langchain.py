"""LangChain over embedsvc: :class:`EmbedsvcEmbeddings` (the server's ``/v1/embed`` route as a
LangChain ``Embeddings``) and :class:`EmbedsvcVectorStore` (a collection as a LangChain
``VectorStore``), both over :class:`~embedsvc.client.Client` and
:class:`~embedsvc.client.AsyncClient`. Needs ``pip install 'embedsvc[langchain]'``.

A store works in one of two modes, fixed by its ``embedding``:

- **An embedding of yours** (any LangChain ``Embeddings``): vectors are computed here, stored
  with each document and searched by vector. A missing collection is created with their
  dimension and no model (vectors made elsewhere); a collection that has a model is refused,
  since its vectors would not be comparable with yours.
- **``embedding=None``: the server's model.** The collection (created with ``model``, default
  the server's, when missing) embeds documents itself, into passages, in the background;
  ``add_texts`` waits (polling, up to ``wait_timeout``) until they are embedded so that the
  next search finds them. Queries are sent as text (``mode="dense"`` unless told otherwise:
  ``search_mode="hybrid"`` or ``mode=`` on a call gives hybrid or BM25 results, whose scores
  are not cosines).

LangChain's ``page_content`` is the document's ``text``, ``metadata`` its metadata (JSON only:
checked here, before sending); a document written elsewhere with a ``title`` gets it in
``metadata["title"]``. Filters are our filter syntax, which LangChain's dicts already are:
``{"kind": "trial"}``, ``{"year": {"$gte": 2015}}``, ``{"$or": [...]}``. Scores are cosines;
relevance scores map them linearly onto [0, 1] (``(1 + cosine) / 2``).

Async methods use the ``async_client`` given, or open an :class:`AsyncClient` for the call
(an httpx connection pool belongs to the event loop it first ran on, and LangChain code runs
several loops); a store or embeddings given only a blocking ``client`` runs them in a thread.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.runnables.config import run_in_executor
from langchain_core.vectorstores import VectorStore
from langchain_core.vectorstores.utils import maximal_marginal_relevance

from embedsvc.client import DEFAULT_URL, AsyncClient, Client, CollectionInfo, Conflict, NotFound
from embedsvc.client import Document as StoredDocument
from embedsvc.client import Hit as StoredHit

logger = logging.getLogger(__name__)

__all__ = ["EmbedsvcEmbeddings", "EmbedsvcVectorStore"]

# The server's default limits; lower the batch sizes for a server configured lower.
EMBED_BATCH = 256  # texts per /v1/embed call (EMBEDSVC_MAX_EMBED_TEXTS)
EMBED_CHARS = 4096  # characters per embedded text (EMBEDSVC_MAX_QUERY_CHARS): MMR cuts longer ones
UPSERT_BATCH = 256  # documents per upsert (EMBEDSVC_MAX_BATCH_DOCUMENTS is 1000)
DELETE_BATCH = 1000  # ids per delete (EMBEDSVC_MAX_BATCH_DOCUMENTS)
# Estimated JSON bytes per upsert: half the default body limit (EMBEDSVC_MAX_BODY_BYTES), so
# that what the estimate leaves out (quoting, escapes) cannot push a batch over it.
UPSERT_BYTES = 8_000_000
DEFAULT_COLLECTION = "langchain"
_GET_CONCURRENCY = 16  # documents fetched at once by aget_by_ids


# --- the connection -------------------------------------------------------------------------
class _Connection:
    """Where the server is and how to reach it: the blocking client given or one made on first
    use, and for coroutines the async client given or a fresh one per call (``can_async`` is
    False when only a blocking client was given: its key cannot be read back for another)."""

    def __init__(self, url: str | None, api_key: str | None, timeout: float,
                 client: Client | None, async_client: AsyncClient | None):
        if client is None and url is None:
            url = DEFAULT_URL
        self.url, self._api_key, self._timeout = url, api_key, timeout
        self._client, self._owns_client = client, client is None
        self._async_client = async_client
        self._lock = threading.Lock()

    @property
    def can_async(self) -> bool:
        return self._async_client is not None or self.url is not None

    def sync(self) -> Client:
        with self._lock:
            if self._client is None:
                self._client = Client(self.url, api_key=self._api_key, timeout=self._timeout)
            return self._client

    @asynccontextmanager
    async def async_(self) -> AsyncIterator[AsyncClient]:
        if self._async_client is not None:
            yield self._async_client
            return
        async with AsyncClient(self.url, api_key=self._api_key, timeout=self._timeout) as client:
            yield client

    def close(self) -> None:
        with self._lock:
            if self._owns_client and self._client is not None:
                self._client.close()
                self._client = None


def _chunks(items: Sequence[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield list(items[start:start + size])


def _embed(client: Client, texts: Sequence[str], model: str | None, batch_size: int) -> list[list[float]]:
    return [v for batch in _chunks(texts, batch_size) for v in client.embed(batch, model=model).vectors]


async def _aembed(client: AsyncClient, texts: Sequence[str], model: str | None,
                  batch_size: int) -> list[list[float]]:
    vectors: list[list[float]] = []
    for batch in _chunks(texts, batch_size):
        vectors.extend((await client.embed(batch, model=model)).vectors)
    return vectors


# --- embeddings -------------------------------------------------------------------------------
class EmbedsvcEmbeddings(Embeddings):
    """Unit-length vectors from an embedsvc server's ``/v1/embed`` route, in batches of at
    most ``batch_size`` texts (the server's ``EMBEDSVC_MAX_EMBED_TEXTS``, 256 by default).

    Args:
        url: the server (default ``http://127.0.0.1:8000``); not needed with ``client``.
        api_key: sent as ``Authorization: Bearer``; shown nowhere.
        model: a model the server serves (its default model when None, or a collection's).
        client: a :class:`Client` to use instead of one made from ``url`` (not closed here).
        async_client: an :class:`AsyncClient` for the coroutines (else one per call).
        batch_size: texts per call.
        timeout: seconds per HTTP attempt, for the clients made here.
    """

    def __init__(self, url: str | None = None, *, api_key: str | None = None, model: str | None = None,
                 client: Client | None = None, async_client: AsyncClient | None = None,
                 batch_size: int = EMBED_BATCH, timeout: float = 30.0):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        self.model = model
        self.batch_size = batch_size
        self._connection = _Connection(url, api_key, timeout, client, async_client)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(url={self._connection.url!r}, model={self.model!r})"

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return _embed(self._connection.sync(), list(texts), self.model, self.batch_size)

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        texts = list(texts)
        if not self._connection.can_async:
            return await run_in_executor(None, self.embed_documents, texts)
        if not texts:
            return []
        async with self._connection.async_() as client:
            return await _aembed(client, texts, self.model, self.batch_size)

    async def aembed_query(self, text: str) -> list[float]:
        return (await self.aembed_documents([text]))[0]

    def close(self) -> None:
        """Close the client made here (not one that was given)."""
        self._connection.close()

    def __enter__(self) -> EmbedsvcEmbeddings:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- documents both ways ----------------------------------------------------------------------
def _rows(texts: Iterable[str], metadatas: Sequence[dict[str, Any] | None] | None,
          ids: Sequence[str | None] | None) -> list[dict[str, Any]]:
    """What add_texts was given as documents to upsert, with a uuid4 for each missing id and
    the metadata checked to be JSON (the server refuses NaN, and httpx anything else)."""
    texts = list(texts)
    if metadatas is not None and len(metadatas) != len(texts):
        raise ValueError(f"{len(metadatas)} metadatas for {len(texts)} texts")
    if ids is not None and len(ids) != len(texts):
        raise ValueError(f"{len(ids)} ids for {len(texts)} texts")
    rows = []
    for i, text in enumerate(texts):
        doc_id = ids[i] if ids is not None and ids[i] is not None else str(uuid.uuid4())
        metadata = dict(metadatas[i] or {}) if metadatas is not None else {}
        try:
            size = len(json.dumps(metadata, allow_nan=False))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"the metadata of document {doc_id!r} is not JSON: {exc}") from None
        rows.append({"id": str(doc_id), "text": text, "metadata": metadata,
                     "_bytes": size + len(text.encode("utf-8")) + 100})
    counts = Counter(row["id"] for row in rows)
    if len(counts) < len(rows):
        twice = sorted(doc_id for doc_id, n in counts.items() if n > 1)
        raise ValueError(f"ids given more than once in one call: {twice[:5]}")
    return rows


def _upsert_batches(rows: list[dict[str, Any]], vectors: list[list[float]] | None,
                    batch_size: int) -> Iterator[list[dict[str, Any]]]:
    """Upsert bodies of at most ``batch_size`` documents and about UPSERT_BYTES of JSON."""
    batch: list[dict[str, Any]] = []
    size = 0
    for i, row in enumerate(rows):
        doc = {key: value for key, value in row.items() if key != "_bytes"}
        row_bytes = row["_bytes"]
        if vectors is not None:
            doc["vector"] = vectors[i]
            row_bytes += 24 * len(vectors[i])  # a float written as JSON, with its comma
        if batch and (len(batch) >= batch_size or size + row_bytes > UPSERT_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(doc)
        size += row_bytes
    if batch:
        yield batch


def _document(doc_id: str, title: str, text: str | None, metadata: dict[str, Any] | None) -> Document:
    metadata = dict(metadata or {})
    if title and "title" not in metadata:
        metadata["title"] = title
    return Document(id=doc_id, page_content=text or "", metadata=metadata)


def _from_hit(hit: StoredHit) -> tuple[Document, float]:
    return _document(hit.id, hit.title, hit.text, hit.metadata), hit.score


def _from_stored(doc: StoredDocument) -> Document:
    return _document(doc.id, doc.title, doc.text, doc.metadata)


def _relevance(cosine: float) -> float:
    """A cosine in [-1, 1] as a relevance in [0, 1]."""
    return (1.0 + cosine) / 2.0


def _holds_no_vectors(info: CollectionInfo, body: dict[str, Any]) -> bool:
    """Whether a dense search was refused (409) only because the collection has no vectors
    yet: the server says so instead of answering no hits, and LangChain expects none."""
    return body.get("mode") == "dense" and info.indexed_vectors == 0 and info.fresh_vectors == 0


def _dense_only(kwargs: dict[str, Any]) -> str:
    """The mode of a search for relevance scores: dense, the one whose scores are cosines."""
    mode = kwargs.pop("mode", None) or "dense"
    if mode != "dense":
        raise ValueError(f"relevance scores are defined on cosines, which mode 'dense' gives, not {mode!r}")
    return mode


def _no_more(kwargs: dict[str, Any]) -> None:
    if kwargs:
        raise TypeError(f"unexpected arguments: {', '.join(sorted(kwargs))}")


# --- the vector store -------------------------------------------------------------------------
class EmbedsvcVectorStore(VectorStore):
    """A LangChain vector store over one embedsvc collection (see the module's docstring for
    the two modes).

    Args:
        collection_name: the collection; created on the first write when missing.
        embedding: a LangChain ``Embeddings`` that makes the vectors here, or None for the
            server's model.
        url: the server (default ``http://127.0.0.1:8000``); not needed with ``client``.
        api_key: sent as ``Authorization: Bearer``; shown nowhere.
        client, async_client: clients to use instead of ones made from ``url`` (not closed here).
        model: with ``embedding=None``, the model of a collection created here (the server's
            default when None); an existing collection must have this model when it is given.
        indexed_fields: metadata fields a collection created here indexes (fast filters).
        search_mode: the search mode of text queries with ``embedding=None``: "dense" (scores are
            cosines), "hybrid", "lexical" or "auto".
        batch_size: documents per upsert (and texts per embed call of the server's model).
        timeout: seconds per HTTP attempt, for the clients made here.
        wait_timeout: with ``embedding=None``, how long ``add_texts`` waits for the server to
            embed what it wrote (then it logs a warning and returns: the documents are stored,
            and answered by BM25 until embedded).
    """

    def __init__(
        self, collection_name: str = DEFAULT_COLLECTION, embedding: Embeddings | None = None, *,
        url: str | None = None, api_key: str | None = None, client: Client | None = None,
        async_client: AsyncClient | None = None, model: str | None = None,
        indexed_fields: list[str] | None = None, search_mode: str = "dense",
        batch_size: int = UPSERT_BATCH, timeout: float = 30.0, wait_timeout: float = 120.0,
    ):
        if embedding is not None and model is not None:
            raise ValueError("model names the server's model, used when embedding is None; "
                             "give one or the other")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        self.collection_name = collection_name
        self.embedding = embedding
        self.model = model
        self.indexed_fields = list(indexed_fields or [])
        self.search_mode = search_mode
        self.batch_size = batch_size
        self.wait_timeout = wait_timeout
        self._connection = _Connection(url, api_key, timeout, client, async_client)
        self._info: CollectionInfo | None = None  # the collection, once seen and checked

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(collection_name={self.collection_name!r}, "
                f"url={self._connection.url!r}, embedding={self.embedding!r})")

    @property
    def embeddings(self) -> Embeddings | None:
        return self.embedding

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        return _relevance

    # --- the collection -----------------------------------------------------------------------
    def _creation(self, dimension: int | None) -> dict[str, Any]:
        if self.embedding is not None:
            return {"dimension": dimension, "indexed_fields": self.indexed_fields}
        return {"model": self.model, "indexed_fields": self.indexed_fields}

    def _checked(self, info: CollectionInfo) -> CollectionInfo:
        """``info`` if this store's mode fits the collection; else a ValueError that says why."""
        name = self.collection_name
        if self.embedding is not None and info.model is not None and not (
                isinstance(self.embedding, EmbedsvcEmbeddings) and self.embedding.model == info.model):
            raise ValueError(f"collection {name!r} embeds its documents with model {info.model!r}; "
                             "vectors of another embedding would not be comparable with them: pass "
                             "embedding=None to use the server's model, or use another collection")
        if self.embedding is None and info.model is None:
            raise ValueError(f"collection {name!r} has no model (it holds vectors made elsewhere, "
                             f"dimension {info.dimension}): pass the embedding that made them")
        if self.embedding is None and self.model is not None and info.model != self.model:
            raise ValueError(f"collection {name!r} has model {info.model!r}, not {self.model!r}")
        self._info = info
        return info

    def _collection(self, client: Client, dimension: int | None = None,
                    create: bool = False) -> CollectionInfo | None:
        """The collection, checked (once) against this store; None when it does not exist,
        unless ``create``: then it is created (with ``dimension`` for vectors made here)."""
        if self._info is not None:
            return self._info
        try:
            return self._checked(client.get_collection(self.collection_name))
        except NotFound:
            if not create:
                return None
        try:
            return self._checked(client.create_collection(self.collection_name, **self._creation(dimension)))
        except Conflict:  # created meanwhile by another writer
            return self._checked(client.get_collection(self.collection_name))

    async def _acollection(self, client: AsyncClient, dimension: int | None = None,
                           create: bool = False) -> CollectionInfo | None:
        if self._info is not None:
            return self._info
        try:
            return self._checked(await client.get_collection(self.collection_name))
        except NotFound:
            if not create:
                return None
        try:
            return self._checked(await client.create_collection(self.collection_name,
                                                                **self._creation(dimension)))
        except Conflict:
            return self._checked(await client.get_collection(self.collection_name))

    def delete_collection(self) -> None:
        """Delete the collection and everything in it (nothing happens if it does not exist)."""
        try:
            self._connection.sync().delete_collection(self.collection_name)
        except NotFound:
            pass
        self._info = None

    async def adelete_collection(self) -> None:
        if not self._connection.can_async:
            return await run_in_executor(None, self.delete_collection)
        async with self._connection.async_() as client:
            try:
                await client.delete_collection(self.collection_name)
            except NotFound:
                pass
        self._info = None

    def close(self) -> None:
        """Close the client made here (not one that was given)."""
        self._connection.close()

    def __enter__(self) -> EmbedsvcVectorStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- writing ------------------------------------------------------------------------------
    def add_texts(self, texts: Iterable[str], metadatas: list[dict] | None = None, *,
                  ids: list[str] | None = None, **kwargs: Any) -> list[str]:
        """Upsert ``texts`` (as documents' text) with their metadata under ``ids`` (a uuid4 for
        each one missing) and return the ids; a document with an existing id is replaced.

        Returns once the server has committed them (and, with the server's model, embedded
        them, up to ``wait_timeout``): a search made next finds them."""
        _no_more(kwargs)
        rows = _rows(texts, metadatas, ids)
        if not rows:
            return []
        vectors = self.embedding.embed_documents([r["text"] for r in rows]) if self.embedding else None
        client = self._connection.sync()
        self._collection(client, len(vectors[0]) if vectors else None, create=True)
        for batch in _upsert_batches(rows, vectors, self.batch_size):
            client.upsert(self.collection_name, batch)
        if vectors is None:
            self._wait_embedded(client)
        return [row["id"] for row in rows]

    async def aadd_texts(self, texts: Iterable[str], metadatas: list[dict] | None = None, *,
                         ids: list[str] | None = None, **kwargs: Any) -> list[str]:
        _no_more(kwargs)
        if not self._connection.can_async:
            return await run_in_executor(None, self.add_texts, texts, metadatas, ids=ids)
        rows = _rows(texts, metadatas, ids)
        if not rows:
            return []
        vectors = (await self.embedding.aembed_documents([r["text"] for r in rows])
                   if self.embedding else None)
        async with self._connection.async_() as client:
            await self._acollection(client, len(vectors[0]) if vectors else None, create=True)
            for batch in _upsert_batches(rows, vectors, self.batch_size):
                await client.upsert(self.collection_name, batch)
            if vectors is None:
                await self._await_embedded(client)
        return [row["id"] for row in rows]

    def _wait_embedded(self, client: Client) -> None:
        """Poll until the collection has nothing waiting to be embedded, or wait_timeout."""
        deadline, interval = time.monotonic() + self.wait_timeout, 0.02
        while (pending := client.get_collection(self.collection_name).pending) > 0:
            if time.monotonic() > deadline:
                logger.warning("collection %r: %d documents still wait to be embedded after %.0f s; "
                               "BM25 answers them until then", self.collection_name, pending,
                               self.wait_timeout)
                return
            time.sleep(interval)
            interval = min(interval * 2, 0.5)

    async def _await_embedded(self, client: AsyncClient) -> None:
        deadline, interval = time.monotonic() + self.wait_timeout, 0.02
        while (pending := (await client.get_collection(self.collection_name)).pending) > 0:
            if time.monotonic() > deadline:
                logger.warning("collection %r: %d documents still wait to be embedded after %.0f s; "
                               "BM25 answers them until then", self.collection_name, pending,
                               self.wait_timeout)
                return
            await asyncio.sleep(interval)
            interval = min(interval * 2, 0.5)

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        """Delete documents by ``ids`` (missing ones are ignored) or by ``filter=`` (a metadata
        filter); True once done. Deleting everything is :meth:`delete_collection`."""
        filter = kwargs.pop("filter", None)
        _no_more(kwargs)
        calls = self._delete_calls(ids, filter)
        client = self._connection.sync()
        try:
            for call in calls:
                client.delete(self.collection_name, **call)
        except NotFound:  # no collection: nothing to delete
            pass
        return True

    async def adelete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        filter = kwargs.pop("filter", None)
        _no_more(kwargs)
        if not self._connection.can_async:
            return await run_in_executor(None, self.delete, ids, filter=filter)
        calls = self._delete_calls(ids, filter)
        async with self._connection.async_() as client:
            try:
                for call in calls:
                    await client.delete(self.collection_name, **call)
            except NotFound:
                pass
        return True

    @staticmethod
    def _delete_calls(ids: list[str] | None, filter: dict[str, Any] | None) -> list[dict[str, Any]]:
        if (ids is None) == (filter is None):
            raise ValueError("delete takes ids or filter= (one of them); to delete every document, "
                             "call delete_collection()")
        if filter is not None:
            return [{"filter": filter}]
        return [{"ids": batch} for batch in _chunks(list(dict.fromkeys(ids)), DELETE_BATCH)]

    # --- reading ------------------------------------------------------------------------------
    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        """The documents stored under ``ids``, in that order; missing ones are left out."""
        client = self._connection.sync()
        documents = []
        for doc_id in dict.fromkeys(ids):
            try:
                documents.append(_from_stored(client.get_document(self.collection_name, doc_id)))
            except NotFound:
                continue
        return documents

    async def aget_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        if not self._connection.can_async:
            return await run_in_executor(None, self.get_by_ids, ids)
        limit = asyncio.Semaphore(_GET_CONCURRENCY)

        async def one(client: AsyncClient, doc_id: str) -> Document | None:
            async with limit:
                try:
                    return _from_stored(await client.get_document(self.collection_name, doc_id))
                except NotFound:
                    return None

        async with self._connection.async_() as client:
            found = await asyncio.gather(*(one(client, doc_id) for doc_id in dict.fromkeys(ids)))
        return [doc for doc in found if doc is not None]

    # --- searching ----------------------------------------------------------------------------
    def _mode(self, mode: str | None) -> str:
        """The search mode of a text query (with an embedding of ours: dense, by vector)."""
        mode = mode or ("dense" if self.embedding is not None else self.search_mode)
        if self.embedding is not None and mode not in ("dense", "lexical"):
            raise ValueError(f"mode {mode!r} needs the server's model to embed the query; with an "
                             "embedding of yours, search is 'dense' (by vector) or 'lexical'")
        return mode

    def _search_body(self, k: int, filter: dict[str, Any] | None, **query: Any) -> dict[str, Any]:
        return {"k": k, "filter": filter, "include_text": True, "include_metadata": True, **query}

    def similarity_search_with_score_by_vector(
        self, embedding: list[float], k: int = 4, filter: dict[str, Any] | None = None, **kwargs: Any,
    ) -> list[tuple[Document, float]]:
        """The ``k`` documents nearest ``embedding`` (a vector of the collection's kind), with
        their cosines, best first."""
        _no_more(kwargs)
        return self._search(self._search_body(k, filter, vector=embedding, mode="dense"))

    def similarity_search_with_score(
        self, query: str, k: int = 4, filter: dict[str, Any] | None = None, *, mode: str | None = None,
        **kwargs: Any,
    ) -> list[tuple[Document, float]]:
        """The ``k`` documents most similar to ``query`` that match ``filter``, with their
        scores (cosines in dense mode), best first."""
        _no_more(kwargs)
        mode = self._mode(mode)
        client = self._connection.sync()
        if self._collection(client) is None:
            return []
        if mode == "dense" and self.embedding is not None:
            body = self._search_body(k, filter, vector=self.embedding.embed_query(query), mode=mode)
        else:
            body = self._search_body(k, filter, query=query, mode=mode)
        return self._search(body)

    def _search(self, body: dict[str, Any]) -> list[tuple[Document, float]]:
        client = self._connection.sync()
        try:
            result = client.search(self.collection_name, **body)
        except NotFound:  # no collection: nothing to find
            return []
        except Conflict:
            if _holds_no_vectors(client.get_collection(self.collection_name), body):
                return []
            raise
        return [_from_hit(hit) for hit in result.hits]

    def similarity_search(self, query: str, k: int = 4, filter: dict[str, Any] | None = None,
                          **kwargs: Any) -> list[Document]:
        return [doc for doc, _ in self.similarity_search_with_score(query, k, filter, **kwargs)]

    def similarity_search_by_vector(self, embedding: list[float], k: int = 4,
                                    filter: dict[str, Any] | None = None, **kwargs: Any) -> list[Document]:
        return [doc for doc, _ in self.similarity_search_with_score_by_vector(embedding, k, filter, **kwargs)]

    def _similarity_search_with_relevance_scores(self, query: str, k: int = 4,
                                                 **kwargs: Any) -> list[tuple[Document, float]]:
        scored = self.similarity_search_with_score(query, k, mode=_dense_only(kwargs), **kwargs)
        return [(doc, _relevance(score)) for doc, score in scored]

    async def asimilarity_search_with_score_by_vector(
        self, embedding: list[float], k: int = 4, filter: dict[str, Any] | None = None, **kwargs: Any,
    ) -> list[tuple[Document, float]]:
        _no_more(kwargs)
        if not self._connection.can_async:
            return await run_in_executor(None, self.similarity_search_with_score_by_vector,
                                         embedding, k, filter)
        async with self._connection.async_() as client:
            return await self._asearch(client, self._search_body(k, filter, vector=embedding, mode="dense"))

    async def asimilarity_search_with_score(
        self, query: str, k: int = 4, filter: dict[str, Any] | None = None, *, mode: str | None = None,
        **kwargs: Any,
    ) -> list[tuple[Document, float]]:
        _no_more(kwargs)
        mode = self._mode(mode)
        if not self._connection.can_async:
            return await run_in_executor(None, self.similarity_search_with_score, query, k, filter, mode=mode)
        async with self._connection.async_() as client:
            if await self._acollection(client) is None:
                return []
            if mode == "dense" and self.embedding is not None:
                vector = await self.embedding.aembed_query(query)
                body = self._search_body(k, filter, vector=vector, mode=mode)
            else:
                body = self._search_body(k, filter, query=query, mode=mode)
            return await self._asearch(client, body)

    async def _asearch(self, client: AsyncClient, body: dict[str, Any]) -> list[tuple[Document, float]]:
        try:
            result = await client.search(self.collection_name, **body)
        except NotFound:
            return []
        except Conflict:
            if _holds_no_vectors(await client.get_collection(self.collection_name), body):
                return []
            raise
        return [_from_hit(hit) for hit in result.hits]

    async def asimilarity_search(self, query: str, k: int = 4, filter: dict[str, Any] | None = None,
                                 **kwargs: Any) -> list[Document]:
        return [doc for doc, _ in await self.asimilarity_search_with_score(query, k, filter, **kwargs)]

    async def asimilarity_search_by_vector(self, embedding: list[float], k: int = 4,
                                           filter: dict[str, Any] | None = None,
                                           **kwargs: Any) -> list[Document]:
        scored = await self.asimilarity_search_with_score_by_vector(embedding, k, filter, **kwargs)
        return [doc for doc, _ in scored]

    async def _asimilarity_search_with_relevance_scores(self, query: str, k: int = 4,
                                                        **kwargs: Any) -> list[tuple[Document, float]]:
        scored = await self.asimilarity_search_with_score(query, k, mode=_dense_only(kwargs), **kwargs)
        return [(doc, _relevance(score)) for doc, score in scored]

    # --- maximal marginal relevance -----------------------------------------------------------
    # The server answers documents, not their vectors: the fetch_k candidates are embedded
    # again (by the embedding, or the server's embed route with the collection's model).
    def max_marginal_relevance_search(
        self, query: str, k: int = 4, fetch_k: int = 20, lambda_mult: float = 0.5,
        filter: dict[str, Any] | None = None, **kwargs: Any,
    ) -> list[Document]:
        """``k`` documents among the ``fetch_k`` nearest ``query``, each chosen for similarity
        to the query less similarity to those already chosen (``lambda_mult``: 1 is plain
        similarity, 0 the most diverse)."""
        _no_more(kwargs)
        client = self._connection.sync()
        info = self._collection(client)
        if info is None:
            return []
        if self.embedding is not None:
            vector = self.embedding.embed_query(query)
        else:
            vector = _embed(client, [query[:EMBED_CHARS]], info.model, self.batch_size)[0]
        return self.max_marginal_relevance_search_by_vector(vector, k, fetch_k, lambda_mult, filter)

    def max_marginal_relevance_search_by_vector(
        self, embedding: list[float], k: int = 4, fetch_k: int = 20, lambda_mult: float = 0.5,
        filter: dict[str, Any] | None = None, **kwargs: Any,
    ) -> list[Document]:
        _no_more(kwargs)
        candidates = self.similarity_search_with_score_by_vector(embedding, max(k, fetch_k), filter)
        if not candidates:
            return []
        texts = [doc.page_content for doc, _ in candidates]
        if self.embedding is not None:
            vectors = self.embedding.embed_documents(texts)
        else:
            client = self._connection.sync()
            model = self._collection(client).model
            vectors = _embed(client, [t[:EMBED_CHARS] for t in texts], model, self.batch_size)
        chosen = maximal_marginal_relevance(np.asarray(embedding, dtype=np.float32), vectors,
                                            lambda_mult=lambda_mult, k=k)
        return [candidates[i][0] for i in chosen]

    async def amax_marginal_relevance_search(
        self, query: str, k: int = 4, fetch_k: int = 20, lambda_mult: float = 0.5,
        filter: dict[str, Any] | None = None, **kwargs: Any,
    ) -> list[Document]:
        _no_more(kwargs)
        if not self._connection.can_async:
            return await run_in_executor(None, self.max_marginal_relevance_search, query, k, fetch_k,
                                         lambda_mult, filter)
        async with self._connection.async_() as client:
            info = await self._acollection(client)
            if info is None:
                return []
            if self.embedding is not None:
                vector = await self.embedding.aembed_query(query)
            else:
                vector = (await _aembed(client, [query[:EMBED_CHARS]], info.model, self.batch_size))[0]
            return await self._ammr(client, vector, k, fetch_k, lambda_mult, filter)

    async def amax_marginal_relevance_search_by_vector(
        self, embedding: list[float], k: int = 4, fetch_k: int = 20, lambda_mult: float = 0.5,
        filter: dict[str, Any] | None = None, **kwargs: Any,
    ) -> list[Document]:
        _no_more(kwargs)
        if not self._connection.can_async:
            return await run_in_executor(None, self.max_marginal_relevance_search_by_vector, embedding,
                                         k, fetch_k, lambda_mult, filter)
        async with self._connection.async_() as client:
            return await self._ammr(client, embedding, k, fetch_k, lambda_mult, filter)

    async def _ammr(self, client: AsyncClient, embedding: list[float], k: int, fetch_k: int,
                    lambda_mult: float, filter: dict[str, Any] | None) -> list[Document]:
        body = self._search_body(max(k, fetch_k), filter, vector=embedding, mode="dense")
        candidates = await self._asearch(client, body)
        if not candidates:
            return []
        texts = [doc.page_content for doc, _ in candidates]
        if self.embedding is not None:
            vectors = await self.embedding.aembed_documents(texts)
        else:
            model = (await self._acollection(client)).model
            vectors = await _aembed(client, [t[:EMBED_CHARS] for t in texts], model, self.batch_size)
        chosen = maximal_marginal_relevance(np.asarray(embedding, dtype=np.float32), vectors,
                                            lambda_mult=lambda_mult, k=k)
        return [candidates[i][0] for i in chosen]

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def from_texts(cls, texts: list[str], embedding: Embeddings | None = None,
                   metadatas: list[dict] | None = None, *, ids: list[str] | None = None,
                   collection_name: str = DEFAULT_COLLECTION, **kwargs: Any) -> EmbedsvcVectorStore:
        """A store over ``collection_name`` (created when missing) holding ``texts``; ``kwargs``
        are the constructor's (``url``, ``client``, ...)."""
        store = cls(collection_name, embedding, **kwargs)
        store.add_texts(texts, metadatas, ids=ids)
        return store

    @classmethod
    async def afrom_texts(cls, texts: list[str], embedding: Embeddings | None = None,
                          metadatas: list[dict] | None = None, *, ids: list[str] | None = None,
                          collection_name: str = DEFAULT_COLLECTION, **kwargs: Any) -> EmbedsvcVectorStore:
        store = cls(collection_name, embedding, **kwargs)
        await store.aadd_texts(texts, metadatas, ids=ids)
        return store

