"""Immutable index versions and the atomic switch between them.

A version is written into a hidden temporary folder, renamed to ``versions/NNNN`` once
complete (a rename is atomic), and only then named current in the database, in one
transaction. A crash at any point leaves the served version untouched; old versions
beyond ``keep`` are removed after the switch.
"""

from __future__ import annotations

import logging
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from embedsvc.collection import CollectionPaths
from embedsvc.files import write_json
from embedsvc.store import PASSAGE_BITS, Store, in_list
from indexing.errors import BuildError

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


def switch_version(store: Store, number: int | None, model_id: str | None,
                   build: str | None = None, started_seq: int = 0,
                   version_ids: np.ndarray | None = None,
                   weights_sha256: str | None = None) -> None:
    """Serve version ``number`` (None: lexical only) and, for a build, its documents: one
    transaction, so readers see the old collection or the new one, never a mix.

    A build's documents reach the served tables here (a staged build's only here; a first
    build's were written as it went). Documents an earlier build wrote that this one lacks
    are removed; documents written through the API are kept, and their vectors become the
    fresh segment again (or are queued to embed when the model changed). A document written
    through the API after the build read it keeps the API's version: the build's vectors for
    it become tombstones of the new version.

    Args:
        store: the collection.
        number: the version to serve.
        model_id: its model.
        build: the build whose version this is (None: not a build, e.g. a deploy of a
            version whose documents are already served).
        started_seq: the write number when the build began (first builds, which do not stage).
        version_ids: every vector id of the version (first builds: to find the documents the
            API rewrote while the build wrote them).
        weights_sha256: the model's weights, recorded for versions compacted from this one.
    """
    with store.write() as conn:
        seq = store.next_seq(conn)
        previous = store.get_meta("current_version")
        model_changed = store.get_meta("model_id") not in (None, model_id)
        stale: list[int] = []
        if build is not None:
            direct = conn.execute("SELECT direct FROM builds WHERE id = ?", (build,)).fetchone()
            if direct is None:  # documents written into the served tables by hand
                _drop_other_builds(conn, build)
            elif direct[0]:  # a first build: its documents are served already
                stale = _rewritten_since(conn, started_seq, version_ids)
            else:
                stale = _apply_staged(conn, build, seq, indexed=number is not None)
                _drop_other_builds(conn, build)
            if previous is not None or model_changed or model_id is None:
                _demote_the_rest(conn, build, seq, model_changed, lexical=model_id is None)
            # what other builds staged was read before this switch: it can never be applied
            for (other,) in conn.execute("SELECT DISTINCT build FROM staged_documents WHERE "
                                         "build <> ?", (build,)).fetchall():
                store.drop_staged(conn, other, "superseded")
        conn.execute("DELETE FROM tombstones")
        conn.executemany("INSERT OR REPLACE INTO tombstones(vid, seq) VALUES (?, ?)",
                         [(vid, seq) for vid in stale])
        finished = {"incomplete_build": None} if build is not None else {}
        store.set_meta(conn, current_version=number, model_id=model_id,
                       weights_sha256=weights_sha256, **finished)
        conn.execute("INSERT INTO changes(seq, doc, id, op) VALUES (?, 0, ?, 'switch')",
                     (seq, build or str(number)))
    log.info("switched to %s", f"index version {number}" if number else "lexical only")


def _drop_other_builds(conn: sqlite3.Connection, build: str) -> None:
    """Remove what earlier builds wrote and this one's input no longer holds (documents
    written through the API have no build and stay)."""
    removed = "SELECT rowid FROM documents WHERE build IS NOT NULL AND build <> ?"
    conn.execute(f"DELETE FROM passages WHERE doc IN ({removed})", (build,))
    conn.execute(f"DELETE FROM pending WHERE doc IN ({removed})", (build,))
    conn.execute("DELETE FROM documents WHERE build IS NOT NULL AND build <> ?", (build,))


def _demote_the_rest(conn: sqlite3.Connection, build: str, seq: int, model_changed: bool,
                     lexical: bool) -> None:
    """Passages of documents the build did not write leave the index: their vectors become
    the fresh segment again, or, made by another model or kept nowhere, are embedded again
    (not at all when the collection has become lexical only)."""
    ours = "SELECT rowid FROM documents WHERE build = ?"
    if model_changed or lexical:
        if lexical:
            conn.execute("DELETE FROM pending")
        else:
            conn.execute("INSERT OR REPLACE INTO pending(doc, seq) SELECT DISTINCT doc, ? FROM "
                         f"passages WHERE doc NOT IN ({ours})", (seq, build))
            # those still waiting were claimed for the old model: renumbered, an embedding in
            # flight is thrown away (embed_pending stores only what it claimed)
            conn.execute("UPDATE pending SET seq = ?", (seq,))
        conn.execute(f"DELETE FROM passages WHERE doc NOT IN ({ours})", (build,))
        return
    conn.execute("INSERT OR REPLACE INTO pending(doc, seq) SELECT DISTINCT doc, ? FROM passages "
                 f"WHERE indexed = 1 AND vector IS NULL AND doc NOT IN ({ours})", (seq, build))
    conn.execute("DELETE FROM passages WHERE indexed = 1 AND vector IS NULL AND doc NOT IN "
                 f"({ours})", (build,))
    conn.execute(f"UPDATE passages SET indexed = 0 WHERE indexed = 1 AND doc NOT IN ({ours})",
                 (build,))


def _apply_staged(conn: sqlite3.Connection, build: str, seq: int, indexed: bool) -> list[int]:
    """Move a staged build's documents and passages into the served tables.

    Returns:
        Vector ids of the build's version whose documents were written through the API after
        the build read them (the API's write is the newer one and stays).
    """
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS applied (doc INTEGER PRIMARY KEY)")
    conn.execute("DELETE FROM temp.applied")
    if conn.execute("SELECT 1 FROM staged_documents WHERE build = ? LIMIT 1", (build,)).fetchone() \
            is None:
        raise BuildError(f"build {build} staged no documents that are still to be applied (another "
                         "build was served after it): build it again")
    conn.execute("INSERT INTO temp.applied SELECT rowid_ FROM staged_documents s WHERE build = ? "
                 "AND NOT EXISTS (SELECT 1 FROM changes c WHERE c.id = s.id AND c.seq > s.seen_seq "
                 "AND c.op IN ('upsert', 'delete', 'meta'))", (build,))
    conn.execute(
        "INSERT INTO documents(rowid, id, title, text, metadata, line, text_sha, build) "
        "SELECT rowid_, id, title, text, metadata, line, text_sha, build FROM staged_documents "
        "WHERE build = ? AND rowid_ IN temp.applied ON CONFLICT(id) DO UPDATE SET "
        "title = excluded.title, text = excluded.text, metadata = excluded.metadata, "
        "line = excluded.line, text_sha = excluded.text_sha, build = excluded.build", (build,))
    conn.execute("DELETE FROM passages WHERE doc IN temp.applied")
    conn.execute("DELETE FROM pending WHERE doc IN temp.applied")
    conn.execute('INSERT INTO passages(id, doc, ord, start, "end", indexed, seq) SELECT id, doc, '
                 "ord, start, \"end\", ?, ? FROM staged_passages WHERE build = ? AND doc IN "
                 "temp.applied", (int(indexed), seq, build))
    stale = [r[0] for r in conn.execute(
        "SELECT id FROM staged_passages WHERE build = ? AND doc NOT IN temp.applied", (build,))]
    conn.execute("DELETE FROM staged_passages WHERE build = ?", (build,))
    conn.execute("DELETE FROM staged_documents WHERE build = ?", (build,))
    return stale


def _rewritten_since(conn: sqlite3.Connection, started_seq: int,
                     version_ids: np.ndarray | None) -> list[int]:
    """Vector ids of a first build's version whose passages the API rewrote or deleted while
    the build ran (the build writes its documents into the served tables as it goes).

    Only documents the change log names since the build began can be affected; of their ids
    in the version, those without an indexed passage now are the version's tombstones.
    """
    docs = [doc for (doc,) in conn.execute(
        "SELECT DISTINCT doc FROM changes WHERE seq > ? AND op IN ('upsert', 'delete')",
        (started_seq,))]
    if not docs or version_ids is None:
        return []
    candidates = version_ids[np.isin(version_ids >> PASSAGE_BITS, docs)]
    operand, params = in_list(docs)
    indexed = np.fromiter((r[0] for r in conn.execute(
        f"SELECT id FROM passages WHERE indexed = 1 AND doc IN {operand}", params)), np.int64)
    return candidates[~np.isin(candidates, indexed)].tolist()


def prune_versions(paths: CollectionPaths, current: int | None, keep: int) -> list[int]:
    """Remove all but the newest ``keep`` versions, never the current one."""
    versions = existing_versions(paths)
    doomed = [v for v in versions[:-keep] if v != current] if keep > 0 else []
    for number in doomed:
        shutil.rmtree(paths.version_dir(number), ignore_errors=True)
    for tmp in paths.versions.glob(".building-*") if paths.versions.is_dir() else []:
        shutil.rmtree(tmp, ignore_errors=True)
    return doomed

