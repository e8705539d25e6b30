"""Collections: create, list, describe, delete, search."""

from __future__ import annotations

from fastapi import APIRouter, Response

from embedsvc.api import checks
from embedsvc.api.deps import ServiceDep, SettingsDep
from embedsvc.api.errors import JSON_BODY, ApiError, responses
from embedsvc.api.limits import JsonRoute
from embedsvc.api.routes._json import model_response
from embedsvc.api.schemas import CreateCollectionRequest, SearchRequest
from embedsvc.collection import check_name
from embedsvc.encoders import ModelError, is_named_model
from embedsvc.metrics import record_search
from embedsvc.responses import CollectionInfo, CollectionList, Deleted, SearchResult

router = APIRouter(prefix="/v1/collections", tags=["collections"], route_class=JsonRoute)


@router.get("", operation_id="list_collections", response_model=CollectionList)
def list_collections(service: ServiceDep) -> CollectionList:
    return CollectionList(collections=service.collections())


@router.post("", operation_id="create_collection", response_model=CollectionInfo, status_code=201,
             responses=responses(*JSON_BODY, 409))
def create_collection(body: CreateCollectionRequest, service: ServiceDep) -> CollectionInfo:
    """An empty collection for documents written through the API; its model embeds them."""
    check_name(body.name)  # before the model is looked up: a bad name is the first thing to say
    if body.model is not None and not is_named_model(body.model, service.settings.models_dir):
        # a client must not make the server read folders of its choosing
        raise ApiError(422, "invalid_request",
                       f"model: '{body.model}' is not the default model nor a registered model "
                       "version (name/version); a model folder on the server's disk can be used "
                       "with `embedsvc collections create --model PATH` on the server")
    try:
        return CollectionInfo(**service.create(body.name, body.model, body.indexed_fields,
                                               dimension=body.dimension))
    except ModelError as exc:
        raise ApiError(422, "invalid_request", f"model: {exc}") from exc


@router.get("/{name}", operation_id="get_collection", response_model=CollectionInfo,
            responses=responses(400, 404, 503))
def get_collection(name: str, service: ServiceDep) -> CollectionInfo:
    """Documents, vectors indexed, fresh, deleted and pending, and the version served."""
    return CollectionInfo(**service.describe(name))


@router.delete("/{name}", operation_id="delete_collection", response_model=Deleted,
               responses=responses(400, 404, 409))
def delete_collection(name: str, service: ServiceDep) -> Deleted:
    """Delete a collection and all its files (refused while a build or compaction runs)."""
    service.delete(name)
    return Deleted(deleted=name)


@router.post("/{name}/search", operation_id="search", response_model=SearchResult,
             response_model_exclude_none=False,
             responses=responses(*JSON_BODY, 404, 409, 503))
def search(name: str, body: SearchRequest, service: ServiceDep,
           settings: SettingsDep) -> Response:
    """Search a collection. The response says which mode answered and why, if degraded."""
    checks.search_limits(body, settings)
    where = checks.metadata_filter(body.filter, settings)
    if body.vector is not None:
        vector = service.unit_vectors(name, [body.vector], ["vector"])[0]
        result = service.searcher(name).search_vector(vector, body.k, body.include_text,
                                                      body.include_metadata, where)
    else:
        result = service.searcher(name).search(
            body.query, body.k, body.mode, body.model, body.include_text, body.include_metadata,
            where, checks.fusion(body, settings))
    record_search(name, result.mode, result.fallback, result.took_ms / 1000)
    # written here, in the request's worker thread: see embedsvc.api.routes._json
    return model_response(SearchResult(
        collection=name, mode=result.mode, fallback=result.fallback,
        index_version=result.index_version, took_ms=result.took_ms,
        hits=result.hits,
    ))
