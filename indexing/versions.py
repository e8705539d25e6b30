"""Immutable index versions and the atomic switch between them.

A version is written into a hidden temporary folder, renamed to ``versions/NNNN`` once
complete (a rename is atomic), and only then named current in the database, in one
transaction. A crash at any point leaves the served version untouched; old versions
beyond ``keep`` are removed after the switch.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from embedsvc.collection import CollectionPaths
from embedsvc.files import write_json
from embedsvc.store import Store

log = logging.getLogger(__name__)


def existing_versions(paths: CollectionPaths) -> list[int]:
    if not paths.versions.is_dir():
        return []
    return sorted(int(p.name) for p in paths.versions.iterdir() if p.name.isdigit())


def write_version(
    paths: CollectionPaths,
    fill: Callable[[Path], dict[str, Any]],
    manifest: dict[str, Any],
) -> int:
    """Create the next version: ``fill(folder)`` writes shards and returns manifest fields."""
    paths.versions.mkdir(parents=True, exist_ok=True)
    number = (existing_versions(paths) or [0])[-1] + 1
    tmp = Path(tempfile.mkdtemp(dir=paths.versions, prefix=".building-"))
    try:
        fields = fill(tmp)
        write_json(tmp / "manifest.json",
                   {**manifest, **fields, "version": number, "created_at": time.time()})
        tmp.rename(paths.version_dir(number))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return number


def switch_version(store: Store, number: int | None, model_id: str | None) -> None:
    """Make ``number`` the served version (None: lexical only) in one transaction."""
    store.set_meta(current_version=number, model_id=model_id)
    log.info("switched to %s", f"index version {number}" if number else "lexical only")


def prune_versions(paths: CollectionPaths, current: int | None, keep: int) -> list[int]:
    """Remove all but the newest ``keep`` versions, never the current one."""
    versions = existing_versions(paths)
    doomed = [v for v in versions[:-keep] if v != current] if keep > 0 else []
    for number in doomed:
        shutil.rmtree(paths.version_dir(number), ignore_errors=True)
    for tmp in paths.versions.glob(".building-*") if paths.versions.is_dir() else []:
        shutil.rmtree(tmp, ignore_errors=True)
    return doomed
