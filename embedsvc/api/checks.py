"""The limits and rules a request body must meet beyond its schema, each refused with the
status and a message naming the limit and the setting that changes it."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from embedsvc.api.errors import ApiError
from embedsvc.api.schemas import DocumentIn, EmbedRequest, SearchRequest, has_text
from embedsvc.live.writes import DocumentIn as LiveDocument
from embedsvc.search.filters import CompiledFilter, FilterError, compile_filter
from embedsvc.search.searcher import Fusion
from embedsvc.service import Service, fusion_of
from embedsvc.settings import Settings


def search_limits(body: SearchRequest, settings: Settings) -> None:
    if (body.query is None) == (body.vector is None):
        raise ApiError(422, "invalid_request", "give either 'query' (text) or 'vector', not both")
    if body.vector is not None and body.mode not in ("auto", "dense"):
        raise ApiError(422, "invalid_request", f"mode '{body.mode}' needs a text query; a vector "
                                               "searches densely (mode 'dense' or 'auto')")
    if body.query is None:
        pass
    elif not has_text(body.query):
        raise ApiError(422, "invalid_request", "query: must contain text, not only whitespace")
    elif len(body.query) > settings.max_query_chars:
        raise ApiError(422, "invalid_request",
                       f"query: {len(body.query)} characters, the limit is "
                       f"{settings.max_query_chars} (EMBEDSVC_MAX_QUERY_CHARS); shorten it")
    if body.k > settings.max_k:
        raise ApiError(422, "invalid_request",
                       f"k: {body.k} is over the limit of {settings.max_k} (EMBEDSVC_MAX_K)")


def fusion(body: SearchRequest, settings: Settings) -> Fusion:
    """The request's fusion knobs, each defaulting to its setting."""
    asked = {"rrf_k": body.rrf_k, "dense_weight": body.dense_weight,
             "lexical_weight": body.lexical_weight}
    return replace(fusion_of(settings), **{k: v for k, v in asked.items() if v is not None})


def embed_limits(body: EmbedRequest, settings: Settings) -> None:
    text_limits(body.texts, "texts", settings)


def text_limits(texts: Sequence[str], field: str, settings: Settings) -> None:
    """Texts to embed in one call: how many, and how long each (``field`` names them as the
    request does, for /v1/embed and the OpenAI-compatible route alike)."""
    if len(texts) > settings.max_embed_texts:
        raise ApiError(422, "invalid_request",
                       f"{field}: {len(texts)} given, at most {settings.max_embed_texts} a call "
                       "(EMBEDSVC_MAX_EMBED_TEXTS); send smaller batches")
    too_long = [i for i, t in enumerate(texts) if len(t) > settings.max_query_chars]
    if too_long:
        raise ApiError(422, "invalid_request",
                       f"{field}[{too_long[0]}]: {len(texts[too_long[0]])} characters, the limit is "
                       f"{settings.max_query_chars} (EMBEDSVC_MAX_QUERY_CHARS); shorten it")


def metadata_filter(raw: dict[str, Any] | None, settings: Settings) -> CompiledFilter | None:
    if raw is None:
        return None
    try:
        return compile_filter(raw, settings.max_filter_depth, settings.max_filter_conditions)
    except FilterError as exc:
        setting = f" (EMBEDSVC_{exc.limit.upper()})" if exc.limit else ""
        raise ApiError(422, "invalid_filter", f"{exc}{setting}") from exc


def batch_size(count: int, what: str, settings: Settings) -> None:
    if count > settings.max_batch_documents:
        raise ApiError(413, "too_large",
                       f"{what}: {count} in one call, the limit is {settings.max_batch_documents} "
                       "(EMBEDSVC_MAX_BATCH_DOCUMENTS); send smaller batches")


def ids(values: Sequence[str], what: str, settings: Settings) -> None:
    """Not too many ids, and none with a NUL character: SQLite's JSON functions, through
    which the store looks ids up in bulk, cut text at a NUL, so such a document could be
    written but never found again by id (a second write would store it twice)."""
    batch_size(len(values), what, settings)
    for i, value in enumerate(values):
        if "\x00" in value:
            raise ApiError(422, "invalid_request", f"{what}[{i}]: the id holds a NUL character (U+0000), "
                                                   "which ids may not contain; remove it")


def documents(docs: Sequence[DocumentIn], settings: Settings) -> None:
    """Distinct ids, some text, finite numbers, and each document under the size limit."""
    ids([doc.id for doc in docs], "documents", settings)
    seen: dict[str, int] = {}
    for i, doc in enumerate(docs):
        where = f"documents[{i}] ('{doc.id[:80]}')"
        if doc.id in seen:
            raise ApiError(422, "invalid_request", f"{where}: the id is also documents[{seen[doc.id]}];"
                                                   " send each id once per call")
        seen[doc.id] = i
        if not has_text(doc.title) and not has_text(doc.text) and doc.vector is None:
            raise ApiError(422, "invalid_request", f"{where}: has no text (title and text empty) "
                                                   "and no vector")
        if not _finite(doc.metadata):
            raise ApiError(422, "invalid_request", f"{where}: metadata holds NaN or Infinity, which "
                                                   "JSON cannot store; send finite numbers")
        size = (len(doc.title.encode()) + len(doc.text.encode())
                + len(json.dumps(doc.metadata).encode()))
        if size > settings.max_document_bytes:
            raise ApiError(413, "too_large",
                           f"{where}: {size} bytes, the limit is {settings.max_document_bytes} "
                           "(EMBEDSVC_MAX_DOCUMENT_BYTES); split it into several documents")


def documents_to_write(service: Service, name: str, docs: Sequence[DocumentIn],
                       settings: Settings) -> list[LiveDocument]:
    """An upsert's documents checked (ids, text, sizes, and each vector against the
    collection's dimension, made unit length) and ready for :meth:`Service.upsert`: the API's
    route and ``embedsvc collections upsert`` write through this one door."""
    documents(docs, settings)
    given = [(i, d) for i, d in enumerate(docs) if d.vector is not None]
    labels = [f"documents[{i}] ('{d.id[:80]}')" for i, d in given]
    vectors = dict(zip((i for i, _ in given), service.unit_vectors(name, [d.vector for _, d in given], labels),
                       strict=True)) if given else {}
    return [LiveDocument(d.id, d.text, d.title, d.metadata, vectors.get(i)) for i, d in enumerate(docs)]


def _finite(value: Any) -> bool:
    """Finite numbers all the way down (text that is not Unicode never gets here: the body
    parser refuses it in every field, see :func:`embedsvc.api.limits.check_tree`)."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    return True
