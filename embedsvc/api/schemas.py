"""Request and response bodies of the HTTP API (the OpenAPI schema is generated from these).

Requests are strict (no coercion: ``"k": "10"`` is an error) and forbid unknown fields, so
a typo is a 422 that names it instead of an option silently ignored. Every route declares
its response model, so the schema describes what the server really answers.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Mode = Literal["auto", "dense", "lexical", "hybrid"]
Fallback = Literal["no_index", "model_unavailable", "index_unavailable", "no_text"]


class Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class SearchRequest(Request):
    query: str = Field(..., min_length=1, description="Free text; limited to EMBEDSVC_MAX_QUERY_CHARS.")
    k: int = Field(10, ge=1, description="Results wanted; at most EMBEDSVC_MAX_K (default 1000).")
    mode: Mode = Field("auto", description="auto: hybrid when an index (or fresh vectors) and the "
                                           "model are ready, else whichever side can answer.")
    model: str | None = Field(None, description="Refuse (409) unless the index uses this model.")
    filter: dict[str, Any] | None = Field(
        None, description='Metadata filter, e.g. {"year": {"$gte": 2015}, "kind": {"$in": '
                          '["review"]}}: equality, $ne, $in, $nin, $gt, $gte, $lt, $lte, $and, $or.')
    rrf_k: int | None = Field(None, ge=1, description="Hybrid: RRF constant (EMBEDSVC_RRF_K).")
    dense_weight: float | None = Field(None, ge=0, description="Hybrid: weight of the dense ranking.")
    lexical_weight: float | None = Field(None, ge=0, description="Hybrid: weight of the BM25 ranking.")
    include_text: bool = False
    include_metadata: bool = False


class PassageOut(BaseModel):
    ord: int = Field(..., description="Which passage of the document (0 for the first).")
    start: int = Field(..., description="Character offset in title + ' ' + text.")
    end: int
    text: str


class HitOut(BaseModel):
    id: str
    score: float
    title: str
    text: str | None = None
    metadata: dict[str, Any] | None = None
    passage: PassageOut | None = Field(None, description="The passage that matched (dense).")


class SearchResponse(BaseModel):
    collection: str
    mode: str = Field(..., description="The mode actually used.")
    fallback: Fallback | None = Field(None, description="Why a side was missing, if one was.")
    index_version: int | None
    took_ms: float
    hits: list[HitOut]


class DocumentIn(Request):
    id: str = Field(..., min_length=1, max_length=1024)
    title: str = ""
    text: str
    metadata: dict[str, Any] = Field(default_factory=dict)


class DocumentOut(BaseModel):
    id: str
    title: str
    text: str
    metadata: dict[str, Any]


class UpsertRequest(Request):
    documents: list[DocumentIn] = Field(
        ..., min_length=1, description="At most EMBEDSVC_MAX_BATCH_DOCUMENTS, distinct ids.")


class UpsertResponse(BaseModel):
    collection: str
    seq: int = Field(..., description="Number of this write: later writes have larger ones.")
    created: int
    updated: int = Field(..., description="Text changed: embedded again.")
    unchanged: int = Field(..., description="Same text: metadata and title stored, nothing embedded.")


class DeleteRequest(Request):
    ids: list[str] | None = Field(None, description="Documents to delete by id.")
    filter: dict[str, Any] | None = Field(None, description="Or every document this filter matches.")


class DeleteResponse(BaseModel):
    collection: str
    seq: int
    deleted: int
    missing: list[str] = Field(..., description="Ids asked for that did not exist.")


class CreateCollectionRequest(Request):
    name: str = Field(..., description="1-64 letters, digits, '_', '-' or '.'.")
    model: str | None = Field(None, description="Model of its vectors (EMBEDSVC_DEFAULT_MODEL).")
    indexed_fields: list[str] = Field(
        default_factory=list, description="Metadata fields to index in SQLite for fast filters.")


class IndexInfo(BaseModel):
    version: int
    layout: str
    dim: int
    count: int
    metric: str
    recall_at_10: float | None
    index_bytes: int
    created_at: float
    weights_sha256: str | None
    search_params: str | None
    compacted_from: int | None = None
    shards: int


class CollectionInfo(BaseModel):
    name: str
    model: str | None
    documents: int
    indexed_vectors: int = Field(..., description="Vectors in the served index version.")
    fresh_vectors: int = Field(..., description="Embedded since the last compaction, searched exactly.")
    deleted_vectors: int = Field(..., description="In the index but deleted or replaced (tombstones).")
    pending: int = Field(..., description="Documents waiting to be embedded (answered lexically).")
    index_version: int | None
    layout: str | None
    index: IndexInfo | None
    indexed_fields: list[str]
    complete: bool = Field(..., description="False while a first build has not finished.")
    model_state: str | None
    leader: str | None = Field(..., description="Process holding the writer lease.")
    last_compaction: float | None


class CollectionList(BaseModel):
    collections: list[str]


class Deleted(BaseModel):
    deleted: str


class JobOut(BaseModel):
    id: str
    collection: str
    kind: str
    state: Literal["queued", "running", "done", "failed"]
    phase: str | None
    progress: float
    error: str | None
    result: dict[str, Any]
    attempts: int
    created_at: float | None
    started_at: float | None
    finished_at: float | None


class JobList(BaseModel):
    jobs: list[JobOut]


class EmbedRequest(Request):
    texts: list[str] = Field(..., min_length=1, description="At most EMBEDSVC_MAX_EMBED_TEXTS.")
    model: str | None = Field(None, description="Model name; the default model when omitted.")


class EmbedResponse(BaseModel):
    model: str
    dim: int
    vectors: list[list[float]]


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready", "degraded"]
    models: dict[str, str]
    collections: list[str]


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody
