"""Embeddings on demand, with the same models the collections use."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from embedsvc.api.deps import ServiceDep, SettingsDep
from embedsvc.api.errors import ApiError
from embedsvc.api.schemas import EmbedRequest, EmbedResponse, ErrorResponse
from embedsvc.metrics import EMBEDDED_TEXTS

router = APIRouter(prefix="/v1", tags=["embed"], responses={422: {"model": ErrorResponse}})

# Seconds an /embed call waits for a model that is still loading before answering 503.
_LOAD_WAIT = 60.0


@router.post("/embed", operation_id="embed", response_model=EmbedResponse,
             responses={503: {"model": ErrorResponse}})
async def embed(body: EmbedRequest, service: ServiceDep, settings: SettingsDep) -> EmbedResponse:
    """Unit-normalised vectors for up to EMBEDSVC_MAX_EMBED_TEXTS texts."""
    if len(body.texts) > settings.max_embed_texts:
        raise ApiError(422, "invalid_request",
                       f"texts: {len(body.texts)} given, at most {settings.max_embed_texts} a call")
    too_long = [i for i, t in enumerate(body.texts) if len(t) > settings.max_query_chars]
    if too_long:
        raise ApiError(422, "invalid_request",
                       f"texts[{too_long[0]}]: over {settings.max_query_chars} characters")
    name = body.model or settings.default_model
    if name != settings.default_model and name not in service.models.status():
        # Only models the server already knows are loaded on request, so a client
        # cannot make the server read arbitrary paths.
        known = {service.searcher(c).store.get_meta("model_id") for c in service.collections()}
        if name not in known:
            raise ApiError(404, "not_found",
                           f"unknown model '{name}': use '{settings.default_model}' or the model "
                           "of a collection")
    encoder = await run_in_threadpool(service.models.wait, name, _LOAD_WAIT)
    vectors = await run_in_threadpool(encoder.encode, body.texts)
    EMBEDDED_TEXTS.inc(len(body.texts))
    return EmbedResponse(model=encoder.spec.model_id, dim=encoder.dim, vectors=vectors.tolist())
