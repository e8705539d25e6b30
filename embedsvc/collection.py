"""A collection on disk: its folder, database and index versions.

The folder is complete in itself (copy it and you have a snapshot). The version being
served is the ``current_version`` key in the database, switched in one transaction, so
a reader sees the old version or the new one, never a mix.
"""

from __future__ import annotations

import fcntl
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from embedsvc.files import read_json
from embedsvc.search.filters import check_field, index_statement
from embedsvc.store import DB_NAME, SCHEMA_VERSION, Store, create_schema, schema_version

# The one rule for collection names; they become folder names, so it is checked with
# fullmatch (``$`` would let a final newline through) and shared with the OpenAPI schema.
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
NAME_RULE = "1-64 letters, digits, '_', '-' or '.', starting with a letter or digit"
_NAME = re.compile(NAME_PATTERN)


class CollectionError(Exception):
    """A collection cannot be used as asked; the message says what to change."""


class CollectionNotFound(CollectionError):
    pass


class CollectionExists(CollectionError):
    pass


class CollectionBusy(CollectionError):
    """A build or compaction holds the collection (HTTP 409)."""


def check_name(name: str) -> str:
    """Names become folder names, so only a safe subset is allowed."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        shown = repr(name[:80] + "..." if isinstance(name, str) and len(name) > 80 else name)
        raise CollectionError(f"invalid collection name {shown}: use {NAME_RULE}")
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


def open_store(collections_dir: Path, name: str, create: bool = False,
               durable: bool = True) -> tuple[CollectionPaths, Store]:
    """Open a collection's database, creating the collection when ``create`` is set
    (``durable``: fsync every commit; see :func:`embedsvc.schema.configure`)."""
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
    return paths, Store(paths.db, durable)


def list_collections(collections_dir: Path) -> list[str]:
    if not collections_dir.is_dir():
        return []
    return sorted(p.name for p in collections_dir.iterdir()
                  if _NAME.fullmatch(p.name) and (p / DB_NAME).is_file())


def read_manifest(paths: CollectionPaths, number: int) -> dict[str, Any]:
    path = paths.version_dir(number) / "manifest.json"
    if not path.is_file():
        raise CollectionError(f"index version {number} of '{paths.name}' has no {path.name}")
    return read_json(path)


def create_collection(collections_dir: Path, name: str, model_id: str | None,
                      indexed_fields: Sequence[str] = (),
                      weights_sha256: str | None = None,
                      dimension: int | None = None) -> CollectionPaths:
    """Make an empty collection for documents written through the API.

    The folder is prepared under a temporary name and renamed into place, so a collection
    either exists complete or not at all, and two creators of one name cannot both win.

    Raises:
        CollectionExists: the name is taken.
        CollectionError: the name or a field name is invalid.
    """
    paths = collection_paths(collections_dir, name)
    fields = list(dict.fromkeys(check_field(f) for f in indexed_fields))
    if paths.root.exists():
        raise CollectionExists(f"collection '{name}' already exists")
    collections_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=collections_dir, prefix=f".creating-{name}-"))
    try:
        create_schema(tmp / DB_NAME)
        store = Store(tmp / DB_NAME)
        with store.write() as conn:
            for field in fields:
                conn.execute(index_statement(field))
            store.set_meta(conn, model_id=model_id, weights_sha256=weights_sha256,
                           indexed_fields=fields, current_version=None, dimension=dimension)
        store.close()
        try:
            tmp.rename(paths.root)  # fails if the name appeared meanwhile (not an empty dir)
        except OSError as exc:
            raise CollectionExists(f"collection '{name}' already exists") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return paths


def delete_collection(collections_dir: Path, name: str) -> None:
    """Remove a collection: renamed out of sight at once, then its files deleted.

    Raises:
        CollectionNotFound: no such collection.
        CollectionBusy: a build or compaction is running on it.
    """
    paths = collection_paths(collections_dir, name)
    if not paths.db.is_file():
        raise CollectionNotFound(f"collection '{name}' does not exist")
    with exclusive(paths):
        doomed = collections_dir / f".deleted-{name}-{uuid.uuid4().hex[:8]}"
        paths.root.rename(doomed)
    shutil.rmtree(doomed, ignore_errors=True)


@contextmanager
def exclusive(paths: CollectionPaths) -> Iterator[None]:
    """Hold the collection for a build, a compaction or its deletion: one at a time, and
    the OS drops the lock if the process dies.

    Raises:
        CollectionBusy: another of them holds it.
    """
    paths.root.mkdir(parents=True, exist_ok=True)
    with open(paths.root / "build.lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise CollectionBusy(f"a build or compaction of '{paths.name}' is running; wait for "
                                 "it to finish") from exc
        yield
