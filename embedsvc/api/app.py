"""The FastAPI application: routers, error handlers, limits and start-up."""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from types import FrameType

from fastapi import Depends, FastAPI

from embedsvc import __version__, metrics
from embedsvc.api import auth, errors, observability, openapi, playground
from embedsvc.api.limits import BodyLimitMiddleware
from embedsvc.api.routes import collections, documents, embed, health, jobs, openai_compat, snapshots
from embedsvc.service import Service
from embedsvc.settings import Settings, get_settings

log = logging.getLogger(__name__)

# The API's routers; the health router's routes are open, the others carry their scope.
ROUTERS = (health.router, collections.router, documents.router, jobs.router, embed.router,
           snapshots.router, openai_compat.router)


def on_termination(callback: Callable[[], None], drain_seconds: float = 0.0) -> Callable[[], None]:
    """On SIGTERM call ``callback`` (readiness turns false), wait ``drain_seconds`` (so load
    balancers see it and stop sending), then hand the signal to uvicorn's handler, which
    stops accepting and lets requests in flight finish. Returns what undoes it.

    Signals reach the main thread only: a server run in another thread (tests) has none.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.getsignal(signal.SIGTERM)

    def pass_on(signum: int, frame: FrameType | None) -> None:
        if callable(previous):
            previous(signum, frame)
        else:  # no handler before ours: die as SIGTERM would have made us
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)

    def handler(signum: int, frame: FrameType | None) -> None:
        callback()
        if drain_seconds > 0:
            threading.Timer(drain_seconds, pass_on, (signum, frame)).start()
        else:
            pass_on(signum, frame)

    signal.signal(signal.SIGTERM, handler)
    return lambda: signal.signal(signal.SIGTERM, previous)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    service = Service(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        service.start()
        restore = on_termination(service.begin_stopping, settings.shutdown_drain_seconds)
        try:
            yield
        finally:
            restore()
            service.stop()
            metrics.worker_stopped(settings.metrics_dir)

    app = FastAPI(title="embedsvc", version=__version__, lifespan=lifespan,
                  description="Embeddings and vector search with cold-start fallbacks.",
                  docs_url=None, redoc_url=None)  # openapi.install serves /docs offline
    app.state.service = service
    errors.install(app)
    openapi.install(app, settings)
    playground.install(app)  # the search page at /, open like /docs
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    observability.install(app, settings)
    auth.install(app, settings)
    app.include_router(health.router, dependencies=[Depends(auth.authorize_unlisted)])
    for router in ROUTERS[1:]:
        app.include_router(router, dependencies=[Depends(auth.authorize)], responses=auth.AUTH_RESPONSES)
    return app
