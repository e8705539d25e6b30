"""The FastAPI application: routers, error handlers, limits and start-up."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from embedsvc import __version__
from embedsvc.api import errors
from embedsvc.api.limits import BodyLimitMiddleware
from embedsvc.api.routes import collections, documents, embed, health, jobs
from embedsvc.service import Service
from embedsvc.settings import Settings, get_settings

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    service = Service(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        service.start()
        try:
            yield
        finally:
            service.stop()

    app = FastAPI(title="embedsvc", version=__version__, lifespan=lifespan,
                  description="Embeddings and vector search with cold-start fallbacks.")
    app.state.service = service
    errors.install(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    for router in (health.router, collections.router, documents.router, jobs.router,
                   embed.router):
        app.include_router(router)
    return app
