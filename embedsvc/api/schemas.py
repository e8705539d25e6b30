"""Request and response bodies of the HTTP API (the OpenAPI schema is generated from these)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Mode = Literal["auto", "dense", "lexical", "hybrid"]


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(..., min_length=1, description="Free text; limited to EMBEDSVC_MAX_QUERY_CHARS.")
    k: int = Field(10, ge=1, description="Results wanted; at most EMBEDSVC_MAX_K (default 1000).")
    mode: Mode = Field("auto", description="auto: dense when an index and model are ready, else BM25.")
    model: str | None = Field(None, description="Refuse (409) unless the index uses this model.")
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
    fallback: str | None = Field(None, description="Why a degraded mode was used, if it was.")
    index_version: int | None
    took_ms: float
    hits: list[HitOut]


class DocumentOut(BaseModel):
    id: str
    title: str
    text: str
    metadata: dict[str, Any]


class EmbedRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    texts: list[str] = Field(..., min_length=1, description="At most EMBEDSVC_MAX_EMBED_TEXTS.")
    model: str | None = Field(None, description="Model name; the default model when omitted.")


class EmbedResponse(BaseModel):
    model: str
    dim: int
    vectors: list[list[float]]


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody
