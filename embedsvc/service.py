"""The serving side's state: the collections under the home folder and the models they need.

One :class:`Service` per server process. Searchers are created on first use and kept;
each one picks up new index versions and writes by itself, so builds and other processes'
writes never need a restart. A collection deleted or recreated by another process is
noticed by the identity of its database file.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from embedsvc.collection import (
    CollectionNotFound,
    create_collection,
    delete_collection,
    list_collections,
    open_store,
    read_manifest,
)
from embedsvc.files import file_identity
from embedsvc.live import jobs
from embedsvc.live.lease import current as current_lease
from embedsvc.live.worker import LiveWorker
from embedsvc.live.writes import DocumentIn, WriteResult, delete_documents, upsert_documents
from embedsvc.model_pool import ModelPool
from embedsvc.search.filters import CompiledFilter
from embedsvc.search.searcher import Fusion, Searcher
from embedsvc.settings import Settings
from embedsvc.store import DB_NAME, Store

log = logging.getLogger(__name__)


def fusion_of(settings: Settings) -> Fusion:
    return Fusion(settings.rrf_k, settings.dense_weight, settings.lexical_weight)


def local_searcher(settings: Settings, collection: str,
                   pinned_version: int | None = None) -> Searcher:
    """A searcher for batch work (CLI, evaluation, pipeline stages) whose model lookup
    blocks until the model is loaded: such callers want dense results, not a fallback."""
    from embedsvc.encoders import load_encoder

    paths, store = open_store(settings.collections_dir, collection)
    return Searcher(paths, store, lambda name: load_encoder(
        name, settings.models_dir, settings.device, settings.encode_batch_size),
        pinned_version=pinned_version, fusion=fusion_of(settings))


class Service:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.models = ModelPool(settings)
        self._searchers: dict[str, tuple[tuple[int, int], Searcher]] = {}
        self._lock = threading.Lock()
        self._broken: set[str] = set()
        self.worker = LiveWorker(settings, self.stores, self.models.get)

    # --- collections ------------------------------------------------------------------------
    def collections(self) -> list[str]:
        return list_collections(self.settings.collections_dir)

    def searcher(self, name: str) -> Searcher:
        """The searcher of an existing collection (CollectionNotFound otherwise)."""
        identity = file_identity(self.settings.collections_dir / name / DB_NAME)
        cached = self._searchers.get(name)
        if cached is not None and cached[0] == identity:
            return cached[1]
        with self._lock:
            cached = self._searchers.get(name)
            if cached is not None and cached[0] == identity:
                return cached[1]
            self._searchers.pop(name, None)
            paths, store = open_store(self.settings.collections_dir, name)
            searcher = Searcher(paths, store, self.models.get, fusion=fusion_of(self.settings))
            self._searchers[name] = (identity, searcher)
            return searcher

    def store(self, name: str) -> Store:
        return self.searcher(name).store

    def stores(self) -> dict[str, Store]:
        """Every collection's store (for the background worker)."""
        out = {}
        for name in self.collections():
            try:
                out[name] = self.store(name)
            except CollectionNotFound:
                continue  # deleted since it was listed
            except Exception:  # noqa: BLE001 - one broken collection must not stop the others
                if name not in self._broken:  # said once, not at every poll
                    self._broken.add(name)
                    log.exception("%s: cannot be opened; its background work is skipped", name)
        return out

    def create(self, name: str, model: str | None, indexed_fields: Sequence[str],
               load_model: bool = True) -> dict[str, Any]:
        """A new empty collection; ``model`` is checked and resolved before anything is made.

        ``load_model`` starts loading the model at once (a server: documents are on their way).
        """
        from embedsvc.encoders import resolve_model

        spec = resolve_model(model or self.settings.default_model, self.settings.models_dir)
        create_collection(self.settings.collections_dir, name, spec.model_id, indexed_fields,
                          spec.weights_sha256)
        if load_model:
            self.models.get(spec.model_id)
        return self.describe(name)

    def delete(self, name: str) -> None:
        delete_collection(self.settings.collections_dir, name)
        with self._lock:
            self._searchers.pop(name, None)

    # --- documents --------------------------------------------------------------------------
    def upsert(self, name: str, documents: Sequence[DocumentIn]) -> WriteResult:
        store = self.store(name)
        result = upsert_documents(store, documents, embed=store.get_meta("model_id") is not None)
        self.worker.wake()
        return result

    def delete_documents(self, name: str, ids: Sequence[str] | None,
                         where: CompiledFilter | None) -> WriteResult:
        return delete_documents(self.store(name), ids, where)

    # --- jobs -------------------------------------------------------------------------------
    def compact(self, name: str) -> jobs.Job:
        return jobs.submit(self.store(name), name, "compact")

    def job(self, job_id: str) -> jobs.Job | None:
        for name, store in self.stores().items():
            found = jobs.get(store, name, job_id)
            if found is not None:
                return found
        return None

    def jobs(self, limit: int = 50) -> list[jobs.Job]:
        found = [job for name, store in self.stores().items()
                 for job in jobs.recent(store, name, limit)]
        return sorted(found, key=lambda j: j.created_at or 0, reverse=True)[:limit]

    # --- start-up and state -----------------------------------------------------------------
    def start(self) -> None:
        """Background work: leases, embedding, jobs; and, if set, preloading."""
        if self.settings.preload_models:
            self.preload()
        self.worker.start()

    def stop(self) -> None:
        self.worker.stop()

    def preload(self) -> None:
        """Start loading every model a collection uses, and its index, in the background:
        the server answers at once (a query that needs an index still loading waits for
        it), and checksumming large indexes never delays the start."""
        searchers = []
        for name in self.collections():
            searcher = self.searcher(name)
            model_id = searcher.store.get_meta("model_id")
            if model_id:
                self.models.get(model_id)
                searchers.append(searcher)
        threading.Thread(target=_load_indexes, args=(searchers,), name="preload-indexes",
                         daemon=True).start()

    def describe(self, name: str) -> dict[str, Any]:
        """What a collection holds and serves, including what is not indexed yet."""
        searcher = self.searcher(name)
        store = searcher.store
        with store.read() as conn:
            count = lambda sql: conn.execute(sql).fetchone()[0]  # noqa: E731
            info: dict[str, Any] = {
                "name": name,
                "model": store.get_meta("model_id"),
                "documents": count("SELECT count(*) FROM documents"),
                "fresh_vectors": count("SELECT count(*) FROM passages WHERE indexed = 0 "
                                       "AND vector IS NOT NULL"),
                "deleted_vectors": count("SELECT count(*) FROM tombstones"),
                "pending": count("SELECT count(*) FROM pending"),
                "index_version": store.get_meta("current_version"),
                "indexed_fields": store.get_meta("indexed_fields") or [],
                "complete": store.get_meta("incomplete_build") is None,
                "last_compaction": store.get_meta("compacted_at"),
            }
        lease = current_lease(store)
        info["leader"] = lease.holder if lease and lease.expires_at > time.time() else None
        info["index"] = self._index_info(searcher, info["index_version"])
        info["layout"] = info["index"]["layout"] if info["index"] else None
        # live vectors of the served version: its count less what was deleted since
        info["indexed_vectors"] = info["index"]["count"] - info["deleted_vectors"] \
            if info["index"] else 0
        model = info["model"]
        info["model_state"] = (self.models.status().get(model, {}).get("state") or "not_loaded"
                               if model else None)
        return info

    @staticmethod
    def _index_info(searcher: Searcher, version: int | None) -> dict[str, Any] | None:
        if version is None:
            return None
        manifest = read_manifest(searcher.paths, version)
        info = {key: manifest.get(key) for key in (
            "version", "layout", "dim", "count", "metric", "recall_at_10", "index_bytes",
            "created_at", "weights_sha256", "search_params", "compacted_from")}
        info["shards"] = len(manifest.get("shards", []))
        return info

    def readiness(self) -> dict[str, str]:
        """Models the collections need and their state; ready when none is still loading."""
        wanted = {}
        for name in self.collections():
            model_id = self.store(name).get_meta("model_id")
            if model_id:
                wanted[model_id] = self.models.status().get(model_id, {}).get("state", "not_loaded")
        return wanted


def _load_indexes(searchers: list[Searcher]) -> None:
    for searcher in searchers:
        try:
            searcher.current_index()
        except Exception:  # noqa: BLE001 - a query will meet the same error and report it
            log.exception("%s: preloading the index failed", searcher.paths.name)
        finally:
            searcher.store.close()  # this thread's connection

