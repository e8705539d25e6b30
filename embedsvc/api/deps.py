"""Dependencies shared by the routes, as ``Annotated`` aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from embedsvc.service import Service
from embedsvc.settings import Settings


async def get_service(request: Request) -> Service:
    """async: a plain function would cost every request a trip through the thread pool."""
    return request.app.state.service


async def get_settings(request: Request) -> Settings:
    return request.app.state.service.settings


ServiceDep = Annotated[Service, Depends(get_service)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
