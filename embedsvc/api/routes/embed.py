"""Embeddings on demand, with the same models the collections use."""

from __future__ import annotations

from fastapi import APIRouter, Response
from starlette.concurrency import run_in_threadpool

from embedsvc.api import checks
from embedsvc.api.deps import ServiceDep, SettingsDep
from embedsvc.api.errors import JSON_BODY, ApiError, responses
from embedsvc.api.limits import JsonRoute
from embedsvc.api.routes._json import json_response
from embedsvc.api.schemas import EmbedRequest
from embedsvc.metrics import EMBEDDED_TEXTS
from embedsvc.responses import Embeddings
from embedsvc.service import Service

router = APIRouter(prefix="/v1", tags=["embed"], route_class=JsonRoute)

# Seconds an /embed call waits for a model that is still loading before answering 503.
_LOAD_WAIT = 60.0


@router.post("/embed", operation_id="embed", response_model=Embeddings,
             responses=responses(*JSON_BODY, 404, 503))
async def embed(body: EmbedRequest, service: ServiceDep, settings: SettingsDep) -> Response:
    """Unit-normalised vectors for up to EMBEDSVC_MAX_EMBED_TEXTS texts."""
    checks.embed_limits(body, settings)
    name = body.model or settings.default_model
    if name != settings.default_model and name not in service.models.status():
        # Only models the server already knows are loaded on request, so a client
        # cannot make the server read arbitrary paths.
        known = {service.searcher(c).store.get_meta("model_id") for c in service.collections()}
        if name not in known:
            raise ApiError(404, "not_found",
                           f"unknown model '{name}': use '{settings.default_model}' or the model "
                           "of a collection")
    answer = await run_in_threadpool(_embeddings, service, name, body.texts)
    EMBEDDED_TEXTS.inc(len(body.texts))
    return answer


def _embeddings(service: Service, name: str, texts: list[str]) -> Response:
    """Wait for the model, encode and write the body, in one trip to the thread pool. One
    text shares encoder calls with concurrent queries; nothing is cached: texts embedded on
    demand are rarely asked for again and would push queries out of the cache."""
    encoder = service.models.wait(name, _LOAD_WAIT)
    vectors = service.queries.encode(encoder, texts, cache=False)
    # the fields of Embeddings, the vectors written straight from the float32 array
    return json_response({"model": encoder.spec.model_id, "dim": encoder.dim, "vectors": vectors})
