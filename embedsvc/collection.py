"""A collection on disk: its folder, database and index versions.

The folder is complete in itself (copy it and you have a snapshot). The version being
served is the ``current_version`` key in the database, switched in one transaction, so
a reader sees the old version or the new one, never a mix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from embedsvc.files import read_json
from embedsvc.store import DB_NAME, SCHEMA_VERSION, Store, create_schema, schema_version

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class CollectionError(Exception):
    """A collection cannot be used as asked; the message says what to change."""


class CollectionNotFound(CollectionError):
    pass


def check_name(name: str) -> str:
    """Names become folder names, so only a safe subset is allowed."""
    if not _NAME.match(name or "") or name in {".", ".."}:
        raise CollectionError(
            f"invalid collection name {name!r}: use 1-64 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit"
        )
    return name


@dataclass(frozen=True)
class CollectionPaths:
    root: Path

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def db(self) -> Path:
        return self.root / DB_NAME

    @property
    def versions(self) -> Path:
        return self.root / "versions"

    @property
    def builds(self) -> Path:
        return self.root / "builds"

    def version_dir(self, number: int) -> Path:
        return self.versions / f"{number:04d}"


def collection_paths(collections_dir: Path, name: str) -> CollectionPaths:
    return CollectionPaths(collections_dir / check_name(name))


def open_store(collections_dir: Path, name: str, create: bool = False) -> tuple[CollectionPaths, Store]:
    """Open a collection's database, creating the collection when ``create`` is set."""
    paths = collection_paths(collections_dir, name)
    if not paths.db.is_file():
        if not create:
            raise CollectionNotFound(
                f"collection '{name}' does not exist; build it with "
                f"`embedsvc index build {name} --input PATH`"
            )
        paths.root.mkdir(parents=True, exist_ok=True)
        create_schema(paths.db)
    elif schema_version(paths.db) < SCHEMA_VERSION:
        create_schema(paths.db)
    return paths, Store(paths.db)


def list_collections(collections_dir: Path) -> list[str]:
    if not collections_dir.is_dir():
        return []
    return sorted(p.name for p in collections_dir.iterdir() if (p / DB_NAME).is_file())


def read_manifest(paths: CollectionPaths, number: int) -> dict[str, Any]:
    path = paths.version_dir(number) / "manifest.json"
    if not path.is_file():
        raise CollectionError(f"index version {number} of '{paths.name}' has no {path.name}")
    return read_json(path)
