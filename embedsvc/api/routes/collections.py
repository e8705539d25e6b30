"""Collections: list, describe, search, fetch a document."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter

from embedsvc.api.deps import ServiceDep, SettingsDep
from embedsvc.api.errors import ApiError
from embedsvc.api.schemas import DocumentOut, ErrorResponse, SearchRequest, SearchResponse
from embedsvc.metrics import record_search
from embedsvc.settings import Settings

router = APIRouter(
    prefix="/v1/collections",
    tags=["collections"],
    responses={404: {"model": ErrorResponse}, 422: {"model": ErrorResponse}},
)


def check_search_limits(body: SearchRequest, settings: Settings) -> None:
    if not body.query.strip():
        raise ApiError(422, "invalid_request", "query: must contain text, not only whitespace")
    if len(body.query) > settings.max_query_chars:
        raise ApiError(422, "invalid_request",
                       f"query: {len(body.query)} characters, the limit is "
                       f"{settings.max_query_chars}; shorten it")
    if body.k > settings.max_k:
        raise ApiError(422, "invalid_request", f"k: {body.k} is over the limit of {settings.max_k}")


@router.get("", operation_id="list_collections")
def list_collections(service: ServiceDep) -> dict[str, list[str]]:
    return {"collections": service.collections()}


@router.get("/{name}", operation_id="get_collection")
def get_collection(name: str, service: ServiceDep) -> dict[str, Any]:
    """Document count, model, and the index version being served."""
    return service.describe(name)


@router.post("/{name}/search", operation_id="search", response_model=SearchResponse,
             response_model_exclude_none=False,
             responses={409: {"model": ErrorResponse}, 503: {"model": ErrorResponse}})
def search(name: str, body: SearchRequest, service: ServiceDep,
           settings: SettingsDep) -> SearchResponse:
    """Search a collection. The response says which mode answered and why, if degraded."""
    check_search_limits(body, settings)
    searcher = service.searcher(name)
    result = searcher.search(body.query, body.k, body.mode, body.model,
                             body.include_text, body.include_metadata)
    record_search(name, result.mode, result.fallback, result.took_ms / 1000)
    return SearchResponse(
        collection=name, mode=result.mode, fallback=result.fallback,
        index_version=result.index_version, took_ms=result.took_ms,
        hits=[asdict(hit) for hit in result.hits],
    )


@router.get("/{name}/documents/{doc_id:path}", operation_id="get_document", response_model=DocumentOut)
def get_document(name: str, doc_id: str, service: ServiceDep) -> DocumentOut:
    row = service.searcher(name).store.document(doc_id)
    if row is None:
        raise ApiError(404, "not_found", f"collection '{name}' has no document '{doc_id}'")
    return DocumentOut(id=row.id, title=row.title, text=row.text, metadata=row.metadata)
