"""Request bodies of the HTTP API (responses are in :mod:`embedsvc.responses`, shared with
the client; the OpenAPI schema is generated from both).

Requests are strict (no coercion: ``"k": "10"`` is an error) and forbid unknown fields, so
a typo is a 422 that names it instead of an option silently ignored.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from embedsvc.collection import NAME_PATTERN, NAME_RULE
from embedsvc.search.filters import FIELD
from embedsvc.vectors_in import MAX_DIMENSION

Mode = Literal["auto", "dense", "lexical", "hybrid"]

# Some text, not only whitespace, as the schema says it: a character that is whitespace
# neither to JSON Schema (ECMA-262's \s, which has U+FEFF) nor to Python (str.isspace, which
# has U+001C-U+001F and U+0085), so that the server's check (has_text) and a client
# validating against the schema agree on every string.
HAS_TEXT = r"[^\s\u001c-\u001f\u0085\ufeff]"


def has_text(value: str) -> bool:
    """What HAS_TEXT says, in Python."""
    return any(not (c.isspace() or c == "\ufeff") for c in value)


def optional_text(**limits: str) -> Callable[[dict[str, Any]], None]:
    """The schema of an optional text field: HAS_TEXT on its string branch (a pattern beside
    ``anyOf`` would be read differently by different validators), and its limits."""
    def edit(schema: dict[str, Any]) -> None:
        for branch in schema.get("anyOf", []):
            if branch.get("type") == "string":
                branch["pattern"] = HAS_TEXT
        schema.update(limit(**limits))
    return edit
# No NUL character (checks.ids says why).
NO_NUL = r"^[^\u0000]*$"


def limit(**keywords: str) -> dict[str, Any]:
    """Mark a field with JSON Schema keywords whose values are settings (``maxItems=
    "max_batch_documents"``): :func:`embedsvc.api.openapi.state_limits` writes the values the
    server enforces into the schema it serves."""
    return {"x-limit": keywords}


def filter_schema() -> dict[str, Any]:
    """Mark a field as a metadata filter: the OpenAPI schema spells out its grammar."""
    return {"x-filter": True}


class Request(BaseModel):
    # strict: JSON "5", 5.0 and true are not integers; no NaN or Infinity (not JSON, and no
    # response could carry what they produce)
    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


Vector = list[float]


class SearchRequest(Request):
    """Exactly one of ``query`` (text) and ``vector`` (made elsewhere: dense search only)."""

    model_config = ConfigDict(json_schema_extra={"oneOf": [
        {"required": ["query"], "properties": {"query": {"type": "string"}}},
        {"required": ["vector"], "properties": {"vector": {"type": "array"}}}]})

    query: str | None = Field(None, min_length=1, description="Free text, not only whitespace; at most "
                                                              "EMBEDSVC_MAX_QUERY_CHARS characters.",
                              json_schema_extra=optional_text(maxLength="max_query_chars"))
    vector: Vector | None = Field(None, min_length=1, max_length=MAX_DIMENSION,
                                  description="Or a query vector of the collection's dimension (mode "
                                              "dense or auto); made unit length.")
    k: int = Field(10, ge=1, description="Results wanted; at most EMBEDSVC_MAX_K (default 1000).",
                   json_schema_extra=limit(maximum="max_k"))
    mode: Mode = Field("auto", description="auto: hybrid when an index (or fresh vectors) and the "
                                           "model are ready, else whichever side can answer.")
    model: str | None = Field(None, description="Refuse (409) unless the index uses this model.")
    filter: dict[str, Any] | None = Field(
        None, description='Metadata filter, e.g. {"year": {"$gte": 2015}, "kind": {"$in": '
                          '["review"]}}: equality, $ne, $in, $nin, $gt, $gte, $lt, $lte, $and, $or; '
                          "at most EMBEDSVC_MAX_FILTER_DEPTH levels of $and/$or and "
                          "EMBEDSVC_MAX_FILTER_CONDITIONS conditions.",
        json_schema_extra=filter_schema())
    rrf_k: int | None = Field(None, ge=1, le=1_000_000, description="Hybrid: RRF constant (EMBEDSVC_RRF_K).")
    # weights are bounded so that fused scores stay finite as the float32 the hits carry
    dense_weight: float | None = Field(None, ge=0, le=1e6, description="Hybrid: weight of the dense ranking.")
    lexical_weight: float | None = Field(None, ge=0, le=1e6, description="Hybrid: weight of the BM25 ranking.")
    include_text: bool = False
    include_metadata: bool = False


class DocumentIn(Request):
    """A document to store: some text in ``title`` or ``text`` (or a ``vector``), and under
    EMBEDSVC_MAX_DOCUMENT_BYTES (title, text and metadata as UTF-8) in all."""

    model_config = ConfigDict(json_schema_extra={"anyOf": [
        {"properties": {"text": {"pattern": HAS_TEXT}}},
        {"required": ["title"], "properties": {"title": {"pattern": HAS_TEXT}}},
        {"required": ["vector"], "properties": {"vector": {"type": "array"}}}]})

    id: str = Field(..., min_length=1, max_length=1024, description="Distinct within one call; no NUL character.",
                    json_schema_extra={"pattern": NO_NUL})
    title: str = ""
    text: str
    metadata: dict[str, Any] = Field(default_factory=dict)
    vector: Vector | None = Field(None, min_length=1, max_length=MAX_DIMENSION,
                                  description="Its vector, made elsewhere, of the collection's dimension: "
                                              "stored (unit length) instead of embedding the text.")


class UpsertRequest(Request):
    documents: list[DocumentIn] = Field(
        ..., min_length=1, description="At most EMBEDSVC_MAX_BATCH_DOCUMENTS, distinct ids.",
        json_schema_extra=limit(maxItems="max_batch_documents"))


class DeleteRequest(Request):
    """Exactly one of ``ids`` and ``filter`` (the other absent or null)."""

    model_config = ConfigDict(json_schema_extra={"oneOf": [
        {"required": ["ids"], "properties": {"ids": {"type": "array"}}},
        {"required": ["filter"], "properties": {"filter": {"type": "object"}}}]})

    ids: list[Annotated[str, Field(json_schema_extra={"pattern": NO_NUL})]] | None = Field(
        None, description="Documents to delete by id; at most EMBEDSVC_MAX_BATCH_DOCUMENTS.",
                                  json_schema_extra=limit(maxItems="max_batch_documents"))
    filter: dict[str, Any] | None = Field(None, description="Or every document this filter matches.",
                                          json_schema_extra=filter_schema())


class CreateCollectionRequest(Request):
    name: str = Field(..., description=f"{NAME_RULE}.", json_schema_extra={"pattern": f"^{NAME_PATTERN}$"})
    model: str | None = Field(None, description="Model of its vectors (EMBEDSVC_DEFAULT_MODEL, unless "
                                                "only a dimension is given).")
    dimension: int | None = Field(None, ge=1, le=MAX_DIMENSION,
                                  description="Without a model: a collection of vectors made elsewhere, "
                                              "of this dimension (text queries answer lexically).")
    metric: Literal["cosine"] = Field("cosine", description="Similarity: cosine (vectors are stored and "
                                                            "searched unit length).")
    indexed_fields: list[Annotated[str, Field(json_schema_extra={"pattern": f"^{FIELD.pattern}$"})]] = Field(
        default_factory=list, description="Metadata fields to index in SQLite for fast filters.")


class EmbedRequest(Request):
    texts: list[Annotated[str, Field(json_schema_extra=limit(maxLength="max_query_chars"))]] = Field(
        ..., min_length=1, description="At most EMBEDSVC_MAX_EMBED_TEXTS texts of at most "
                                       "EMBEDSVC_MAX_QUERY_CHARS characters.",
        json_schema_extra=limit(maxItems="max_embed_texts"))
    model: str | None = Field(None, description="Model name; the default model when omitted.")
