"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from embedsvc.api.deps import ServiceDep, SettingsDep
from embedsvc.metrics import exposition
from embedsvc.responses import Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", operation_id="healthz", response_model=Health)
def healthz() -> Health:
    """The process is up and answering."""
    return Health(status="ok")


@router.get("/readyz", operation_id="readyz", response_model=Readiness,
            responses={503: {"model": Readiness,
                             "description": "Starting (loading), degraded or stopping."}})
def readyz(service: ServiceDep) -> JSONResponse:
    """200 once the default model, the collections' models and their indexes are loaded;
    503 while loading, after one failed (search still answers, with a fallback) and from
    SIGTERM on, so a load balancer sends traffic elsewhere."""
    body = Readiness(**service.readiness())
    return JSONResponse(body.model_dump(), status_code=200 if body.status == "ready" else 503)


@router.get("/metrics", operation_id="metrics", include_in_schema=False)
def metrics(settings: SettingsDep) -> Response:
    return Response(exposition(settings.metrics_dir), media_type=CONTENT_TYPE_LATEST)
