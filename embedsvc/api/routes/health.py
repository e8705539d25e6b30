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
                             "description": "Starting (loading) or stopping."}})
def readyz(service: ServiceDep) -> JSONResponse:
    """200 once the default model, the collections' models and their indexes are loaded
    (``ready``), and when one failed (``degraded``: search answers, with a fallback, and
    every replica sharing the home would fail alike); 503 while loading (``starting``) and
    from SIGTERM on (``stopping``), so a load balancer sends traffic elsewhere."""
    body = Readiness(**service.readiness())
    serving = body.status in ("ready", "degraded")
    return JSONResponse(body.model_dump(), status_code=200 if serving else 503)


@router.get("/metrics", operation_id="metrics", include_in_schema=False)
def metrics(settings: SettingsDep) -> Response:
    return Response(exposition(settings.metrics_dir), media_type=CONTENT_TYPE_LATEST)
