"""Document writes through the API: upserts and deletes, each one SQLite transaction.

A write is acknowledged only after its transaction commits, and everything a search needs
to see it happens inside that transaction: the document and its FTS5 row (lexical search
sees it at once), its old passages deleted (their vectors in the served version become
tombstones through a trigger, so dense search stops returning them at once), and, when its
text changed, a ``pending`` row for the embedder. Embedding happens later, outside any
write transaction (:mod:`embedsvc.live.embedder`); a document whose text did not change is
never embedded again. Each write is numbered and logged in ``changes``.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from embedsvc.search.filters import CompiledFilter
from embedsvc.store import Store, document_text, in_list, passage_id, text_sha, vector_blob


@dataclass(frozen=True)
class DocumentIn:
    id: str
    text: str
    title: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    vector: np.ndarray | None = None  # made elsewhere, unit length: stored, never embedded


@dataclass
class WriteResult:
    seq: int
    created: int = 0
    updated: int = 0  # text changed: re-embedded
    unchanged: int = 0  # same text: metadata and title only, nothing re-embedded
    deleted: int = 0
    missing: list[str] = field(default_factory=list)  # ids asked to delete that did not exist


def upsert_documents(store: Store, docs: Sequence[DocumentIn], embed: bool) -> WriteResult:
    """Insert or replace documents; queue the ones whose text changed for embedding.

    Args:
        store: the collection.
        docs: documents with distinct ids.
        embed: the collection has a model (False: lexical only, nothing to queue).
    """
    with store.write() as conn:
        seq = store.next_seq(conn)
        operand, params = in_list([d.id for d in docs])
        existing = {i: (rowid, sha) for i, rowid, sha in conn.execute(
            f"SELECT id, rowid, text_sha FROM documents WHERE id IN {operand}", params)}
        new = [d.id for d in docs if d.id not in existing]
        first = store.allocate_rowids(conn, len(new)) if new else 0
        rowids = {**{i: first + n for n, i in enumerate(new)}, **{i: r for i, (r, _) in existing.items()}}
        result = WriteResult(seq, created=len(new))
        changed, same = [], []
        for doc in docs:
            sha = text_sha(doc.title, doc.text)
            row = (rowids[doc.id], doc.id, doc.title, doc.text, json.dumps(doc.metadata), sha)
            unchanged = existing.get(doc.id, (0, None))[1] == sha and doc.vector is None
            (same if unchanged else changed).append(row)
        result.unchanged = len(same)
        result.updated = len(changed) - len(new)
        conn.executemany(
            "INSERT INTO documents(rowid, id, title, text, metadata, text_sha) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET title = excluded.title, "
            "text = excluded.text, metadata = excluded.metadata, text_sha = excluded.text_sha, "
            "build = NULL, line = NULL", changed)
        # written through the API: no later build removes it
        conn.executemany("UPDATE documents SET metadata = ?, build = NULL, line = NULL "
                         "WHERE rowid = ?", [(row[4], row[0]) for row in same])
        changed_ids = [row[0] for row in changed]
        _drop_vectors(conn, changed_ids)
        given = _store_given_vectors(conn, seq, [(rowids[d.id], d) for d in docs if d.vector is not None])
        if embed:
            queue = [r for r in changed_ids if r not in given] + _without_vectors(conn, [row[0] for row in same])
            conn.executemany("INSERT OR REPLACE INTO pending(doc, seq) VALUES (?, ?)",
                             [(doc, seq) for doc in queue])
        _log(conn, seq, [(row[0], row[1]) for row in changed], "upsert")
        _log(conn, seq, [(row[0], row[1]) for row in same], "meta")
    return result


def delete_documents(store: Store, ids: Sequence[str] | None = None,
                     where: CompiledFilter | None = None) -> WriteResult:
    """Delete documents by id, or every document a filter matches (one of the two)."""
    with store.write() as conn:
        seq = store.next_seq(conn)
        if ids is not None:
            operand, params = in_list(ids)
            rows = conn.execute(f"SELECT rowid, id FROM documents WHERE id IN {operand}",
                                params).fetchall()
        else:
            assert where is not None
            rows = conn.execute(f"SELECT rowid, id FROM documents WHERE {where.sql}",
                                where.params).fetchall()
        rowids = [r for r, _ in rows]
        _drop_vectors(conn, rowids)
        operand, params = in_list(rowids)
        conn.execute(f"DELETE FROM documents WHERE rowid IN {operand}", params)
        _log(conn, seq, rows, "delete")
    found = {i for _, i in rows}
    return WriteResult(seq, deleted=len(rows),
                       missing=[i for i in dict.fromkeys(ids) if i not in found] if ids else [])


def _store_given_vectors(conn: sqlite3.Connection, seq: int,
                         docs: Sequence[tuple[int, DocumentIn]]) -> set[int]:
    """Documents' own vectors, each as the one passage of its whole text, in the fresh
    segment at once (no embedding); returns their row ids."""
    conn.executemany('INSERT INTO passages(id, doc, ord, start, "end", indexed, seq, vector) '
                     "VALUES (?, ?, 0, 0, ?, 0, ?, ?)",
                     [(passage_id(rowid, 0), rowid, len(document_text(d.title, d.text)), seq,
                       vector_blob(d.vector)) for rowid, d in docs])
    return {rowid for rowid, _ in docs}


def _drop_vectors(conn: sqlite3.Connection, rowids: list[int]) -> None:
    """Forget documents' passages and queued embeddings; served vectors become tombstones."""
    operand, params = in_list(rowids)
    conn.execute(f"DELETE FROM passages WHERE doc IN {operand}", params)
    conn.execute(f"DELETE FROM pending WHERE doc IN {operand}", params)


def _without_vectors(conn: sqlite3.Connection, rowids: list[int]) -> list[int]:
    """Those of ``rowids`` that have neither passages nor a queued embedding."""
    if not rowids:
        return []
    operand, params = in_list(rowids)
    have = {r for (r,) in conn.execute(
        f"SELECT doc FROM passages WHERE doc IN {operand} UNION "
        f"SELECT doc FROM pending WHERE doc IN {operand}", params * 2)}
    return [r for r in rowids if r not in have]


def _log(conn: sqlite3.Connection, seq: int, rows: Sequence[tuple[int, str]], op: str) -> None:
    conn.executemany("INSERT INTO changes(seq, doc, id, op) VALUES (?, ?, ?, ?)",
                     [(seq, rowid, doc_id, op) for rowid, doc_id in rows])


def trim_changes(store: Store, conn: sqlite3.Connection, up_to: int) -> int:
    """Drop the change log up to write ``up_to``, inside the caller's write transaction.

    What a build still checks its documents against (a staged one's, or a first build's
    since it began) is kept whatever ``up_to`` says; a searcher whose snapshot is older than
    what is left reloads in full.

    Returns:
        The write number the log now starts after.
    """
    staged = conn.execute("SELECT min(seen_seq) FROM staged_documents").fetchone()[0]
    first = conn.execute("SELECT min(started_seq) FROM builds WHERE status = 'running' AND "
                         "direct = 1").fetchone()[0]
    floor = max(min([up_to] + [s for s in (staged, first) if s is not None]),
                store.get_meta("changes_floor", 0))
    conn.execute("DELETE FROM changes WHERE seq <= ?", (floor,))
    store.set_meta(conn, changes_floor=floor)
    return floor
