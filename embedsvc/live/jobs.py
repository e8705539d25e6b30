"""Background jobs of a collection (compactions), kept in its database.

A job is queued by whoever asks (any server process, the CLI) and run by the holder of
the writer lease. Its row says where it stands (``queued``, ``running``, ``done``,
``failed``), its phase and progress, and its error or result, so any process can answer
``GET /v1/jobs/{id}``. A job left ``running`` by a leader that died is queued again by the
next leader and runs from the start: a compaction writes nothing the served state depends
on until its final switch, so starting over is always safe.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

# The client's job is the server's too: one definition for both sides.
from embedsvc.responses import Job
from embedsvc.store import Store

QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"
_COLUMNS = ("id, kind, state, phase, progress, error, result, attempts, created_at, "
            "started_at, finished_at")


def _job(collection: str, row: tuple[Any, ...]) -> Job:
    values = dict(zip([c.strip() for c in _COLUMNS.split(",")], row, strict=True))
    values["result"] = json.loads(values["result"] or "{}")
    return Job(collection=collection, **values)


def submit(store: Store, collection: str, kind: str) -> Job:
    """Queue a job, or return the one of this kind already queued or running."""
    with store.write() as conn:
        row = conn.execute(f"SELECT {_COLUMNS} FROM jobs WHERE kind = ? AND state IN (?, ?) "
                           "ORDER BY created_at LIMIT 1", (kind, QUEUED, RUNNING)).fetchone()
        if row is not None:
            return _job(collection, row)
        job_id = uuid.uuid4().hex[:16]
        conn.execute("INSERT INTO jobs(id, kind, state, created_at) VALUES (?, ?, ?, ?)",
                     (job_id, kind, QUEUED, time.time()))
    return get(store, collection, job_id)  # type: ignore[return-value]


def get(store: Store, collection: str, job_id: str) -> Job | None:
    row = store.conn.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return _job(collection, row) if row else None


def recent(store: Store, collection: str, limit: int = 50) -> list[Job]:
    rows = store.conn.execute(f"SELECT {_COLUMNS} FROM jobs ORDER BY created_at DESC LIMIT ?",
                              (limit,))
    return [_job(collection, row) for row in rows]


def claim(store: Store, collection: str, holder: str) -> Job | None:
    """The oldest queued job, now running under ``holder``; jobs a dead leader left running
    are queued again first."""
    with store.write() as conn:
        conn.execute("UPDATE jobs SET state = ?, phase = 'resumed after its leader stopped' "
                     "WHERE state = ? AND holder IS NOT ?", (QUEUED, RUNNING, holder))
        row = conn.execute("SELECT id FROM jobs WHERE state = ? ORDER BY created_at LIMIT 1",
                           (QUEUED,)).fetchone()
        if row is None:
            return None
        conn.execute("UPDATE jobs SET state = ?, holder = ?, attempts = attempts + 1, "
                     "started_at = ?, progress = 0 WHERE id = ?",
                     (RUNNING, holder, time.time(), row[0]))
    return get(store, collection, row[0])


def report(store: Store, job_id: str, phase: str, progress: float) -> None:
    with store.write() as conn:
        conn.execute("UPDATE jobs SET phase = ?, progress = ? WHERE id = ?",
                     (phase, round(progress, 4), job_id))


def finish(store: Store, job_id: str, result: dict[str, Any]) -> None:
    _end(store, job_id, DONE, None, result)


def fail(store: Store, job_id: str, error: str) -> None:
    _end(store, job_id, FAILED, error, {})


def _end(store: Store, job_id: str, state: str, error: str | None, result: dict[str, Any]) -> None:
    with store.write() as conn:
        conn.execute("UPDATE jobs SET state = ?, error = ?, result = ?, finished_at = ?, "
                     "progress = CASE WHEN ? = 'done' THEN 1 ELSE progress END, "
                     "phase = CASE WHEN ? = 'done' THEN 'done' ELSE phase END WHERE id = ?",
                     (state, error, json.dumps(result), time.time(), state, state, job_id))


def forget_old(conn: Any, keep: int) -> None:
    """Drop finished jobs beyond the ``keep`` most recent ones (in the caller's transaction)."""
    conn.execute("DELETE FROM jobs WHERE state IN (?, ?) AND id NOT IN (SELECT id FROM jobs "
                 "ORDER BY created_at DESC LIMIT ?)", (DONE, FAILED, keep))
