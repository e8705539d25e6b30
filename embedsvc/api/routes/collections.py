"""Collections: create, list, describe, delete, search."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter

from embedsvc.api import checks
from embedsvc.api.deps import ServiceDep, SettingsDep
from embedsvc.api.errors import ApiError
from embedsvc.api.schemas import (
    CollectionInfo,
    CollectionList,
    CreateCollectionRequest,
    Deleted,
    ErrorResponse,
    SearchRequest,
    SearchResponse,
)
from embedsvc.encoders import ModelError
from embedsvc.metrics import record_search

router = APIRouter(
    prefix="/v1/collections",
    tags=["collections"],
    responses={400: {"model": ErrorResponse}, 404: {"model": ErrorResponse},
               422: {"model": ErrorResponse}},
)


@router.get("", operation_id="list_collections", response_model=CollectionList)
def list_collections(service: ServiceDep) -> CollectionList:
    return CollectionList(collections=service.collections())


@router.post("", operation_id="create_collection", response_model=CollectionInfo, status_code=201,
             responses={409: {"model": ErrorResponse}})
def create_collection(body: CreateCollectionRequest, service: ServiceDep) -> CollectionInfo:
    """An empty collection for documents written through the API; its model embeds them."""
    try:
        return CollectionInfo(**service.create(body.name, body.model, body.indexed_fields))
    except ModelError as exc:
        raise ApiError(422, "invalid_request", f"model: {exc}") from exc


@router.get("/{name}", operation_id="get_collection", response_model=CollectionInfo)
def get_collection(name: str, service: ServiceDep) -> CollectionInfo:
    """Documents, vectors indexed, fresh, deleted and pending, and the version served."""
    return CollectionInfo(**service.describe(name))


@router.delete("/{name}", operation_id="delete_collection", response_model=Deleted,
               responses={409: {"model": ErrorResponse}})
def delete_collection(name: str, service: ServiceDep) -> Deleted:
    """Delete a collection and all its files (refused while a build or compaction runs)."""
    service.delete(name)
    return Deleted(deleted=name)


@router.post("/{name}/search", operation_id="search", response_model=SearchResponse,
             response_model_exclude_none=False,
             responses={409: {"model": ErrorResponse}, 503: {"model": ErrorResponse}})
def search(name: str, body: SearchRequest, service: ServiceDep,
           settings: SettingsDep) -> SearchResponse:
    """Search a collection. The response says which mode answered and why, if degraded."""
    checks.search_limits(body, settings)
    where = checks.metadata_filter(body.filter, settings)
    result = service.searcher(name).search(
        body.query, body.k, body.mode, body.model, body.include_text, body.include_metadata,
        where, checks.fusion(body, settings))
    record_search(name, result.mode, result.fallback, result.took_ms / 1000)
    return SearchResponse(
        collection=name, mode=result.mode, fallback=result.fallback,
        index_version=result.index_version, took_ms=result.took_ms,
        hits=[asdict(hit) for hit in result.hits],
    )
