"""Documents of a collection: upsert a batch, delete by ids or filter, get one."""

from __future__ import annotations

from fastapi import APIRouter

from embedsvc.api import checks
from embedsvc.api.deps import ServiceDep, SettingsDep
from embedsvc.api.errors import ApiError
from embedsvc.api.schemas import (
    DeleteRequest,
    DeleteResponse,
    DocumentOut,
    ErrorResponse,
    UpsertRequest,
    UpsertResponse,
)
from embedsvc.live.writes import DocumentIn

router = APIRouter(
    prefix="/v1/collections",
    tags=["documents"],
    responses={400: {"model": ErrorResponse}, 404: {"model": ErrorResponse},
               413: {"model": ErrorResponse}, 422: {"model": ErrorResponse}},
)


@router.put("/{name}/documents", operation_id="upsert_documents", response_model=UpsertResponse)
def upsert(name: str, body: UpsertRequest, service: ServiceDep,
           settings: SettingsDep) -> UpsertResponse:
    """Insert or replace documents. Answered once committed: lexical search sees them at
    once, dense search once the server has embedded them (documents whose text did not
    change are not embedded again)."""
    checks.documents(body.documents, settings)
    result = service.upsert(name, [DocumentIn(d.id, d.text, d.title, d.metadata)
                                   for d in body.documents])
    return UpsertResponse(collection=name, seq=result.seq, created=result.created,
                          updated=result.updated, unchanged=result.unchanged)


@router.post("/{name}/documents/delete", operation_id="delete_documents",
             response_model=DeleteResponse)
def delete(name: str, body: DeleteRequest, service: ServiceDep,
           settings: SettingsDep) -> DeleteResponse:
    """Delete documents by ``ids`` or by ``filter``; they leave every search at once."""
    if (body.ids is None) == (body.filter is None):
        raise ApiError(422, "invalid_request", "give either 'ids' or 'filter', not both")
    if body.ids is not None:
        checks.batch_size(len(body.ids), "ids", settings)
    where = checks.metadata_filter(body.filter, settings)
    result = service.delete_documents(name, body.ids, where)
    return DeleteResponse(collection=name, seq=result.seq, deleted=result.deleted,
                          missing=result.missing)


@router.get("/{name}/documents/{doc_id:path}", operation_id="get_document",
            response_model=DocumentOut)
def get_document(name: str, doc_id: str, service: ServiceDep) -> DocumentOut:
    row = service.store(name).document(doc_id)
    if row is None:
        raise ApiError(404, "not_found", f"collection '{name}' has no document '{doc_id}'")
    return DocumentOut(id=row.id, title=row.title, text=row.text, metadata=row.metadata)
