"""The tables of a collection's SQLite database, and the migrations between their versions.

What lives where (schema 4):

- ``documents``: one row per live document; ``build`` names the build that wrote it (NULL
  for a document written through the API, which a build never removes); ``text_sha`` keys
  "text unchanged: embed nothing". The FTS5 table mirrors the documents that have text.
- ``passages``: the passages of every embedded document. ``indexed = 1``: its vector is in
  the served index version; ``indexed = 0`` with a ``vector``: the fresh segment, searched
  exactly until a compaction folds it in. Vectors the server embeds keep their ``vector``
  (full precision) after folding, so a rebuild never needs to embed them again.
- ``tombstones``: vector ids of the served version whose passage is gone (the document was
  deleted or its text changed); search skips them until the next compaction drops them.
  A trigger writes them, so no code path can forget one.
- ``pending``: documents written while no vector could be made yet (model loading).
- ``changes``: the numbered log of writes (``seq`` from the ``seq`` meta key, one number per
  transaction): searchers refresh from it, and a replica's change feed falls out of it.
- ``staged_documents`` / ``staged_passages``: what a rebuild read and embedded, applied to
  the served tables only when its version is switched in, so a failed build changes nothing.
- ``jobs`` and ``lease``: background work (compactions) and the writer lease of the one
  process allowed to run it.
"""

from __future__ import annotations

import fcntl
import json
import sqlite3
from pathlib import Path

import sqlite_utils

DB_NAME = "collection.db"
SCHEMA_VERSION = 4


def configure(conn: sqlite3.Connection, durable: bool = True) -> None:
    """WAL (readers never wait for the writer), a busy timeout, and fsync on every commit.

    ``synchronous=FULL`` (``durable``): a write acknowledged to a client survives a crash of
    the process (which WAL alone guarantees) and also a power cut or kernel panic. It costs
    one fsync of the WAL per transaction, milliseconds, which batches amortise. A build's
    own connection uses ``NORMAL`` (no fsync per chunk): what it writes before its switch is
    either resumed or discarded after a crash, and a power cut can only undo a switch whole.
    """
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA busy_timeout=30000")
    conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")


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
    "documents_au": f"""AFTER UPDATE OF title, text ON documents BEGIN
      INSERT INTO documents_fts(documents_fts, rowid, title, text)
        SELECT 'delete', old.rowid, old.title, old.text WHERE {_has_text("old")};
      INSERT INTO documents_fts(rowid, title, text)
        SELECT new.rowid, new.title, new.text WHERE {_has_text("new")};
    END""",
}

# A vector of the served version loses its passage: remember it until the next compaction.
# The tombstone carries the number of the write that made it (searchers refresh by number).
_PASSAGE_TRIGGERS = {
    "passages_tombstone": """AFTER DELETE ON passages WHEN old.indexed = 1 BEGIN
      INSERT OR REPLACE INTO tombstones(vid, seq)
        VALUES (old.id, (SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'seq'));
    END""",
}


def _install_triggers(conn: sqlite3.Connection, resync_fts: bool) -> None:
    """(Re)install the triggers in one IMMEDIATE transaction: no write from another process
    ever sees them missing. ``resync_fts`` re-derives the FTS rows from the documents."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        for name, body in {**_FTS_TRIGGERS, **_PASSAGE_TRIGGERS}.items():
            conn.execute(f"DROP TRIGGER IF EXISTS {name}")
            conn.execute(f"CREATE TRIGGER {name} {body}")
        if resync_fts:  # schema 2 indexed empty documents too; rebuild from the text ones only
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
        if schema_version(path) < SCHEMA_VERSION:
            _create_schema(path)


def _add_columns(db: sqlite_utils.Database, table: str, columns: dict[str, str]) -> None:
    have = set(db[table].columns_dict)
    for name, decl in columns.items():
        if name not in have:
            db.conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {decl}")


def _create_schema(path: Path) -> None:
    db = sqlite_utils.Database(path)
    configure(db.conn)
    existed = "documents" in db.table_names()
    old = schema_version(path)
    if not existed:
        db["documents"].create(
            {"rowid": int, "id": str, "title": str, "text": str, "metadata": str,
             "build": str, "line": int, "text_sha": str},
            pk="rowid", not_null={"id"},
        )
        db["documents"].create_index(["id"], unique=True)
        db["documents"].enable_fts(
            ["title", "text"], fts_version="FTS5", tokenize="porter", create_triggers=False
        )
    _add_columns(db, "documents", {"text_sha": "TEXT"})
    # schema 2 indexed the build column: 15% of every insert, and no query gains from it
    db.conn.execute("DROP INDEX IF EXISTS idx_documents_build")
    db.conn.executescript("""
        CREATE TABLE IF NOT EXISTS passages (
            id INTEGER PRIMARY KEY, doc INTEGER, ord INTEGER, start INTEGER, "end" INTEGER,
            indexed INTEGER NOT NULL DEFAULT 0, seq INTEGER NOT NULL DEFAULT 0, vector BLOB);
        CREATE INDEX IF NOT EXISTS idx_passages_doc ON passages(doc);
        CREATE TABLE IF NOT EXISTS tombstones (vid INTEGER PRIMARY KEY, seq INTEGER NOT NULL);
        CREATE INDEX IF NOT EXISTS idx_tombstones_seq ON tombstones(seq);
        CREATE TABLE IF NOT EXISTS pending (doc INTEGER PRIMARY KEY, seq INTEGER NOT NULL);
        CREATE INDEX IF NOT EXISTS idx_pending_seq ON pending(seq, doc);
        CREATE TABLE IF NOT EXISTS changes (
            seq INTEGER NOT NULL, doc INTEGER NOT NULL, id TEXT NOT NULL, op TEXT NOT NULL);
        CREATE INDEX IF NOT EXISTS idx_changes_seq ON changes(seq);
        CREATE INDEX IF NOT EXISTS idx_changes_id ON changes(id);
        CREATE TABLE IF NOT EXISTS staged_documents (
            build TEXT NOT NULL, rowid_ INTEGER NOT NULL, id TEXT NOT NULL, title TEXT,
            text TEXT, metadata TEXT, line INTEGER, text_sha TEXT, seen_seq INTEGER NOT NULL,
            PRIMARY KEY (build, id));
        CREATE TABLE IF NOT EXISTS staged_passages (
            build TEXT NOT NULL, id INTEGER NOT NULL, doc INTEGER, ord INTEGER, start INTEGER,
            "end" INTEGER, PRIMARY KEY (build, id));
        CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
        CREATE TABLE IF NOT EXISTS builds (
            id TEXT PRIMARY KEY, fingerprint TEXT, input TEXT, model_id TEXT, status TEXT,
            started_at FLOAT, finished_at FLOAT, documents INTEGER, skipped INTEGER);
        CREATE TABLE IF NOT EXISTS build_chunks (
            build TEXT, number INTEGER, checksum TEXT, documents INTEGER,
            PRIMARY KEY (build, number));
        CREATE TABLE IF NOT EXISTS jobs (
            id TEXT PRIMARY KEY, kind TEXT NOT NULL, state TEXT NOT NULL, phase TEXT,
            progress REAL NOT NULL DEFAULT 0, error TEXT, result TEXT, holder TEXT,
            attempts INTEGER NOT NULL DEFAULT 0, created_at REAL, started_at REAL,
            finished_at REAL);
        CREATE TABLE IF NOT EXISTS lease (
            name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires_at REAL NOT NULL,
            acquired_at REAL NOT NULL);
    """)
    _add_columns(db, "passages", {"indexed": "INTEGER NOT NULL DEFAULT 0",
                                  "seq": "INTEGER NOT NULL DEFAULT 0", "vector": "BLOB"})
    # the fresh segment: passages with a vector that no served version holds yet
    db.conn.execute("CREATE INDEX IF NOT EXISTS idx_passages_fresh ON passages(seq) "
                    "WHERE indexed = 0")
    _add_columns(db, "builds", {"direct": "INTEGER NOT NULL DEFAULT 1",
                                "started_seq": "INTEGER NOT NULL DEFAULT 0"})
    db.conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('seq', '0')")
    if existed and old < 4:  # before schema 4, every passage was in the served version
        db.conn.execute("UPDATE passages SET indexed = 1 WHERE EXISTS (SELECT 1 FROM meta "
                        "WHERE key = 'current_version' AND value <> 'null')")
    db.conn.commit()
    _install_triggers(db.conn, resync_fts=existed and old < 3)
    db["meta"].upsert({"key": "schema_version", "value": json.dumps(SCHEMA_VERSION)}, pk="key")
    db.conn.close()
