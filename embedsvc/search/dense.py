"""Dense search over one immutable index version (one or more FAISS shards).

An index version never changes once written, so a loaded :class:`DenseIndex` is a
snapshot readers can share without a lock; a new version is loaded beside it and
swapped in by reference.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from embedsvc.files import file_identity, read_json, sha256_file

log = logging.getLogger(__name__)


class IndexLoadError(Exception):
    """An index version on disk is unusable (missing, truncated, inconsistent)."""


REBUILD = "rebuild with `embedsvc index build`"


def read_shard(path: Path, mmap: bool = True) -> faiss.Index:
    """Read one shard; its codes are memory-mapped so server processes share one copy.

    FAISS 1.15 maps flat codes and IVF lists alike (``IO_FLAG_MMAP_IFC``); at 1M vectors
    mapped IVF lists searched as fast as lists read into memory (RESULTS.md, 1M vectors
    beside raw FAISS). Layouts FAISS cannot map are read into memory.
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


ShardSearch = Callable[[int, faiss.Index, np.ndarray, int], tuple[np.ndarray, np.ndarray]]


def version_files(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The manifest entries (file, sha256) of every index file of a version."""
    return manifest.get("shards", []) + [manifest[key] for key in ("delta", "deleted")
                                         if manifest.get(key)]


def damaged_shards(folder: Path, manifest: dict[str, Any]) -> list[str]:
    """Index files of a version that are missing or no longer match their checksum."""
    problems = []
    for meta in version_files(manifest):
        path = folder / meta["file"]
        if not path.is_file():
            problems.append(f"{path} is missing")
        elif meta.get("sha256") and sha256_file(path) != meta["sha256"]:
            problems.append(f"{path} does not match its checksum")
    return problems


def search_shards(
    indexes: list[faiss.Index],
    queries: np.ndarray,
    k: int,
    *,
    pool: Executor | None = None,
    search: ShardSearch | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Search every shard in parallel and merge the top ``k`` as one index would.

    Ties are broken by id, so the result does not depend on shard order; missing results
    (fewer than ``k`` vectors reachable) are id -1 with score -inf, at the end.

    Args:
        indexes: the shards, all of one layout with search parameters already set.
        queries: (nq, dim) float32 queries.
        k: results per query.
        pool: executor to run the shard searches on; a temporary one when None.
        search: ``search(shard_number, shard, queries, k)`` when a shard is not searched
            plainly (a filter, tombstones).

    Returns:
        (scores (nq, k) float32, ids (nq, k) int64), best first.
    """
    if not indexes:
        raise ValueError("search_shards needs at least one index")
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    one = search or (lambda _, ix, q, n: ix.search(q, n))
    threads = omp_threads(len(queries))

    def shard(s: int) -> tuple[np.ndarray, np.ndarray]:
        faiss.omp_set_num_threads(threads)  # this thread's own setting (OpenMP's is per thread)
        return one(s, indexes[s], queries, k)

    if len(indexes) == 1:
        scores, ids = shard(0)
        if _merged_already(scores, ids):
            return scores, ids
        results = [(scores, ids)]
    elif pool is not None:
        results = list(pool.map(shard, range(len(indexes))))
    else:
        with ThreadPoolExecutor(max_workers=len(indexes)) as own:
            results = list(own.map(shard, range(len(indexes))))
    return merge_top(np.concatenate([r[0] for r in results], axis=1),
                     np.concatenate([r[1] for r in results], axis=1), k)


# FAISS parallelises a search over its queries: a few queries gain nothing from more threads,
# while waking the OpenMP team costs more than a small search, and its spinning threads take
# cores from the model encoding the next queries (benchmarks/RESULTS.md, query path).
_OMP_MAX = faiss.omp_get_max_threads()
_PARALLEL_QUERIES = 8


def omp_threads(queries: int) -> int:
    """OpenMP threads for a FAISS search of ``queries`` queries."""
    return 1 if queries < _PARALLEL_QUERIES else _OMP_MAX


def _merged_already(scores: np.ndarray, ids: np.ndarray) -> bool:
    """Whether one shard's result is what :func:`merge_top` would make of it: all ``k``
    found and no tied scores (FAISS orders ties its own way). The two checks cost a single
    query 2.9 µs where the sort costs 8.6 µs."""
    return bool(ids.size) and not (ids < 0).any() and not (scores[:, 1:] == scores[:, :-1]).any()


def merge_top(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The best ``k`` of several result lists side by side ((nq, n) each), ties by id."""
    scores = np.where(ids < 0, -np.inf, scores).astype(np.float32)
    order = np.lexsort((ids, -scores), axis=1)[:, :k]
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)


# A filter matching at most this many vectors is answered by exact search over exactly
# them: approximate layouts lose recall when most of what they visit is filtered out.
EXACT_SUBSET = 10_000


@dataclass(frozen=True)
class IdFilter:
    """Which vector ids a search may return: only ``include`` (a metadata filter's
    passages), or all but ``exclude`` (tombstones)."""

    ids: np.ndarray  # sorted int64
    include: bool

    @cached_property
    def selector(self) -> faiss.IDSelector:
        batch = faiss.IDSelectorBatch(self.ids)
        return batch if self.include else _Not(batch)

    def allowed(self, ids: np.ndarray) -> np.ndarray:
        member = np.isin(ids, self.ids)
        return (member if self.include else ~member) & (ids >= 0)


class _Not(faiss.IDSelectorNot):
    """IDSelectorNot that keeps the selector it negates alive (SWIG does not)."""

    def __init__(self, inner: faiss.IDSelector):
        super().__init__(inner)
        self.inner = inner


def load_deleted(folder: Path, meta: dict[str, Any] | None) -> np.ndarray:
    """The sorted ids a version's base shards still hold but that are dead in it."""
    if not meta:
        return np.empty(0, np.int64)
    path = folder / meta["file"]
    if not path.is_file() or sha256_file(path) != meta["sha256"]:
        raise IndexLoadError(f"{path} is missing or does not match its checksum; {REBUILD}")
    return np.load(path, allow_pickle=False)


class DenseIndex:
    """A loaded index version: its base shards, its delta and the ids dead in the base.

    A full build or a major compaction writes base shards only. A minor compaction keeps
    the base shards of the version it starts from (linked, not copied) and writes the rest
    beside them: a small exact ``delta`` index of the vectors added since, and the ids of
    base vectors deleted since, which searches of the base skip inside FAISS. So a
    compaction costs what changed, not what the collection holds.
    """

    def __init__(self, folder: Path, manifest: dict[str, Any], shards: list[faiss.Index],
                 delta: faiss.Index | None = None, deleted: np.ndarray | None = None):
        self.folder = folder
        self.manifest = manifest
        self.shards = shards
        self.delta = delta
        self.deleted = deleted if deleted is not None else np.empty(0, np.int64)
        self.dim = int(manifest["dim"])
        self._parts = shards + ([delta] if delta is not None else [])
        self._pool = ThreadPoolExecutor(max_workers=len(self._parts)) if len(self._parts) > 1 else None
        self._base_only: dict[int, tuple[IdFilter | None, IdFilter | None]] = {}
        self._ids: dict[int, np.ndarray] = {}

    @classmethod
    def load(cls, folder: Path, mmap: bool = True, previous: DenseIndex | None = None) -> DenseIndex:
        """Load a version, refusing any file that does not match the manifest.

        Shards that are the very files of ``previous`` (a minor compaction links them) are
        taken from it as they are: verified and loaded once, shared by both versions.
        """
        manifest_path = folder / "manifest.json"
        if not manifest_path.is_file():
            raise IndexLoadError(f"{manifest_path} is missing")
        manifest = read_json(manifest_path)
        dim = int(manifest["dim"])
        known = previous.loaded_files() if previous is not None else {}
        shards = [known.get(file_identity(folder / meta["file"]))
                  or load_verified_shard(folder / meta["file"], meta, dim, mmap)
                  for meta in manifest["shards"]]
        params = manifest.get("search_params") or ""
        if params:
            space = faiss.ParameterSpace()
            for shard in shards:
                space.set_index_parameters(shard, params)
        delta = manifest.get("delta")
        return cls(folder, manifest, shards,
                   load_verified_shard(folder / delta["file"], delta, dim, mmap) if delta else None,
                   load_deleted(folder, manifest.get("deleted")))

    def loaded_files(self) -> dict[tuple[int, int], faiss.Index]:
        """This version's base shards by the identity of their files (those still on disk)."""
        files = {file_identity(self.folder / meta["file"]): shard
                 for meta, shard in zip(self.manifest["shards"], self.shards, strict=True)}
        files.pop((0, 0), None)
        return files

    @property
    def model_id(self) -> str:
        return self.manifest["model_id"]

    @property
    def count(self) -> int:
        """Live vectors of the version."""
        return int(self.manifest["count"])

    def passages_per_document(self) -> float:
        """Average passages a document has here: how deep to search for ``k`` documents."""
        return max(1.0, self.count / max(int(self.manifest.get("documents") or self.count), 1))

    def search(self, queries: np.ndarray, k: int,
               only: IdFilter | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` (scores, ids) per query; ids are -1 where fewer than k exist.

        With ``only``, ids it rules out never come back and take no place in the top ``k``:
        the selector runs inside FAISS. A filter matching few vectors searches exactly
        those; for IVF, one matching a share ``s`` of the vectors probes ``1/s`` times the
        tuned lists, so the matches it visits, and the recall, stay what tuning measured.
        """
        base = self._for_base(only)
        if base is None and self.delta is None:
            return search_shards(self.shards, queries, k, pool=self._pool)
        filters = [base] * len(self.shards) + [only]
        return search_shards(self._parts, queries, k, pool=self._pool,
                             search=lambda n, part, q, depth: self._search_part(
                                 n, part, q, depth, filters[n]))

    def _for_base(self, only: IdFilter | None) -> IdFilter | None:
        """``only`` with the base's dead ids ruled out too (made once per filter)."""
        if not len(self.deleted):
            return only
        cached = self._base_only.get(id(only))
        if cached is not None and cached[0] is only:
            return cached[1]
        if only is None:
            base = IdFilter(self.deleted, include=False)
        elif only.include:
            base = IdFilter(np.setdiff1d(only.ids, self.deleted), include=True)
        else:
            base = IdFilter(np.union1d(only.ids, self.deleted), include=False)
        if len(self._base_only) >= 4:  # one or two filters per snapshot: keep the last ones
            self._base_only.pop(next(iter(self._base_only)))
        self._base_only[id(only)] = (only, base)
        return base

    def _search_part(self, number: int, shard: faiss.Index, queries: np.ndarray, k: int,
                     only: IdFilter | None) -> tuple[np.ndarray, np.ndarray]:
        if only is None:
            return shard.search(queries, k)
        matched = len(only.ids) if only.include else None
        top = faiss.downcast_index(shard)
        if isinstance(top, faiss.IndexIVF):
            nprobe = top.nprobe
            if matched is not None:
                nprobe = top.nlist if matched <= EXACT_SUBSET else \
                    min(top.nlist, math.ceil(nprobe * self.count / max(matched, 1)))
            return shard.search(queries, k, params=faiss.SearchParametersIVF(
                sel=only.selector, nprobe=nprobe))
        inner = faiss.downcast_index(top.index) if isinstance(top, faiss.IndexIDMap) else None
        if isinstance(inner, faiss.IndexHNSW):
            if matched is not None and matched <= EXACT_SUBSET:
                return self._exact(number, top, queries, k, only.ids)
            return shard.search(queries, k, params=faiss.SearchParametersHNSW(
                sel=only.selector, efSearch=max(inner.hnsw.efSearch, k)))
        if isinstance(inner, faiss.IndexFlat):
            return shard.search(queries, k, params=faiss.SearchParameters(sel=only.selector))
        # a layout FAISS cannot filter inside: filter its results (the caller asks deeper)
        scores, ids = shard.search(queries, k)
        return scores, np.where(only.allowed(ids), ids, -1)

    def _held(self, number: int) -> np.ndarray:
        """The ids base shard ``number`` holds (read once)."""
        held = self._ids.get(number)
        if held is None:
            shard = faiss.downcast_index(self.shards[number])
            held = self._ids[number] = np.sort(faiss.vector_to_array(shard.id_map))
        return held

    def _exact(self, number: int, shard: faiss.Index, queries: np.ndarray, k: int,
               ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact top ``k`` over the given ids of one base shard (id ``i`` lives in ``i % S``)."""
        mine = ids[ids % len(self.shards) == number]
        mine = mine[np.isin(mine, self._held(number))]  # e.g. ids only the delta holds
        if not len(mine):
            return np.full((len(queries), k), -np.inf, np.float32), np.full((len(queries), k), -1)
        scores, rows = faiss.knn(queries, shard.reconstruct_batch(mine), min(k, len(mine)),
                                 metric=faiss.METRIC_INNER_PRODUCT)
        return scores, np.where(rows >= 0, mine[np.maximum(rows, 0)], -1)
