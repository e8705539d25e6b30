"""Snapshots through the API: an admin writes one without a shell on the server."""

from __future__ import annotations

import time

from fastapi import APIRouter

from embedsvc.api.deps import SettingsDep
from embedsvc.api.errors import responses
from embedsvc.api.limits import JsonRoute
from embedsvc.collection import check_name
from embedsvc.responses import Snapshot
from embedsvc.snapshots import take_snapshot

router = APIRouter(tags=["collections"], route_class=JsonRoute)


@router.post("/v1/collections/{name}/snapshots", operation_id="snapshot_collection",
             response_model=Snapshot, status_code=201, responses=responses(400, 404))
def snapshot_collection(name: str, settings: SettingsDep) -> Snapshot:
    """Write a consistent snapshot (the database at one commit, the served index files and a
    manifest with checksums) to ``<home>/snapshots/NAME-TIME.tar`` while the collection
    keeps serving and taking writes; restore it with ``embedsvc restore PATH``."""
    check_name(name)
    settings.snapshots_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    path = settings.snapshots_dir / f"{name}-{stamp}-{time.time_ns() % 10**9:09d}.tar"
    manifest = take_snapshot(settings.collections_dir, name, path)
    return Snapshot(collection=name, path=str(path), seq=manifest["seq"], documents=manifest["documents"],
                    current_version=manifest["current_version"], files=len(manifest["files"]),
                    bytes=path.stat().st_size, created_at=manifest["created_at"])
