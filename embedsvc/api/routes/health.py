"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from embedsvc.api.deps import ServiceDep
from embedsvc.api.schemas import Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", operation_id="healthz", response_model=Health)
def healthz() -> Health:
    """The process is up and answering."""
    return Health(status="ok")


@router.get("/readyz", operation_id="readyz", response_model=Readiness,
            responses={503: {"model": Readiness, "description": "A model is loading or failed."}})
def readyz(service: ServiceDep) -> JSONResponse:
    """200 when every model the collections need is loaded (search is never down: BM25
    answers meanwhile), 503 while one is still loading or has failed."""
    models = service.readiness()
    ready = all(state == "ready" for state in models.values())
    body = Readiness(status="ready" if ready else "degraded", models=models,
                     collections=service.collections())
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


@router.get("/metrics", operation_id="metrics", include_in_schema=False)
def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
