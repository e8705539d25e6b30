"""``embedsvc index check``: do the database and the FAISS files of a collection agree?

Checks what a crash, a bad copy or a hand edit could break: the shard files against the
checksums in the manifest, their vector counts and dimension, the model the index was
built with against the collection's and the one installed now, every vector id against
the passages SQLite marks as indexed and the tombstones (both ways), and that every
document has vectors or is queued to be embedded. Each problem is a sentence saying what is
wrong and what to do.
"""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np

from embedsvc.collection import CollectionPaths, read_manifest
from embedsvc.encoders import ModelError, resolve_model
from embedsvc.search.dense import REBUILD, IndexLoadError, load_deleted, load_verified_shard
from embedsvc.store import Store


def index_ids(index: faiss.Index) -> np.ndarray:
    """All vector ids held by an index (IDMap wrappers or inverted lists)."""
    if hasattr(index, "id_map"):
        return faiss.vector_to_array(index.id_map).astype(np.int64)
    ivf = faiss.extract_index_ivf(index)
    invlists = ivf.invlists
    parts = [faiss.rev_swig_ptr(invlists.get_ids(i), invlists.list_size(i)).copy()
             for i in range(ivf.nlist) if invlists.list_size(i)]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)


def check_collection(paths: CollectionPaths, store: Store, models_dir: Path) -> list[str]:
    """Problems found in the collection's current version and its live state; empty when
    all agree."""
    problems = _check_live(store)
    version = store.get_meta("current_version")
    if version is None:
        return problems  # nothing dense to disagree with
    try:
        manifest = read_manifest(paths, version)
    except Exception as exc:  # noqa: BLE001 - any unreadable manifest is the finding
        return problems + [f"version {version}: manifest unreadable ({exc}); {REBUILD}"]
    problems += _check_model(manifest, store, models_dir)
    folder = paths.version_dir(version)
    base = [_check_shard(folder / shard["file"], shard, manifest["dim"])
            for shard in manifest["shards"]]
    delta = [_check_shard(folder / manifest["delta"]["file"], manifest["delta"], manifest["dim"])] \
        if manifest.get("delta") else []
    problems += [p for found, _ in base + delta for p in found]
    try:
        deleted = load_deleted(folder, manifest.get("deleted"))
    except IndexLoadError as exc:
        problems.append(str(exc))
    if not problems:  # the live ids: the base's but its dead ones, and the delta's
        live = np.concatenate([ids for _, ids in base])
        live = live[~np.isin(live, deleted)]
        problems += _check_ids(np.concatenate([live] + [ids for _, ids in delta]), store)
    return problems


def _check_model(manifest: dict, store: Store, models_dir: Path) -> list[str]:
    problems = []
    if store.get_meta("model_id") != manifest["model_id"]:
        problems.append(f"the collection names model '{store.get_meta('model_id')}' but the index "
                        f"was built with '{manifest['model_id']}'; {REBUILD}")
    try:
        spec = resolve_model(manifest["model_id"], models_dir)
    except ModelError as exc:
        return problems + [f"the index's model cannot be found: {exc}"]
    recorded = manifest.get("weights_sha256") or "unknown"
    if spec.weights_sha256 != recorded:
        problems.append(f"model '{spec.model_id}' now has weights {spec.weights_sha256[:12]}…, the "
                        f"index was built with {recorded[:12]}…; {REBUILD}")
    return problems


def _check_shard(path: Path, meta: dict, dim: int) -> tuple[list[str], np.ndarray]:
    try:
        return [], index_ids(load_verified_shard(path, meta, dim, mmap=False))
    except IndexLoadError as exc:
        return [str(exc)], np.zeros(0, dtype=np.int64)


def _ids(store: Store, sql: str) -> np.ndarray:
    return np.fromiter((r[0] for r in store.conn.execute(sql)), np.int64)


def _check_ids(ids: np.ndarray, store: Store) -> list[str]:
    """The index holds exactly the passages marked indexed, plus its tombstones."""
    problems = []
    if len(np.unique(ids)) != len(ids):
        problems.append(f"{len(ids) - len(np.unique(ids))} vector ids appear twice; {REBUILD}")
    indexed = _ids(store, "SELECT id FROM passages WHERE indexed = 1")
    dead = _ids(store, "SELECT vid FROM tombstones")
    missing = np.setdiff1d(indexed, ids)
    orphans = np.setdiff1d(ids, np.union1d(indexed, dead))
    if len(missing):
        problems.append(f"{len(missing)} passages marked indexed have no vector in the index (e.g. "
                        f"id {missing[0]}); {REBUILD}")
    if len(orphans):
        problems.append(f"{len(orphans)} vectors in the index have no passage and no tombstone "
                        f"(e.g. id {orphans[0]}); search would return documents wrongly; {REBUILD}")
    return problems


def _check_live(store: Store) -> list[str]:
    """Every document with text has vectors (indexed or fresh) or is queued to be embedded."""
    build = store.get_meta("incomplete_build")
    if build is not None:
        return [f"build {build} wrote documents but did not finish: their vectors are not "
                f"searchable; rerun the same `embedsvc index build` to finish it"]
    if store.get_meta("model_id") is None:
        return []  # lexical only
    unembedded = store.conn.execute(
        "SELECT count(*) FROM passages WHERE indexed = 0 AND vector IS NULL").fetchone()[0]
    lost = store.conn.execute(
        "SELECT count(*) FROM documents d WHERE (coalesce(d.title, '') <> '' OR "
        "coalesce(d.text, '') <> '') AND NOT EXISTS (SELECT 1 FROM passages p WHERE p.doc = "
        "d.rowid) AND NOT EXISTS (SELECT 1 FROM pending q WHERE q.doc = d.rowid)").fetchone()[0]
    problems = []
    if unembedded:
        problems.append(f"{unembedded} passages are neither in the index nor in the fresh segment; "
                        f"{REBUILD}")
    if lost:
        problems.append(f"{lost} documents have no vectors and none is queued to be embedded; "
                        f"{REBUILD}")
    return problems
