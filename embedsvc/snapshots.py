"""Snapshots of a collection while it serves and takes writes, and restoring them.

A snapshot is the collection's database, copied with SQLite's online backup API (one read
transaction, so it is the state after some commit and never a mix of two), plus the files
of the index version that database serves, plus ``snapshot.json``: what it is, the schema
version, the write sequence number it stops at, and the size and sha256 of every file.
Index versions are immutable folders, so copying the served one needs no lock; if a
compaction removes it between the backup and the copy, the snapshot is taken again.

Restoring verifies everything before anything is placed: the format, the schema version
(one newer than this embedsvc knows is refused), every file's size and checksum, that no
unlisted file came along, and SQLite's own integrity check. The collection is assembled
beside the others and renamed into place, so a failed restore leaves nothing behind and an
existing collection is never touched unless ``replace`` is asked for.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from embedsvc.collection import (
    CollectionError,
    CollectionExists,
    CollectionNotFound,
    check_name,
    collection_paths,
    exclusive,
)
from embedsvc.files import sha256_file, write_json
from embedsvc.store import DB_NAME, SCHEMA_VERSION

FORMAT = "embedsvc-snapshot"
FORMAT_VERSION = 1
MANIFEST = "snapshot.json"
ATTEMPTS = 3  # a served version removed mid-copy (compaction) makes the snapshot start again


class SnapshotError(CollectionError):
    """A snapshot cannot be written or restored; the message says what to change."""


def take_snapshot(collections_dir: Path, name: str, dest: Path) -> dict[str, Any]:
    """Write a consistent snapshot of collection ``name`` to ``dest`` (``.tar``: one file).

    Returns:
        The manifest written into it.

    Raises:
        CollectionNotFound: no such collection.
        SnapshotError: ``dest`` exists, or its folder does not.
    """
    paths = collection_paths(collections_dir, name)
    if not paths.db.is_file():
        raise CollectionNotFound(f"collection '{name}' does not exist")
    if dest.exists():
        raise SnapshotError(f"{dest} exists: snapshots never overwrite; give a new path")
    if not dest.parent.is_dir():
        raise SnapshotError(f"{dest.parent} is not a folder: create it first")
    with _staging(dest.parent, f".{dest.name}.partial-") as staging:
        manifest = _copy_consistent(paths, name, staging)
        write_json(staging / MANIFEST, manifest)
        if dest.suffix == ".tar":
            partial = staging.with_suffix(".tar")
            with tarfile.open(partial, "w") as tar:
                for path in sorted(staging.rglob("*")):
                    tar.add(path, arcname=str(path.relative_to(staging)), recursive=False)
            partial.rename(dest)
        else:
            staging.rename(dest)
    return manifest


def _copy_consistent(paths: Any, name: str, staging: Path) -> dict[str, Any]:
    for _ in range(ATTEMPTS):
        for child in staging.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()
        _backup(paths.db, staging / DB_NAME)
        state = _state(staging / DB_NAME)
        version = state["current_version"]
        try:
            if version is not None:
                shutil.copytree(paths.version_dir(version), staging / "versions" / f"{version:04d}")
        except FileNotFoundError:
            continue  # compacted away between the backup and the copy: take it again
        return _manifest(staging, name, state)
    raise SnapshotError(f"the served index of '{name}' kept changing during {ATTEMPTS} attempts; "
                        "try again when no compaction runs")


def _backup(db: Path, target: Path) -> None:
    """SQLite's online backup, in one step: one read transaction, one committed state."""
    source = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    copy = sqlite3.connect(target)
    try:
        source.backup(copy)
        copy.execute("PRAGMA journal_mode = DELETE")  # one self-contained file in the snapshot
    finally:
        copy.close()
        source.close()


def _state(db: Path) -> dict[str, Any]:
    conn = sqlite3.connect(db)
    try:
        meta = {k: json.loads(v) for k, v in conn.execute(
            "SELECT key, value FROM meta WHERE key IN ('schema_version', 'current_version', 'seq', "
            "'model_id')")}
        documents = conn.execute("SELECT count(*) FROM documents").fetchone()[0]
    finally:
        conn.close()
    return {"schema_version": meta.get("schema_version", 0), "current_version": meta.get("current_version"),
            "seq": meta.get("seq", 0), "model": meta.get("model_id"), "documents": documents}


def _manifest(staging: Path, name: str, state: dict[str, Any]) -> dict[str, Any]:
    files = {str(p.relative_to(staging)): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
             for p in sorted(staging.rglob("*")) if p.is_file()}
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "collection": name,
            "created_at": time.time(), **state, "files": files}


def restore_snapshot(collections_dir: Path, source: Path, as_name: str | None = None,
                     replace: bool = False) -> dict[str, Any]:
    """Verify the snapshot at ``source`` (a folder or ``.tar``) and make it a collection.

    Args:
        collections_dir: where collections live.
        source: the snapshot.
        as_name: the collection's name (default: the one it was taken from).
        replace: replace an existing collection of that name.

    Returns:
        The snapshot's manifest, with ``restored_as`` added.

    Raises:
        SnapshotError: missing, partial, damaged, foreign or too new; the message says which.
        CollectionExists: the name is taken and ``replace`` is not set.
    """
    if not source.exists():
        raise SnapshotError(f"no snapshot at {source}")
    name = check_name(as_name) if as_name is not None else None
    collections_dir.mkdir(parents=True, exist_ok=True)
    with _staging(collections_dir, ".restoring-") as staging:
        _unpack(source, staging)
        manifest = verify_snapshot(staging)
        name = name or check_name(manifest["collection"])
        (staging / MANIFEST).unlink()
        _place(collections_dir, name, staging, replace)
    return {**manifest, "restored_as": name}


def _unpack(source: Path, staging: Path) -> None:
    if source.is_dir():
        shutil.copytree(source, staging, dirs_exist_ok=True)
        return
    try:
        with tarfile.open(source, "r:") as tar:
            tar.extractall(staging, filter="data")  # no absolute paths, links out, devices
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise SnapshotError(f"{source} is not a readable snapshot (damaged or partial?): {exc}") from exc


def verify_snapshot(folder: Path) -> dict[str, Any]:
    """The manifest of an unpacked snapshot once every check passes (see the module doc)."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SnapshotError(f"not an embedsvc snapshot: no readable {MANIFEST} ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise SnapshotError(f"not an embedsvc snapshot: {MANIFEST} does not say format {FORMAT!r}")
    if manifest.get("format_version", 0) > FORMAT_VERSION or manifest.get("schema_version", 0) > SCHEMA_VERSION:
        raise SnapshotError(f"the snapshot was made by a newer embedsvc (schema {manifest.get('schema_version')}, "
                            f"this one reads up to {SCHEMA_VERSION}): upgrade embedsvc to restore it")
    listed = manifest.get("files") or {}
    present = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()} - {MANIFEST}
    if missing := sorted(set(listed) - present):
        raise SnapshotError(f"partial snapshot: {len(missing)} file(s) missing, e.g. {missing[0]}")
    if extra := sorted(present - set(listed)):
        raise SnapshotError(f"the snapshot holds files its manifest does not list, e.g. {extra[0]}: "
                            "not restored")
    for rel, expected in listed.items():
        path = folder / rel
        if path.stat().st_size != expected.get("bytes") or sha256_file(path) != expected.get("sha256"):
            raise SnapshotError(f"damaged snapshot: {rel} does not match its checksum")
    _check_database(folder / DB_NAME)
    return manifest


def _check_database(db: Path) -> None:
    if not db.is_file():
        raise SnapshotError(f"partial snapshot: no {DB_NAME}")
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        result = conn.execute("PRAGMA integrity_check").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        raise SnapshotError(f"damaged snapshot: {DB_NAME} is not a readable database ({exc})") from exc
    finally:
        conn.close()
    if result != "ok":
        raise SnapshotError(f"damaged snapshot: {DB_NAME} fails SQLite's integrity check ({result})")


def _place(collections_dir: Path, name: str, staging: Path, replace: bool) -> None:
    """Rename the verified folder into place; with ``replace``, the old one out first."""
    paths = collection_paths(collections_dir, name)
    if not paths.root.exists():
        try:
            staging.rename(paths.root)
            return
        except OSError as exc:  # appeared meanwhile
            raise CollectionExists(f"collection '{name}' already exists") from exc
    if not replace:
        raise CollectionExists(f"collection '{name}' exists: restore it under another name (--as NAME) "
                               "or replace it (--replace)")
    with exclusive(paths):  # not while a build or compaction writes into it
        old = collections_dir / f".replaced-{name}-{int(time.time() * 1000)}"
        paths.root.rename(old)
        staging.rename(paths.root)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def _staging(parent: Path, prefix: str) -> Iterator[Path]:
    """A temporary folder beside the destination (same file system: renames are atomic),
    removed whatever happens, with the ``.tar`` made from it."""
    folder = Path(tempfile.mkdtemp(dir=parent, prefix=prefix))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        folder.with_suffix(".tar").unlink(missing_ok=True)
