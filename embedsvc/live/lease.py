"""The writer lease: which process runs a collection's background work.

Every server process accepts writes (SQLite serialises them), but only one may embed the
fresh segment and build and switch index versions: the holder of the lease, a row in the
collection's database that its holder renews well within ``ttl`` seconds. When the holder
dies its row goes stale, and the first process to find it expired takes it over. Clocks
are the machine's wall clock, which every process on one machine shares.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from dataclasses import dataclass

from embedsvc.store import Store

NAME = "writer"


def process_identity() -> str:
    """A name for this process that no other process, now or later, has."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class LeaseState:
    holder: str
    expires_at: float
    acquired_at: float


def try_acquire(store: Store, holder: str, ttl: float) -> bool:
    """Take the lease if it is free, expired or already ours (renewing it); True if held."""
    now = time.time()
    with store.write() as conn:
        row = conn.execute("SELECT holder, expires_at FROM lease WHERE name = ?", (NAME,)).fetchone()
        if row is not None and row[0] != holder and row[1] > now:
            return False
        acquired = now if row is None or row[0] != holder else None
        conn.execute(
            "INSERT INTO lease(name, holder, expires_at, acquired_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(name) DO UPDATE SET holder = excluded.holder, "
            "expires_at = excluded.expires_at, "
            "acquired_at = coalesce(?, lease.acquired_at)",
            (NAME, holder, now + ttl, now, acquired))
    return True


def release(store: Store, holder: str) -> None:
    """Give the lease up at once (a clean shutdown), so another process need not wait."""
    with store.write() as conn:
        conn.execute("DELETE FROM lease WHERE name = ? AND holder = ?", (NAME, holder))


def current(store: Store) -> LeaseState | None:
    row = store.conn.execute("SELECT holder, expires_at, acquired_at FROM lease WHERE name = ?",
                             (NAME,)).fetchone()
    return LeaseState(*row) if row else None
