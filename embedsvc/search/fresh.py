"""What dense search reads besides the index version: the fresh segment and the tombstones.

A :class:`LiveView` is an immutable snapshot: the served index version, the vector ids of
that version to skip (tombstones: their documents were deleted or rewritten), and the fresh
segment (vectors the server embedded since the last compaction, searched exactly). A
searcher keeps one and swaps it by reference, so searches in flight never see a half
update. :func:`refresh` catches a view up with the database by the write numbers (``seq``):
only the tombstones, fresh vectors and changed documents since the view's number are read,
so a search after a write costs a few indexed reads, not a reload.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from embedsvc.search.dense import DenseIndex
from embedsvc.store import Store, vectors_from_blobs

_FRESH = "SELECT id, doc, vector FROM passages WHERE indexed = 0 AND vector IS NOT NULL"


@dataclass(frozen=True)
class FreshSegment:
    """Vectors searched exactly: ids, their documents and the (m, dim) unit vectors."""

    vids: np.ndarray
    docs: np.ndarray
    vectors: np.ndarray

    @classmethod
    def empty(cls) -> FreshSegment:
        return cls(np.empty(0, np.int64), np.empty(0, np.int64), np.empty((0, 0), np.float32))

    @classmethod
    def from_rows(cls, rows: list[tuple[int, int, bytes]]) -> FreshSegment:
        if not rows:
            return cls.empty()
        return cls(np.fromiter((r[0] for r in rows), np.int64, len(rows)),
                   np.fromiter((r[1] for r in rows), np.int64, len(rows)),
                   vectors_from_blobs([r[2] for r in rows]))

    def __len__(self) -> int:
        return len(self.vids)

    def without_docs(self, docs: np.ndarray) -> FreshSegment:
        if not len(self) or not len(docs):
            return self
        keep = ~np.isin(self.docs, docs)
        return FreshSegment(self.vids[keep], self.docs[keep], self.vectors[keep])

    def plus(self, other: FreshSegment) -> FreshSegment:
        if not len(other):
            return self
        if not len(self):
            return other
        return FreshSegment(np.concatenate([self.vids, other.vids]),
                            np.concatenate([self.docs, other.docs]),
                            np.concatenate([self.vectors, other.vectors]))

    def search(self, queries: np.ndarray, k: int,
               allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Exact top ``k`` (scores, vector ids) per query; ``allowed`` masks the rows to consider.

        Missing results are id -1 with score -inf, as :func:`search_shards` pads.
        """
        nq = len(queries)
        rows = np.arange(len(self)) if allowed is None else np.flatnonzero(allowed)
        k = min(k, len(rows))
        if k == 0:
            return np.empty((nq, 0), np.float32), np.empty((nq, 0), np.int64)
        scores = queries @ self.vectors[rows].T  # (nq, rows)
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < len(rows) else \
            np.broadcast_to(np.arange(len(rows)), (nq, len(rows)))
        top_scores = np.take_along_axis(scores, top, axis=1)
        return top_scores.astype(np.float32), self.vids[rows][top]


@dataclass(frozen=True)
class LiveView:
    """One consistent state of a collection's dense side."""

    version: int | None
    index: DenseIndex | None
    seq: int
    tombstones: np.ndarray  # sorted vector ids of ``index`` to skip
    fresh: FreshSegment
    cache: dict[str, Any] = field(default_factory=dict, compare=False)  # selectors made once

    @property
    def live_vectors(self) -> int:
        return (self.index.count - len(self.tombstones) if self.index else 0) + len(self.fresh)


def state_numbers(conn: sqlite3.Connection) -> tuple[int | None, int, int]:
    """(served version, last write number, oldest write number the change log still holds)."""
    meta = dict(conn.execute("SELECT key, value FROM meta WHERE key IN "
                             "('current_version', 'seq', 'changes_floor')"))
    version = meta.get("current_version")
    return (None if version in (None, "null") else int(version), int(meta.get("seq", 0)),
            int(meta.get("changes_floor", 0)))


def load(store: Store, index: DenseIndex | None, version: int | None) -> LiveView | None:
    """A whole view of ``version`` read in one transaction; None if another version is
    served by now (its tombstones and fresh segment are not this index's)."""
    with store.read() as conn:
        served, seq, _ = state_numbers(conn)
        if served != version:
            return None
        tombstones = np.fromiter((r[0] for r in conn.execute("SELECT vid FROM tombstones")),
                                 np.int64)
        fresh = FreshSegment.from_rows(conn.execute(_FRESH).fetchall())
    return LiveView(version, index, seq, np.sort(tombstones), fresh)


def refresh(store: Store, view: LiveView) -> LiveView | None:
    """``view`` brought up to the last committed write, reading only what changed since.

    Returns:
        The new view (``view`` itself when nothing changed), or None when the served version
        changed or the change log no longer reaches back to ``view``: reload with :func:`load`.
    """
    # the usual answer, nothing changed: one statement, its own snapshot, no transaction
    version, seq, _ = state_numbers(store.conn)
    if seq == view.seq and version == view.version:
        return view
    with store.read() as conn:
        version, seq, floor = state_numbers(conn)
        if version != view.version or view.seq < floor:
            return None
        new_tombs = np.fromiter((r[0] for r in conn.execute(
            "SELECT vid FROM tombstones WHERE seq > ?", (view.seq,))), np.int64)
        changed = np.fromiter((r[0] for r in conn.execute(
            "SELECT DISTINCT doc FROM changes WHERE seq > ? AND op IN ('upsert', 'delete')",
            (view.seq,))), np.int64)
        added = FreshSegment.from_rows(conn.execute(_FRESH + " AND seq > ?", (view.seq,)).fetchall())
    fresh = view.fresh.without_docs(changed).without_docs(added.docs).plus(added)
    tombstones = np.union1d(view.tombstones, new_tombs) if len(new_tombs) else view.tombstones
    return LiveView(version, view.index, seq, tombstones, fresh)
