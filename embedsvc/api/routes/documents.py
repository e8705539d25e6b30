"""Documents of a collection: upsert a batch, delete by ids or filter, get one."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.convertors import Convertor, register_url_convertor

from embedsvc.api import checks
from embedsvc.api.deps import ServiceDep, SettingsDep
from embedsvc.api.errors import JSON_BODY, ApiError, responses
from embedsvc.api.limits import JsonRoute
from embedsvc.api.schemas import DeleteRequest, UpsertRequest
from embedsvc.responses import DeleteResult, Document, UpsertResult


class AnyText(Convertor[str]):
    """The rest of the path, newlines included: a document id may hold any character, and
    Starlette's ``path`` (``.*``) stops at a newline, so an id with one could not be read."""

    regex = "(?s:.*)"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("any_text", AnyText())

router = APIRouter(prefix="/v1/collections", tags=["documents"], route_class=JsonRoute,
                   responses=responses(400, 404, 503))


@router.put("/{name}/documents", operation_id="upsert_documents", response_model=UpsertResult,
            responses=responses(*JSON_BODY))
def upsert(name: str, body: UpsertRequest, service: ServiceDep,
           settings: SettingsDep) -> UpsertResult:
    """Insert or replace documents. Answered once committed: lexical search sees them at
    once, dense search once the server has embedded them (documents whose text did not
    change are not embedded again)."""
    result = service.upsert(name, checks.documents_to_write(service, name, body.documents, settings))
    return UpsertResult(collection=name, seq=result.seq, created=result.created,
                          updated=result.updated, unchanged=result.unchanged)


@router.post("/{name}/documents/delete", operation_id="delete_documents",
             response_model=DeleteResult, responses=responses(*JSON_BODY))
def delete(name: str, body: DeleteRequest, service: ServiceDep,
           settings: SettingsDep) -> DeleteResult:
    """Delete documents by ``ids`` or by ``filter``; they leave every search at once."""
    if (body.ids is None) == (body.filter is None):
        raise ApiError(422, "invalid_request", "give either 'ids' or 'filter', not both")
    if body.ids is not None:
        checks.ids(body.ids, "ids", settings)
    where = checks.metadata_filter(body.filter, settings)
    result = service.delete_documents(name, body.ids, where)
    return DeleteResult(collection=name, seq=result.seq, deleted=result.deleted,
                          missing=result.missing)


@router.get("/{name}/documents/{doc_id:any_text}", operation_id="get_document",
            response_model=Document)
def get_document(name: str, doc_id: str, service: ServiceDep) -> Document:
    row = service.store(name).document(doc_id)
    if row is None:
        raise ApiError(404, "not_found", f"collection '{name}' has no document '{doc_id}'")
    return Document(id=row.id, title=row.title, text=row.text, metadata=row.metadata)
