"""Where a stream consumer records its progress: a small table in the collection's SQLite.

The consumer runs in its own process and the server's ``/metrics`` reports it; the
collection's database is what both already share (no port, no file of its own), and a
collection deleted takes its figures with it. One row per (stream, group, consumer):
counters only grow (they survive restarts), lag and pending are the group's as of
``updated_at``, so a stale time says no consumer is running.

Counts are at least once, like the delivery: an entry delivered again after a crash is
counted again, and what a consumer killed with SIGKILL had not yet recorded (at most
``PROGRESS_SECONDS`` of work, see :mod:`embedsvc.ingest.redis_stream`) is not counted.
The documents themselves are exact; these are figures to watch, not to reconcile.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from embedsvc.store import Store

TABLE = "ingest_progress"
_CREATE = f"""CREATE TABLE IF NOT EXISTS {TABLE} (
    stream TEXT NOT NULL, grp TEXT NOT NULL, consumer TEXT NOT NULL, source TEXT NOT NULL,
    ingested INTEGER NOT NULL DEFAULT 0, dead_lettered INTEGER NOT NULL DEFAULT 0,
    lag INTEGER, pending INTEGER, last_id TEXT, updated_at REAL NOT NULL,
    PRIMARY KEY (stream, grp, consumer))"""


@dataclass(frozen=True)
class StreamProgress:
    """One stream's figures in one collection, summed over the group's consumers."""

    stream: str
    group: str
    ingested: int  # entries written into the collection
    dead_lettered: int  # malformed entries moved to the dead-letter stream
    lag: int | None  # entries the group has not read yet (None: Redis could not tell)
    pending: int | None  # read by a consumer, not acknowledged yet
    updated_at: float


@dataclass(frozen=True)
class Delta:
    """What one consumer adds to its row."""

    ingested: int
    dead_lettered: int
    lag: int | None
    pending: int | None
    last_id: str | None


def ensure_table(store: Store) -> None:
    """Create the table if this collection never had a consumer (no schema version: it is
    only ever read by :func:`read_progress`, which copes with its absence)."""
    with store.write() as conn:
        conn.execute(_CREATE)


def record(store: Store, stream: str, group: str, consumer: str, source: str, delta: Delta) -> None:
    """Add a consumer's new counts and set the group's lag, in one short transaction."""
    with store.write() as conn:
        conn.execute(
            f"INSERT INTO {TABLE}(stream, grp, consumer, source, ingested, dead_lettered, lag, "
            "pending, last_id, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(stream, grp, consumer) DO UPDATE SET source = excluded.source, "
            "ingested = ingested + excluded.ingested, "
            "dead_lettered = dead_lettered + excluded.dead_lettered, lag = excluded.lag, "
            "pending = excluded.pending, last_id = coalesce(excluded.last_id, last_id), "
            "updated_at = excluded.updated_at",
            (stream, group, consumer, source, delta.ingested, delta.dead_lettered, delta.lag,
             delta.pending, delta.last_id, time.time()))


def read_progress(store: Store) -> list[StreamProgress]:
    """Every stream ingested into the collection, its consumers summed; lag and pending from
    the latest report (they describe the whole group). Empty if none ever was."""
    conn = store.conn
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                    (TABLE,)).fetchone() is None:
        return []
    rows = conn.execute(f"SELECT stream, grp, ingested, dead_lettered, lag, pending, updated_at "
                        f"FROM {TABLE} ORDER BY updated_at").fetchall()
    merged: dict[tuple[str, str], StreamProgress] = {}
    for stream, group, ingested, dead, lag, pending, updated_at in rows:
        before = merged.get((stream, group))
        merged[(stream, group)] = StreamProgress(
            stream, group, ingested + (before.ingested if before else 0),
            dead + (before.dead_lettered if before else 0), lag, pending, updated_at)
    return list(merged.values())
