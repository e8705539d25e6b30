"""Compaction: fold the fresh segment and the tombstones into a new immutable version.

Nothing is embedded: the fresh vectors are read from SQLite and the served version's
vectors from its index and its store (:mod:`indexing.vectorstore`). The layout is chosen
as ``index build`` chooses it, with the options the collection was built with; while that
choice stays the served version's layout, the served index is copied and updated in place
(tombstones removed, fresh vectors added, ``nprobe`` retuned), otherwise the new layout is
trained on the store. The new version is switched in atomically.

Writes go on during a compaction. It works from a snapshot taken in one read transaction
(the write number ``seq``), and its switch, in one write transaction, settles what
happened since: fresh vectors written again after the snapshot stay fresh, and the copies
the new version holds of them become its tombstones; tombstones made after the snapshot
stay. A compaction that dies, or finds another version switched in meanwhile, leaves the
served state as it was; running it again starts over.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from embedsvc.collection import CollectionPaths, exclusive, read_manifest
from embedsvc.files import atomic_write, sha256_file, write_atomic_with
from embedsvc.live.writes import trim_changes
from embedsvc.search.dense import load_deleted, load_verified_shard
from embedsvc.search.fresh import state_numbers
from embedsvc.store import Store, vectors_from_blobs
from indexing.build import build_index, update_index, working_bytes
from indexing.errors import BuildError
from indexing.layouts import choose_layout
from indexing.vectorstore import Segment, carry_over, link, segments, unusable, write_segment
from indexing.versions import prune_versions, write_version

log = logging.getLogger(__name__)

# Layouts whose index a compaction can update in place (FAISS removes ids from them).
_UPDATABLE = ("flat", "ivf", "ivfsq", "ivfpq")
# A minor compaction leaves the base shards as they are and writes only what changed (an
# exact delta index and the dead ids), until either passes this share of the base: then
# the base is rewritten (a major compaction), so search speed and memory do not decay.
MAJOR_SHARE = 0.1
Progress = Callable[[str, float], None]


@dataclass
class Snapshot:
    """The collection as one read transaction saw it."""

    version: int | None
    manifest: dict[str, Any] | None
    seq: int
    model_id: str | None
    weights_sha256: str | None
    documents: int
    layout: dict[str, Any]
    tombstones: np.ndarray  # vector ids of ``version`` to drop
    fresh_ids: np.ndarray
    fresh_seqs: np.ndarray
    fresh_vectors: np.ndarray

    @property
    def live_count(self) -> int:
        base = int(self.manifest["count"]) - len(self.tombstones) if self.manifest else 0
        return base + len(self.fresh_ids)


def take_snapshot(paths: CollectionPaths, store: Store) -> Snapshot:
    with store.read() as conn:
        version, seq, _ = state_numbers(conn)
        tombstones = np.fromiter((r[0] for r in conn.execute("SELECT vid FROM tombstones")), np.int64)
        rows = conn.execute("SELECT id, seq, vector FROM passages WHERE indexed = 0 AND vector "
                            "IS NOT NULL ORDER BY id").fetchall()
        documents = conn.execute("SELECT count(*) FROM documents").fetchone()[0]
        model_id, layout = store.get_meta("model_id"), store.get_meta("layout") or {}
        weights = store.get_meta("weights_sha256")
    vectors = vectors_from_blobs([r[2] for r in rows])
    return Snapshot(
        version, read_manifest(paths, version) if version is not None else None, seq, model_id,
        weights, documents, layout, np.sort(tombstones), np.array([r[0] for r in rows], np.int64),
        np.array([r[1] for r in rows], np.int64), vectors)


def compact(paths: CollectionPaths, store: Store, progress: Progress | None = None) -> dict[str, Any]:
    """Fold the fresh segment and tombstones into a new version and serve it.

    Returns:
        ``status`` (``compacted`` or ``nothing_to_do``), ``version``, ``folded`` (fresh
        vectors), ``dropped`` (tombstones), ``seconds`` and the layout.

    Raises:
        CollectionBusy: a build or another compaction holds the collection.
        BuildError: the served version changed meanwhile, or it predates vector stores and
            its layout must change (rebuild it once).
    """
    report = progress or (lambda phase, done: None)
    started = time.perf_counter()
    with exclusive(paths):
        report("snapshot", 0.05)
        snap = take_snapshot(paths, store)
        if not len(snap.tombstones) and not len(snap.fresh_ids):
            return {"status": "nothing_to_do", "version": snap.version}
        number = None
        if snap.live_count:
            report("index", 0.1)
            number = write_version(paths, lambda folder: _fill(folder, paths, snap),
                                   _manifest(snap))
        report("switch", 0.9)
        try:
            fold(store, snap, number)
        except BaseException:
            if number is not None:
                shutil.rmtree(paths.version_dir(number), ignore_errors=True)
            raise
        prune_versions(paths, number, int(snap.layout.get("keep_versions") or 2))
    seconds = time.perf_counter() - started
    manifest = read_manifest(paths, number) if number is not None else {}
    log.info("%s: compacted into version %s (%d fresh vectors folded, %d tombstones dropped) "
             "in %.2fs", paths.name, number, len(snap.fresh_ids), len(snap.tombstones), seconds)
    return {"status": "compacted", "version": number, "folded": len(snap.fresh_ids),
            "dropped": len(snap.tombstones), "seconds": round(seconds, 3),
            "layout": manifest.get("layout"), "count": manifest.get("count", 0)}


def _manifest(snap: Snapshot) -> dict[str, Any]:
    parent = snap.manifest or {}
    kept = {key: parent[key] for key in ("weights_sha256", "fingerprint", "input", "long_texts",
                                         "max_seq_length", "embedsvc_version") if key in parent}
    return {"weights_sha256": snap.weights_sha256, **kept, "model_id": snap.model_id,
            "compacted_from": snap.version, "seq": snap.seq, "documents": snap.documents,
            "build_id": None}


def _fill(folder: Path, paths: CollectionPaths, snap: Snapshot) -> dict[str, Any]:
    """Write the new version's index and store into ``folder``; its manifest fields."""
    dim = int(snap.manifest["dim"]) if snap.manifest else snap.fresh_vectors.shape[1]
    parent = paths.version_dir(snap.version) if snap.version is not None else None
    parent_store = segments(parent, snap.manifest) if parent is not None else []
    store: list[Segment] | None = None
    if parent_store is not None:
        store = carry_over(parent_store, folder, snap.tombstones)
        if len(snap.fresh_ids):
            store.append(write_segment(folder, f"fresh-{snap.seq:012d}", snap.fresh_ids,
                                       snap.fresh_vectors))
    options = snap.layout
    target = options.get("target_recall") or 0.95
    choice = choose_layout(snap.live_count, dim, options.get("memory_budget"),
                           options.get("index") or "auto", target, working_bytes=working_bytes(dim))
    same_layout = snap.manifest is not None and choice.factory == snap.manifest["layout"]
    fields = None
    if same_layout:
        assert parent is not None
        changes = _Changes.of(parent, snap)
        fields = changes.minor(folder, snap)
        if fields is None and snap.manifest.get("kind") in _UPDATABLE:
            base = [faiss.read_index(str(parent / s["file"])) for s in snap.manifest["shards"]]
            add_ids, add_vectors = changes.added(snap)
            tune = store if choice.kind != "flat" and _readable(store) else None
            fields = update_index(base, snap.manifest, choice, folder, remove=changes.deleted,
                                  add_ids=add_ids, add_vectors=add_vectors, chunks=tune,
                                  target_recall=target)
    if fields is None:
        if store is None or not _readable(store):
            why = unusable(store) if store is not None else \
                f"version {snap.version} was built before versions kept their vectors"
            raise BuildError(
                f"{why}, and this compaction of '{paths.name}' must build its index anew "
                f"({snap.manifest['layout'] if snap.manifest else '-'} → {choice.factory}): "
                f"rebuild it once with `embedsvc index build {paths.name}`")
        fields = build_index(store, dim, folder, index=options.get("index") or "auto",
                             memory_budget=options.get("memory_budget"), target_recall=target,
                             shards=options.get("shards"))
    return {**fields, "store": [s.describe() for s in store] if store is not None else None}


def _readable(store: list[Segment] | None) -> bool:
    """Whether the stored vectors can be read (an input a version refers to may have changed)."""
    if store is None:
        return False
    reason = unusable(store)
    if reason:
        log.warning("%s: the index is updated without the stored vectors", reason)
    return reason is None


@dataclass
class _Changes:
    """What a compaction does to its parent's index: the base ids that die, the delta."""

    parent: Path
    delta: faiss.Index  # the parent's delta with its dead vectors removed, or a new one
    deleted: np.ndarray  # base ids dead in the new version
    base_count: int

    @classmethod
    def of(cls, parent: Path, snap: Snapshot) -> _Changes:
        manifest = snap.manifest
        assert manifest is not None
        dim = int(manifest["dim"])
        meta = manifest.get("delta")
        delta = load_verified_shard(parent / meta["file"], meta, dim, mmap=False) if meta else \
            faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        in_delta = np.isin(snap.tombstones, faiss.vector_to_array(delta.id_map))
        if in_delta.any():
            delta.remove_ids(faiss.IDSelectorBatch(snap.tombstones[in_delta]))
        deleted = np.union1d(load_deleted(parent, manifest.get("deleted")),
                             snap.tombstones[~in_delta]).astype(np.int64)
        return cls(parent, delta, deleted, sum(int(s["count"]) for s in manifest["shards"]))

    def added(self, snap: Snapshot) -> tuple[np.ndarray, np.ndarray]:
        """Every vector the base does not hold: the live delta and the fresh ones."""
        ids = faiss.vector_to_array(self.delta.id_map).astype(np.int64)
        vectors = self.delta.reconstruct_batch(ids) if len(ids) else \
            np.empty((0, self.delta.d), np.float32)
        if not len(snap.fresh_ids):
            return ids, vectors
        return np.concatenate([ids, snap.fresh_ids]), np.concatenate([vectors, snap.fresh_vectors])

    def minor(self, folder: Path, snap: Snapshot) -> dict[str, Any] | None:
        """The parent's base shards linked in, a new delta and dead-id list beside them; None
        when the delta or the dead ids would pass :data:`MAJOR_SHARE` of the base."""
        assert snap.manifest is not None
        started = time.perf_counter()
        limit = MAJOR_SHARE * self.base_count
        if len(self.deleted) > limit or self.delta.ntotal + len(snap.fresh_ids) > limit:
            return None
        if len(snap.fresh_ids):
            self.delta.add_with_ids(np.ascontiguousarray(snap.fresh_vectors, dtype=np.float32),
                                    snap.fresh_ids)
        for shard in snap.manifest["shards"]:
            link(self.parent / shard["file"], folder / shard["file"])
        delta = _write_delta(folder, self.delta)
        deleted = _write_deleted(folder, self.deleted)
        written = [d for d in (delta, deleted) if d]
        log.info("minor compaction: base %s kept, delta of %d vectors, %d base vectors dead",
                 snap.manifest["layout"], self.delta.ntotal, len(self.deleted))
        keep = ("layout", "kind", "params", "search_params", "recall_at_10", "train_size", "reason",
                "shards", "dim", "metric")
        return {**{k: snap.manifest.get(k) for k in keep}, "delta": delta, "deleted": deleted,
                "count": snap.live_count, "compaction": "minor",
                "index_bytes": snap.manifest["index_bytes"] + sum(
                    (folder / d["file"]).stat().st_size for d in written),
                "build_seconds": round(time.perf_counter() - started, 3),
                "phase_seconds": {"minor": round(time.perf_counter() - started, 3)},
                "faiss_version": faiss.__version__}


def _write_delta(folder: Path, delta: faiss.Index) -> dict[str, Any] | None:
    if not delta.ntotal:
        return None
    path = folder / "delta.faiss"
    write_atomic_with(path, lambda tmp: faiss.write_index(delta, tmp))
    return {"file": path.name, "count": int(delta.ntotal), "sha256": sha256_file(path)}


def _write_deleted(folder: Path, deleted: np.ndarray) -> dict[str, Any] | None:
    if not len(deleted):
        return None
    path = folder / "deleted.npy"
    with atomic_write(path) as fh:
        np.save(fh, np.ascontiguousarray(deleted, dtype=np.int64), allow_pickle=False)
    return {"file": path.name, "count": len(deleted), "sha256": sha256_file(path)}


def fold(store: Store, snap: Snapshot, number: int | None) -> None:
    """Switch to the compacted version and settle the writes made since the snapshot."""
    with store.write() as conn:
        served, _, _ = state_numbers(conn)
        if served != snap.version:
            raise BuildError(f"the served version changed from {snap.version} to {served} while "
                             "compacting (a build switched in); nothing was changed")
        seq = store.next_seq(conn)
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS folded (vid INTEGER PRIMARY KEY, seq INTEGER)")
        conn.execute("DELETE FROM temp.folded")
        conn.executemany("INSERT INTO temp.folded(vid, seq) VALUES (?, ?)",
                         zip(snap.fresh_ids.tolist(), snap.fresh_seqs.tolist(), strict=True))
        conn.execute("UPDATE passages SET indexed = 1 WHERE indexed = 0 AND EXISTS (SELECT 1 FROM "
                     "temp.folded f WHERE f.vid = passages.id AND f.seq = passages.seq)")
        conn.execute("DELETE FROM tombstones WHERE seq <= ?", (snap.seq,))
        # folded vectors whose passage was written again since: the new version's tombstones
        conn.execute("INSERT OR REPLACE INTO tombstones(vid, seq) SELECT f.vid, ? FROM temp.folded f "
                     "WHERE NOT EXISTS (SELECT 1 FROM passages p WHERE p.id = f.vid AND "
                     "p.seq = f.seq AND p.indexed = 1)", (seq,))
        trim_changes(store, conn, store.get_meta("compacted_seq", 0))  # one compaction's worth
        store.set_meta(conn, current_version=number, compacted_seq=snap.seq,
                       compacted_at=time.time())
        conn.execute("INSERT INTO changes(seq, doc, id, op) VALUES (?, 0, ?, 'compact')",
                     (seq, str(number)))
