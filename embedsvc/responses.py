"""What the server answers, defined once: the routes declare these as their response models
(so the OpenAPI schema says what is really sent) and the client parses into the same classes.

This module depends on pydantic alone, so the client stays installable without torch or
FAISS. Unknown fields are ignored when parsing, so an older client can read a newer server.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Fallback = Literal["no_index", "model_unavailable", "index_unavailable", "backend_mismatch",
                   "no_text", "no_model"]
JobState = Literal["queued", "running", "done", "failed"]


class Response(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Passage(Response):
    """The passage of a document that matched a dense search."""

    ord: int = Field(..., description="Which passage of the document (0 for the first).")
    start: int = Field(..., description="Character offset in title + ' ' + text.")
    end: int
    text: str


class Hit(Response):
    id: str
    score: float
    title: str
    text: str | None = None
    metadata: dict[str, Any] | None = None
    passage: Passage | None = Field(None, description="The passage that matched (dense).")


class SearchResult(Response):
    collection: str
    mode: str = Field(..., description="The mode actually used.")
    fallback: Fallback | None = Field(None, description="Why a side was missing, if one was.")
    index_version: int | None
    took_ms: float
    hits: list[Hit]


class Document(Response):
    """A stored document; also what :meth:`Client.upsert` accepts."""

    id: str
    title: str = ""
    text: str = ""
    metadata: dict[str, Any] = Field(default_factory=dict)


class UpsertResult(Response):
    collection: str
    seq: int = Field(..., description="Number of this write: later writes have larger ones.")
    created: int
    updated: int = Field(..., description="Text changed: embedded again.")
    unchanged: int = Field(..., description="Same text: metadata and title stored, nothing embedded.")


class DeleteResult(Response):
    collection: str
    seq: int
    deleted: int
    missing: list[str] = Field(..., description="Ids asked for that did not exist.")


class IndexInfo(Response):
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


class Drift(Response):
    queries: int = Field(description="Recent dense queries in the window (unfiltered ones).")
    mean_best_cosine: float = Field(description="Mean cosine of each query to its best hit.")
    low_score_share: float = Field(description="Share of queries whose best hit is below "
                                               "EMBEDSVC_DRIFT_LOW_SCORE.")
    centroid_distance: float | None = Field(description="1 - cosine of the mean query and the "
                                                        "mean corpus vector.")
    drifting: bool = Field(description="Over EMBEDSVC_DRIFT_ALERT_SHARE low-scoring queries, with "
                                       "at least EMBEDSVC_DRIFT_MIN_QUERIES in the window.")


class CollectionInfo(Response):
    """What a collection holds: ``fresh_vectors`` are searched exactly until the next
    compaction, ``deleted_vectors`` are skipped until then, ``pending`` documents are
    answered lexically until the server has embedded them."""

    name: str
    model: str | None
    dimension: int | None = Field(None, description="Size of its vectors (None: lexical only).")
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
    drift: Drift | None = Field(None, description="Recent queries against the corpus (None before "
                                                  "any dense query since the server started).")


class Snapshot(Response):
    collection: str
    path: str = Field(description="The snapshot file on the server (under <home>/snapshots).")
    seq: int = Field(description="The last write it holds.")
    documents: int
    current_version: int | None
    files: int
    bytes: int
    created_at: float


class CollectionList(Response):
    collections: list[str]


class Deleted(Response):
    deleted: str


class Job(Response):
    """A background job (a compaction)."""

    id: str
    collection: str
    kind: str
    state: JobState
    phase: str | None = None
    progress: float = 0.0
    error: str | None = None
    result: dict[str, Any] = Field(default_factory=dict)
    attempts: int = 0
    created_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed")


class JobList(Response):
    jobs: list[Job]


class Embeddings(Response):
    model: str
    dim: int
    vectors: list[list[float]]


class Health(Response):
    status: Literal["ok"]


class Readiness(Response):
    status: Literal["ready", "degraded", "starting", "stopping"] = Field(
        ..., description="ready: every model and index loaded; degraded: one failed (search "
                         "answers, with a fallback); both HTTP 200. starting: still loading; "
                         "stopping: shutting down; both HTTP 503.")
    models: dict[str, str] = Field(..., description="loading, ready, failed or not_loaded.")
    indexes: dict[str, str] = Field(..., description="Each collection's served index version: "
                                                  "none (not built yet), loading, ready, failed "
                                                  "or not_loaded (loads on first use).")
    collections: list[str]


class ErrorBody(Response):
    code: str
    message: str


class ErrorResponse(Response):
    error: ErrorBody
