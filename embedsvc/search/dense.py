"""Dense search over one immutable index version (one or more FAISS shards).

An index version never changes once written, so a loaded :class:`DenseIndex` is a
snapshot readers can share without a lock; a new version is loaded beside it and
swapped in by reference.
"""

from __future__ import annotations

import logging
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from embedsvc.files import read_json, sha256_file

log = logging.getLogger(__name__)


class IndexLoadError(Exception):
    """An index version on disk is unusable (missing, truncated, inconsistent)."""


REBUILD = "rebuild with `embedsvc index build`"


def read_shard(path: Path, mmap: bool = True) -> faiss.Index:
    """Read one shard; flat codes are memory-mapped so server processes share one copy.

    Only flat codes (``IO_FLAG_MMAP_IFC``): mapping IVF lists turns them into on-disk
    inverted lists, which measured at half the search speed; those are read into memory.
    """
    if not path.is_file():
        raise IndexLoadError(f"{path} is missing; {REBUILD}")
    try:
        if mmap and hasattr(faiss, "IO_FLAG_MMAP_IFC"):
            try:
                return faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY)
            except RuntimeError:
                pass  # layouts FAISS cannot map are read into memory
        return faiss.read_index(str(path))
    except RuntimeError as exc:
        raise IndexLoadError(f"{path} cannot be read by FAISS ({exc}); {REBUILD}") from exc


def load_verified_shard(path: Path, meta: dict[str, Any], dim: int, mmap: bool = True) -> faiss.Index:
    """One shard, checked against its manifest entry: checksum first, then count and dim.

    Nothing is mapped before the checksum matches: a truncated memory-mapped file would
    crash the process on first touch.
    """
    if path.is_file() and meta.get("sha256") and sha256_file(path) != meta["sha256"]:
        raise IndexLoadError(f"{path} does not match its checksum (truncated or altered); {REBUILD}")
    shard = read_shard(path, mmap)
    if shard.ntotal != meta["count"] or shard.d != dim:
        raise IndexLoadError(f"{path} holds {shard.ntotal} vectors of dim {shard.d}, the manifest "
                             f"says {meta['count']} of dim {dim}; {REBUILD}")
    return shard


def search_shards(
    indexes: list[faiss.Index],
    queries: np.ndarray,
    k: int,
    *,
    pool: Executor | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Search every shard in parallel and merge the top ``k`` as one index would.

    Ties are broken by id, so the result does not depend on shard order; missing results
    (fewer than ``k`` vectors reachable) are id -1 with score -inf, at the end.

    Args:
        indexes: the shards, all of one layout with search parameters already set.
        queries: (nq, dim) float32 queries.
        k: results per query.
        pool: executor to run the shard searches on; a temporary one when None.

    Returns:
        (scores (nq, k) float32, ids (nq, k) int64), best first.
    """
    if not indexes:
        raise ValueError("search_shards needs at least one index")
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if len(indexes) == 1:
        results = [indexes[0].search(queries, k)]
    elif pool is not None:
        results = list(pool.map(lambda ix: ix.search(queries, k), indexes))
    else:
        with ThreadPoolExecutor(max_workers=len(indexes)) as own:
            results = list(own.map(lambda ix: ix.search(queries, k), indexes))
    scores = np.concatenate([r[0] for r in results], axis=1)  # (nq, shards * k)
    ids = np.concatenate([r[1] for r in results], axis=1)
    scores = np.where(ids < 0, -np.inf, scores).astype(np.float32)
    order = np.lexsort((ids, -scores), axis=1)[:, :k]
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)



class DenseIndex:
    """A loaded index version: its manifest and shards."""

    def __init__(self, folder: Path, manifest: dict[str, Any], shards: list[faiss.Index]):
        self.folder = folder
        self.manifest = manifest
        self.shards = shards
        self.dim = int(manifest["dim"])
        self._pool = ThreadPoolExecutor(max_workers=len(shards)) if len(shards) > 1 else None

    @classmethod
    def load(cls, folder: Path, mmap: bool = True) -> DenseIndex:
        """Load a version, refusing any shard that does not match the manifest."""
        manifest_path = folder / "manifest.json"
        if not manifest_path.is_file():
            raise IndexLoadError(f"{manifest_path} is missing")
        manifest = read_json(manifest_path)
        shards = [load_verified_shard(folder / meta["file"], meta, int(manifest["dim"]), mmap)
                  for meta in manifest["shards"]]
        params = manifest.get("search_params") or ""
        if params:
            space = faiss.ParameterSpace()
            for shard in shards:
                space.set_index_parameters(shard, params)
        return cls(folder, manifest, shards)

    @property
    def model_id(self) -> str:
        return self.manifest["model_id"]

    @property
    def count(self) -> int:
        return int(self.manifest["count"])

    def passage_depth(self, k: int) -> int:
        """Passages to fetch for ``k`` documents: enough for the average passages per document."""
        per_doc = self.count / max(int(self.manifest.get("documents") or self.count), 1)
        return max(1, min(self.count, int(np.ceil(k * max(per_doc, 1.0) * 2))))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` (scores, ids) per query; ids are -1 where fewer than k exist."""
        return search_shards(self.shards, queries, k, pool=self._pool)
