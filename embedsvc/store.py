"""Access to one collection's SQLite database (tables in :mod:`embedsvc.schema`).

One file per collection, in WAL mode with a busy timeout, so one writer (a build or an
API write) never blocks the readers that serve search. Each thread gets its own
connection, in autocommit mode: every write runs inside :meth:`Store.write` (``BEGIN
IMMEDIATE``), which takes the write lock before reading anything. A deferred transaction
that reads and then writes can fail at once with "database is locked" when another writer
committed in between; an immediate one waits its turn instead.

A document's row id never changes while it lives (upsert, never delete-and-insert). API
writes and staged builds allocate new ones above every row id ever used (``next_rowid``);
a first build, which starts from an empty collection, lets SQLite number its documents.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from typing import Any

import numpy as np

from embedsvc.schema import DB_NAME, SCHEMA_VERSION, configure, create_schema, schema_version

__all__ = ["DB_NAME", "SCHEMA_VERSION", "Store", "create_schema", "schema_version"]

# A vector id packs the document's row id and the passage's ordinal within it.
PASSAGE_BITS = 16
MAX_PASSAGES = 1 << PASSAGE_BITS


def passage_id(doc_rowid: int, ordinal: int) -> int:
    return (doc_rowid << PASSAGE_BITS) | ordinal


def split_id(vector_id: int) -> tuple[int, int]:
    """(document row id, passage ordinal) of a vector id."""
    return vector_id >> PASSAGE_BITS, vector_id & (MAX_PASSAGES - 1)


def document_text(title: str, text: str) -> str:
    """The text a document is embedded as (title and body, as BEIR and MTEB do)."""
    return f"{title} {text}".strip()


def vector_blob(vector: np.ndarray) -> bytes:
    """How a passage's vector is kept in SQLite: little-endian float32."""
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()


def vectors_from_blobs(blobs: Sequence[bytes]) -> np.ndarray:
    """(len(blobs), dim) float32 from :func:`vector_blob` values; (0, 0) when there are none."""
    if not blobs:
        return np.empty((0, 0), np.float32)
    flat = np.frombuffer(b"".join(blobs), dtype="<f4")
    return flat.reshape(len(blobs), -1).astype(np.float32, copy=False)


def text_sha(title: str, text: str) -> str:
    """Fingerprint of what a document is embedded from: equal means nothing to re-embed."""
    return hashlib.sha256(document_text(title, text).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class DocumentRow:
    rowid: int
    id: str
    title: str
    text: str
    metadata: dict[str, Any]


@dataclass(frozen=True)
class NewDocument:
    id: str
    title: str
    text: str
    metadata: dict[str, Any]
    line: int


@dataclass(frozen=True)
class Tables:
    """Where a build writes: the served tables (first build) or its staging tables."""

    documents: str
    passages: str

    @property
    def staged(self) -> bool:
        return self.documents != "documents"

    @property
    def rowid(self) -> str:
        return "rowid_" if self.staged else "rowid"


SERVED = Tables("documents", "passages")
STAGED = Tables("staged_documents", "staged_passages")


def in_list(values: Sequence[Any]) -> tuple[str, tuple[str]]:
    """An ``IN (...)`` operand for any number of values: one JSON parameter, no limit."""
    return "(SELECT value FROM json_each(?))", (json.dumps(list(values)),)


class Store:
    """Access to one collection's database, one connection per thread."""

    def __init__(self, path: Path, durable: bool = True):
        self.path = path
        self.durable = durable  # False for a build's writes: see schema.configure
        self._local = threading.local()
        self._opened: list[sqlite3.Connection] = []  # every thread's, for close_all
        self._opened_lock = threading.Lock()

    @property
    def conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, check_same_thread=False,
                                   isolation_level=None)
            configure(conn, self.durable)
            self._local.conn = conn
            with self._opened_lock:
                self._opened.append(conn)
        return conn

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            with self._opened_lock:
                if conn in self._opened:  # not taken by close_all meanwhile
                    self._opened.remove(conn)
            conn.close()
            self._local.conn = None

    def close_all(self) -> None:
        """Close every thread's connection (at shutdown, when no request runs any more), so
        the last one out checkpoints the WAL and the files are left tidy."""
        with self._opened_lock:
            opened, self._opened = self._opened, []
        for conn in opened:
            conn.close()
        self._local = threading.local()

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, holding the write lock from its first statement."""
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """One read transaction: every query inside sees the same committed state."""
        conn = self.conn
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            conn.execute("COMMIT")

    # --- metadata and counters ------------------------------------------------------------
    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def set_meta(self, conn: sqlite3.Connection | None = None, **values: Any) -> None:
        """Set several keys in one transaction (``conn``'s, else a new one)."""
        if conn is None:
            with self.write() as conn:
                self.set_meta(conn, **values)
            return
        conn.executemany(
            "INSERT INTO meta(key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [(k, json.dumps(v)) for k, v in values.items()],
        )

    @staticmethod
    def next_seq(conn: sqlite3.Connection) -> int:
        """Number this write transaction: searchers and replicas catch up by these numbers."""
        return conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'seq' "
                            "RETURNING CAST(value AS INTEGER)").fetchone()[0]

    @staticmethod
    def allocate_rowids(conn: sqlite3.Connection, count: int) -> int:
        """The first of ``count`` new document row ids, above every one used before."""
        top = conn.execute("SELECT coalesce(max(rowid), 0) FROM documents").fetchone()[0]
        row = conn.execute("SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'next_rowid'"
                           ).fetchone()
        first = max(top + 1, row[0] if row else 1)
        conn.execute("INSERT INTO meta(key, value) VALUES ('next_rowid', ?) ON CONFLICT(key) "
                     "DO UPDATE SET value = excluded.value", (str(first + count),))
        return first

    # --- documents ------------------------------------------------------------------------
    def count_documents(self) -> int:
        return self.conn.execute("SELECT count(*) FROM documents").fetchone()[0]

    def existing_lines(self, ids: Sequence[str], build: str, tables: Tables = SERVED) -> dict[str, int]:
        """Line numbers at which ``build`` already stored these ids (to find duplicates)."""
        operand, params = in_list(ids)
        rows = self.conn.execute(  # through the id index: one lookup per id
            f"SELECT id, line FROM {tables.documents} WHERE build = ? AND id IN {operand}",
            (build, *params))
        return dict(rows.fetchall())

    def upsert_documents(self, docs: Sequence[NewDocument], build: str,
                         tables: Tables = SERVED) -> list[int]:
        """Store a build's documents in one transaction; return their row ids in order."""
        rows = [(d.id, d.title, d.text, json.dumps(d.metadata) if d.metadata else "{}",
                 d.line, text_sha(d.title, d.text)) for d in docs]
        return self._store_build_rows([d.id for d in docs], rows, build, tables)

    def upsert_bare_documents(self, ids: Sequence[str], lines: Iterable[int], build: str,
                              tables: Tables = SERVED,
                              metadata: Iterable[str] | None = None) -> None:
        """Documents known only by id (vectors made elsewhere), in one transaction.

        Rows are zipped straight from the ids (and their metadata, JSON): building a million
        document objects first took longer than inserting them.
        """
        rows = zip(ids, repeat(""), repeat(""), metadata or repeat("{}"), lines, repeat(None))
        self._store_build_rows(ids, rows, build, tables, want_rowids=False)

    def _store_build_rows(self, ids: Sequence[str], rows: Iterable[tuple[Any, ...]], build: str,
                          tables: Tables, want_rowids: bool = True) -> list[int]:
        with self.write() as conn:
            if not tables.staged:
                conn.executemany(
                    "INSERT INTO documents(id, title, text, metadata, line, text_sha, build) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
                    "title = excluded.title, text = excluded.text, metadata = excluded.metadata, "
                    "line = excluded.line, text_sha = excluded.text_sha, build = excluded.build",
                    (row + (build,) for row in rows))
            else:
                rowids = self._staged_rowids(conn, ids, build)
                seen = conn.execute("SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'seq'"
                                    ).fetchone()[0]
                conn.executemany(
                    "INSERT INTO staged_documents(id, title, text, metadata, line, text_sha, "
                    "build, rowid_, seen_seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT(build, id) DO UPDATE SET title = excluded.title, "
                    "text = excluded.text, metadata = excluded.metadata, line = excluded.line, "
                    "text_sha = excluded.text_sha, seen_seq = excluded.seen_seq",
                    (row + (build, rowid, seen) for row, rowid in zip(rows, rowids, strict=True)))
                return rowids
        return self.rowids(ids) if want_rowids else []

    def _staged_rowids(self, conn: sqlite3.Connection, ids: Sequence[str], build: str) -> list[int]:
        """Row ids for staged documents: a served document's own, else newly allocated ones."""
        operand, params = in_list(ids)
        known = dict(conn.execute(f"SELECT id, rowid FROM documents WHERE id IN {operand}", params))
        known.update(conn.execute(
            f"SELECT id, rowid_ FROM staged_documents WHERE build = ? AND id IN {operand}",
            (build, *params)))
        new = [i for i in dict.fromkeys(ids) if i not in known]
        if new:
            first = self.allocate_rowids(conn, len(new))
            known.update(zip(new, range(first, first + len(new)), strict=True))
        return [known[i] for i in ids]

    def build_lines(self, build: str, tables: Tables = SERVED) -> Iterator[tuple[int, int]]:
        """(line, row id) of every document ``build`` stored."""
        return self.conn.execute(
            f"SELECT line, {tables.rowid} FROM {tables.documents} WHERE build = ?", (build,))

    def rowids(self, ids: Sequence[str]) -> list[int]:
        operand, params = in_list(ids)
        found = dict(self.conn.execute(
            f"SELECT id, rowid FROM documents WHERE id IN {operand}", params))
        return [found[i] for i in ids]

    def documents_by_rowid(self, rowids: Iterable[int]) -> dict[int, DocumentRow]:
        rowids = list(rowids)
        if not rowids:
            return {}
        operand, params = in_list(rowids)
        cur = self.conn.execute(
            f"SELECT rowid, id, title, text, metadata FROM documents WHERE rowid IN {operand}",
            params)
        return {r[0]: DocumentRow(r[0], r[1], r[2] or "", r[3] or "", json.loads(r[4] or "{}"))
                for r in cur}

    def document(self, doc_id: str) -> DocumentRow | None:
        row = self.conn.execute(
            "SELECT rowid, id, title, text, metadata FROM documents WHERE id = ?", (doc_id,)
        ).fetchone()
        return DocumentRow(row[0], row[1], row[2] or "", row[3] or "",
                           json.loads(row[4] or "{}")) if row else None

    # --- passages -------------------------------------------------------------------------
    def replace_passages(self, doc_rowids: Sequence[int], spans: Sequence[Sequence[tuple[int, int]]],
                         build: str, tables: Tables = SERVED) -> list[int]:
        """Store each document's passage spans (replacing old ones); return the vector ids.

        A first build marks its passages indexed as it writes them: no version is served
        before its own, which its switch makes true (and updating a million rows then would
        cost seconds).
        """
        rows = [(passage_id(doc, o), doc, o, start, end)
                for doc, doc_spans in zip(doc_rowids, spans, strict=True)
                for o, (start, end) in enumerate(doc_spans)]
        with self.write() as conn:
            if tables.staged:
                conn.executemany("DELETE FROM staged_passages WHERE build = ? AND doc = ?",
                                 [(build, d) for d in doc_rowids])
                conn.executemany('INSERT INTO staged_passages(build, id, doc, ord, start, "end") '
                                 "VALUES (?, ?, ?, ?, ?, ?)", [(build, *r) for r in rows])
            else:
                operand, params = in_list(doc_rowids)
                self._log_rewritten(conn, f"doc IN {operand}", params)
                conn.execute(f"DELETE FROM passages WHERE doc IN {operand}", params)
                conn.execute(f"DELETE FROM pending WHERE doc IN {operand}", params)
                conn.executemany('INSERT INTO passages(id, doc, ord, start, "end", indexed) '
                                 "VALUES (?, ?, ?, ?, ?, 1)", rows)
        return [r[0] for r in rows]

    def one_passage_each(self, build: str, tables: Tables = SERVED) -> None:
        """Give each document of ``build`` a single passage (ordinal 0, no span), in SQL."""
        with self.write() as conn:
            if tables.staged:
                conn.execute("DELETE FROM staged_passages WHERE build = ?", (build,))
                conn.execute(
                    'INSERT INTO staged_passages(build, id, doc, ord, start, "end") '
                    f"SELECT build, rowid_ << {PASSAGE_BITS}, rowid_, 0, 0, 0 "
                    "FROM staged_documents WHERE build = ?", (build,))
                return
            ours = "doc IN (SELECT rowid FROM documents WHERE build = ?)"
            self._log_rewritten(conn, ours, (build,))
            conn.execute(f"DELETE FROM passages WHERE ord > 0 AND {ours}", (build,))
            conn.execute(f"DELETE FROM pending WHERE {ours}", (build,))
            conn.execute(
                'INSERT OR REPLACE INTO passages(id, doc, ord, start, "end", indexed) '
                f"SELECT rowid << {PASSAGE_BITS}, rowid, 0, 0, 0, 1 FROM documents WHERE build = ?",
                (build,))

    def _log_rewritten(self, conn: sqlite3.Connection, which: str, params: Sequence[Any]) -> None:
        """A first build rewrites documents the API wrote meanwhile: log those that had fresh
        vectors, so searchers drop the vectors at once (usually none: one indexed probe)."""
        if conn.execute("SELECT 1 FROM passages WHERE indexed = 0 AND vector IS NOT NULL LIMIT 1"
                        ).fetchone() is None:
            return
        docs = conn.execute("SELECT DISTINCT p.doc, d.id FROM passages p JOIN documents d ON "
                            f"d.rowid = p.doc WHERE p.indexed = 0 AND p.vector IS NOT NULL AND "
                            f"p.{which}", params).fetchall()
        if docs:
            seq = self.next_seq(conn)
            conn.executemany("INSERT INTO changes(seq, doc, id, op) VALUES (?, ?, ?, 'upsert')",
                             [(seq, doc, doc_id) for doc, doc_id in docs])

    def passage_spans(self, vector_ids: Iterable[int]) -> dict[int, tuple[int, int]]:
        vector_ids = list(vector_ids)
        if not vector_ids:
            return {}
        operand, params = in_list(vector_ids)
        cur = self.conn.execute(f'SELECT id, start, "end" FROM passages WHERE id IN {operand}',
                                params)
        return {i: (s, e) for i, s, e in cur}

    def count_passages(self) -> int:
        return self.conn.execute("SELECT count(*) FROM passages").fetchone()[0]

    # --- lexical search -------------------------------------------------------------------
    def bm25(self, match: str, k: int, weights: tuple[float, float],
             where: tuple[str, list[Any]] | None = None) -> list[tuple[int, float]]:
        """Top ``k`` (rowid, score) for an FTS5 MATCH expression; higher scores are better.

        ``where`` is a condition on the ``documents`` row (a metadata filter) and its
        parameters, applied inside the same query.
        """
        if where is None:
            cur = self.conn.execute(
                "SELECT rowid, -bm25(documents_fts, ?, ?) AS score FROM documents_fts "
                "WHERE documents_fts MATCH ? ORDER BY score DESC, rowid LIMIT ?",
                (*weights, match, k))
        else:
            condition, params = where
            cur = self.conn.execute(
                "SELECT f.rowid, -bm25(documents_fts, ?, ?) AS score FROM documents_fts f "
                "JOIN documents ON documents.rowid = f.rowid "
                f"WHERE documents_fts MATCH ? AND ({condition}) ORDER BY score DESC, f.rowid "
                "LIMIT ?", (*weights, match, *params, k))
        return cur.fetchall()

    # --- builds ---------------------------------------------------------------------------
    def start_build(self, build: str, fingerprint: str, source: str, model_id: str | None,
                    first: bool) -> tuple[bool, int]:
        """Record a build as running; a build that died is resumed in the mode it ran in.

        Builds that died and are not this one are abandoned: their staged rows will never be
        applied. A build that is not resumed (new, finished before, abandoned, or whose mode
        must change) forgets its recorded chunks, so every chunk is stored again.

        Args:
            first: nothing is served from the collection yet (write as it goes, unstaged).

        Returns:
            (True when the build writes into the served tables, the write number at its start).
        """
        with self.write() as conn:
            row = conn.execute("SELECT status, direct, started_seq FROM builds WHERE id = ?",
                               (build,)).fetchone()
            dead = conn.execute("SELECT id FROM builds WHERE status = 'running' AND id <> ?",
                                (build,)).fetchall()
            for (other,) in dead:
                self.drop_staged(conn, other, "abandoned")
            resuming = row is not None and row[0] == "running"
            if resuming and row[1] and not first and self.get_meta("incomplete_build") != build:
                resuming = False  # another build was served since it died: it stages now
            if not resuming:
                conn.execute("DELETE FROM build_chunks WHERE build = ?", (build,))
            direct = bool(row[1]) if resuming else first
            started = row[2] if resuming else self.get_meta("seq", 0)
            conn.execute(
                "INSERT INTO builds(id, fingerprint, input, model_id, status, started_at, direct, "
                "started_seq) VALUES (?, ?, ?, ?, 'running', ?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
                "fingerprint = excluded.fingerprint, status = 'running', "
                "started_at = excluded.started_at, direct = excluded.direct, "
                "started_seq = excluded.started_seq",
                (build, fingerprint, source, model_id, time.time(), int(direct), started))
            if direct:
                self.set_meta(conn, incomplete_build=build)
        return direct, started

    @staticmethod
    def drop_staged(conn: sqlite3.Connection, build: str, status: str) -> None:
        """Forget what a build staged and recorded, inside the caller's transaction."""
        conn.execute("DELETE FROM staged_documents WHERE build = ?", (build,))
        conn.execute("DELETE FROM staged_passages WHERE build = ?", (build,))
        conn.execute("DELETE FROM build_chunks WHERE build = ?", (build,))
        conn.execute("UPDATE builds SET status = ? WHERE id = ?", (status, build))

    def finish_build(self, build: str, documents: int, skipped: int) -> None:
        with self.write() as conn:
            conn.execute(
                "UPDATE builds SET status = 'done', finished_at = ?, documents = ?, skipped = ? "
                "WHERE id = ?",
                (time.time(), documents, skipped, build),
            )

    def chunk_checksums(self, build: str) -> dict[int, tuple[str, int]]:
        cur = self.conn.execute(
            "SELECT number, checksum, documents FROM build_chunks WHERE build = ?", (build,)
        )
        return {n: (c, d) for n, c, d in cur}

    def record_chunk(self, build: str, number: int, checksum: str, documents: int) -> None:
        with self.write() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO build_chunks(build, number, checksum, documents) "
                "VALUES (?, ?, ?, ?)",
                (build, number, checksum, documents),
            )

