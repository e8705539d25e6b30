"""The collection's SQLite database: documents, the FTS5 table, builds and metadata.

One file per collection, in WAL mode with a busy timeout, so one writer (a build or an
API write) never blocks the readers that serve search. Each thread gets its own
connection. A document's FAISS id is its integer row id here; row ids survive
re-ingestion of the same document id (upsert, never delete-and-insert).
"""

from __future__ import annotations

import fcntl
import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from typing import Any

import sqlite_utils

DB_NAME = "collection.db"
SCHEMA_VERSION = 3
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


def _configure(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA busy_timeout=10000")
    conn.execute("PRAGMA synchronous=NORMAL")


def schema_version(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    except sqlite3.OperationalError:  # no meta table yet
        row = None
    finally:
        conn.close()
    return json.loads(row[0]) if row else 0


def _has_text(row: str) -> str:
    return f"(coalesce({row}.title, '') <> '' OR coalesce({row}.text, '') <> '')"


# The FTS5 table mirrors only documents that have text. Documents built from --vectors have
# none, and indexing their empty strings cost more than storing them (2.2s a million).
# Insert and delete must agree on the condition, or FTS5's external-content index breaks.
# FTS5's 'rebuild' and 'integrity-check' commands compare with every row of documents, so
# they must not be used on this table: rebuild would index the empty documents back.
_FTS_TRIGGERS = {
    "documents_ai": f"""AFTER INSERT ON documents WHEN {_has_text("new")} BEGIN
      INSERT INTO documents_fts(rowid, title, text) VALUES (new.rowid, new.title, new.text);
    END""",
    "documents_ad": f"""AFTER DELETE ON documents WHEN {_has_text("old")} BEGIN
      INSERT INTO documents_fts(documents_fts, rowid, title, text)
        VALUES ('delete', old.rowid, old.title, old.text);
    END""",
    "documents_au": f"""AFTER UPDATE ON documents BEGIN
      INSERT INTO documents_fts(documents_fts, rowid, title, text)
        SELECT 'delete', old.rowid, old.title, old.text WHERE {_has_text("old")};
      INSERT INTO documents_fts(rowid, title, text)
        SELECT new.rowid, new.title, new.text WHERE {_has_text("new")};
    END""",
}


def _text_only_fts(conn: sqlite3.Connection, resync: bool) -> None:
    """Install the FTS triggers; ``resync`` re-derives the FTS rows from the documents.

    One IMMEDIATE transaction: no write from another process ever sees the triggers missing.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        for name, body in _FTS_TRIGGERS.items():
            conn.execute(f"DROP TRIGGER IF EXISTS {name}")
            conn.execute(f"CREATE TRIGGER {name} {body}")
        if resync:  # schema 2 indexed empty documents too; rebuild from the text ones only
            conn.execute("INSERT INTO documents_fts(documents_fts) VALUES ('delete-all')")
            conn.execute("INSERT INTO documents_fts(rowid, title, text) SELECT rowid, title, "
                         f"text FROM documents WHERE {_has_text('documents')}")
        conn.commit()
    except BaseException:
        conn.rollback()
        raise


def create_schema(path: Path) -> None:
    """Create the tables; on an older database, add the ones it lacks and migrate the rest.

    Under a file lock beside the database: two processes opening a new or old collection at
    once (a server and a build) would otherwise race through the steps, and SQLite refuses
    the loser's writes with "database is locked" instead of waiting.
    """
    with open(path.with_name(f".{path.name}.schema-lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _create_schema(path)


def _create_schema(path: Path) -> None:
    db = sqlite_utils.Database(path)
    _configure(db.conn)
    existed = "documents" in db.table_names()
    if not existed:
        db["documents"].create(
            {"rowid": int, "id": str, "title": str, "text": str, "metadata": str,
             "build": str, "line": int},
            pk="rowid", not_null={"id"},
        )
        db["documents"].create_index(["id"], unique=True)
        db["documents"].enable_fts(
            ["title", "text"], fts_version="FTS5", tokenize="porter", create_triggers=False
        )
    if not existed or schema_version(path) < 3:
        _text_only_fts(db.conn, resync=existed)
    # schema 2 indexed the build column: 15% of every insert, and no query gains from it
    # (a build's statements touch most rows; existing_lines goes through the id index)
    db.conn.execute("DROP INDEX IF EXISTS idx_documents_build")
    db["passages"].create(
        {"id": int, "doc": int, "ord": int, "start": int, "end": int}, pk="id", if_not_exists=True,
    )
    db["passages"].create_index(["doc"], if_not_exists=True)
    db["meta"].create({"key": str, "value": str}, pk="key", if_not_exists=True)
    db["builds"].create(
        {"id": str, "fingerprint": str, "input": str, "model_id": str, "status": str,
         "started_at": float, "finished_at": float, "documents": int, "skipped": int},
        pk="id", if_not_exists=True,
    )
    db["build_chunks"].create(
        {"build": str, "number": int, "checksum": str, "documents": int},
        pk=("build", "number"), if_not_exists=True,
    )
    db["meta"].upsert({"key": "schema_version", "value": json.dumps(SCHEMA_VERSION)}, pk="key")
    db.conn.close()


class Store:
    """Access to one collection's database, one connection per thread."""

    def __init__(self, path: Path):
        self.path = path
        self._local = threading.local()

    @property
    def conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=10, check_same_thread=False)
            _configure(conn)
            self._local.conn = conn
        return conn

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # --- metadata -------------------------------------------------------------------------
    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def set_meta(self, **values: Any) -> None:
        """Set several keys in one transaction: readers see all of them or none."""
        with self.conn:
            self.conn.executemany(
                "INSERT INTO meta(key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                [(k, json.dumps(v)) for k, v in values.items()],
            )

    # --- documents ------------------------------------------------------------------------
    def count_documents(self) -> int:
        return self.conn.execute("SELECT count(*) FROM documents").fetchone()[0]

    def existing_lines(self, ids: Sequence[str], build: str) -> dict[str, int]:
        """Line numbers at which ``build`` already stored these ids (to find duplicates)."""
        found: dict[str, int] = {}
        for start in range(0, len(ids), 900):
            part = ids[start : start + 900]
            marks = ",".join("?" * len(part))
            rows = self.conn.execute(  # through the id index: one lookup per id
                f"SELECT id, line FROM documents WHERE build = ? AND id IN ({marks})",
                (build, *part),
            )
            found.update(rows.fetchall())
        return found

    def upsert_documents(self, docs: Sequence[NewDocument], build: str) -> list[int]:
        """Insert or update documents in one transaction; return their row ids in order."""
        self._upsert((d.id, d.title, d.text, json.dumps(d.metadata) if d.metadata else "{}",
                      build, d.line) for d in docs)
        return self.rowids([d.id for d in docs])

    def upsert_bare_documents(self, ids: Sequence[str], lines: Iterable[int], build: str) -> None:
        """Documents known only by id (vectors made elsewhere), in one transaction.

        Rows are zipped straight from the ids: building a million document objects first
        took longer than inserting them.
        """
        self._upsert(zip(ids, repeat(""), repeat(""), repeat("{}"), repeat(build), lines))

    def _upsert(self, rows: Iterable[tuple[Any, ...]]) -> None:
        with self.conn:
            self.conn.executemany(
                "INSERT INTO documents(id, title, text, metadata, build, line) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
                "title = excluded.title, text = excluded.text, metadata = excluded.metadata, "
                "build = excluded.build, line = excluded.line",
                rows,
            )

    def build_lines(self, build: str) -> Iterator[tuple[int, int]]:
        """(line, row id) of every document ``build`` stored."""
        return self.conn.execute("SELECT line, rowid FROM documents WHERE build = ?", (build,))

    def rowids(self, ids: Sequence[str]) -> list[int]:
        found: dict[str, int] = {}
        for start in range(0, len(ids), 900):
            part = ids[start : start + 900]
            marks = ",".join("?" * len(part))
            cur = self.conn.execute(f"SELECT id, rowid FROM documents WHERE id IN ({marks})", part)
            found.update(cur.fetchall())
        return [found[i] for i in ids]

    def delete_other_builds(self, build: str) -> int:
        """Drop documents that the finished build's input no longer holds."""
        with self.conn:
            cur = self.conn.execute("DELETE FROM documents WHERE build IS NOT ?", (build,))
            self.conn.execute("DELETE FROM passages WHERE doc NOT IN (SELECT rowid FROM documents)")
        return cur.rowcount

    def documents_by_rowid(self, rowids: Iterable[int]) -> dict[int, DocumentRow]:
        rowids = list(rowids)
        if not rowids:
            return {}
        marks = ",".join("?" * len(rowids))
        cur = self.conn.execute(
            f"SELECT rowid, id, title, text, metadata FROM documents WHERE rowid IN ({marks})",
            rowids,
        )
        return {r[0]: DocumentRow(r[0], r[1], r[2] or "", r[3] or "", json.loads(r[4] or "{}"))
                for r in cur}

    def document(self, doc_id: str) -> DocumentRow | None:
        row = self.conn.execute(
            "SELECT rowid, id, title, text, metadata FROM documents WHERE id = ?", (doc_id,)
        ).fetchone()
        return DocumentRow(row[0], row[1], row[2] or "", row[3] or "",
                           json.loads(row[4] or "{}")) if row else None

    # --- passages -------------------------------------------------------------------------
    def replace_passages(self, doc_rowids: Sequence[int],
                         spans: Sequence[Sequence[tuple[int, int]]]) -> list[int]:
        """Store each document's passage spans (replacing old ones); return the vector ids."""
        rows = [(passage_id(doc, o), doc, o, start, end)
                for doc, doc_spans in zip(doc_rowids, spans, strict=True)
                for o, (start, end) in enumerate(doc_spans)]
        with self.conn:
            self.conn.executemany("DELETE FROM passages WHERE doc = ?", [(d,) for d in doc_rowids])
            self.conn.executemany(
                "INSERT INTO passages(id, doc, ord, start, end) VALUES (?, ?, ?, ?, ?)", rows
            )
        return [r[0] for r in rows]

    def one_passage_each(self, build: str) -> None:
        """Give each document of ``build`` a single passage (ordinal 0, no span), in SQL."""
        with self.conn:
            self.conn.execute("DELETE FROM passages WHERE ord > 0 AND doc IN "
                              "(SELECT rowid FROM documents WHERE build = ?)", (build,))
            self.conn.execute(
                "INSERT OR REPLACE INTO passages(id, doc, ord, start, end) "
                f"SELECT rowid << {PASSAGE_BITS}, rowid, 0, 0, 0 FROM documents WHERE build = ?",
                (build,),
            )

    def passage_spans(self, vector_ids: Iterable[int]) -> dict[int, tuple[int, int]]:
        vector_ids = list(vector_ids)
        if not vector_ids:
            return {}
        marks = ",".join("?" * len(vector_ids))
        cur = self.conn.execute(f"SELECT id, start, end FROM passages WHERE id IN ({marks})",
                                vector_ids)
        return {i: (s, e) for i, s, e in cur}

    def count_passages(self) -> int:
        return self.conn.execute("SELECT count(*) FROM passages").fetchone()[0]

    # --- lexical search -------------------------------------------------------------------
    def bm25(self, match: str, k: int, weights: tuple[float, float]) -> list[tuple[int, float]]:
        """Top ``k`` (rowid, score) for an FTS5 MATCH expression; higher scores are better."""
        cur = self.conn.execute(
            "SELECT rowid, -bm25(documents_fts, ?, ?) AS score FROM documents_fts "
            "WHERE documents_fts MATCH ? ORDER BY score DESC, rowid LIMIT ?",
            (*weights, match, k),
        )
        return cur.fetchall()

    # --- builds ---------------------------------------------------------------------------
    def start_build(self, build: str, fingerprint: str, source: str, model_id: str | None) -> None:
        with self.conn:
            self.conn.execute(
                "INSERT INTO builds(id, fingerprint, input, model_id, status, started_at) "
                "VALUES (?, ?, ?, ?, 'running', ?) ON CONFLICT(id) DO UPDATE SET "
                "status = 'running', started_at = excluded.started_at",
                (build, fingerprint, source, model_id, time.time()),
            )

    def finish_build(self, build: str, documents: int, skipped: int) -> None:
        with self.conn:
            self.conn.execute(
                "UPDATE builds SET status = 'done', finished_at = ?, documents = ?, skipped = ? "
                "WHERE id = ?",
                (time.time(), documents, skipped, build),
            )

    def build_status(self, build: str) -> str | None:
        row = self.conn.execute("SELECT status FROM builds WHERE id = ?", (build,)).fetchone()
        return row[0] if row else None

    def chunk_checksums(self, build: str) -> dict[int, tuple[str, int]]:
        cur = self.conn.execute(
            "SELECT number, checksum, documents FROM build_chunks WHERE build = ?", (build,)
        )
        return {n: (c, d) for n, c, d in cur}

    def record_chunk(self, build: str, number: int, checksum: str, documents: int) -> None:
        with self.conn:
            self.conn.execute(
                "INSERT OR REPLACE INTO build_chunks(build, number, checksum, documents) "
                "VALUES (?, ?, ?, ?)",
                (build, number, checksum, documents),
            )

    def forget_build_chunks(self, build: str) -> None:
        with self.conn:
            self.conn.execute("DELETE FROM build_chunks WHERE build = ?", (build,))
