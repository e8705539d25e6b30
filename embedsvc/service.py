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
from pathlib import Path
from typing import Any

from embedsvc.collection import (
    CollectionNotFound,
    create_collection,
    delete_collection,
    list_collections,
    open_store,
    read_manifest,
)
from embedsvc.drift import DriftMonitor, DriftPolicy
from embedsvc.files import file_identity
from embedsvc.live import jobs
from embedsvc.live.lease import current as current_lease
from embedsvc.live.worker import LiveWorker
from embedsvc.live.writes import DocumentIn, WriteResult, delete_documents, upsert_documents
from embedsvc.metrics import record_index_damage
from embedsvc.model_pool import ModelPool
from embedsvc.search.filters import CompiledFilter
from embedsvc.search.query_encoding import QueryEncoder
from embedsvc.search.searcher import Fusion, Searcher
from embedsvc.settings import Settings
from embedsvc.store import DB_NAME, Store
from embedsvc.vectors_in import VectorMismatch, unit_vector

log = logging.getLogger(__name__)


def drift_policy(settings: Settings) -> DriftPolicy:
    return DriftPolicy(settings.drift_window, settings.drift_low_score, settings.drift_alert_share,
                       settings.drift_min_queries)


def fusion_of(settings: Settings) -> Fusion:
    return Fusion(settings.rrf_k, settings.dense_weight, settings.lexical_weight)


def local_searcher(settings: Settings, collection: str,
                   pinned_version: int | None = None) -> Searcher:
    """A searcher for batch work (CLI, evaluation, pipeline stages) whose model lookup
    blocks until the model is loaded: such callers want dense results, not a fallback."""
    from embedsvc.encoders import load_settings_encoder

    paths, store = open_store(settings.collections_dir, collection)
    return Searcher(paths, store, lambda name: load_settings_encoder(name, settings),
        pinned_version=pinned_version, fusion=fusion_of(settings),
        queries=QueryEncoder.from_settings(settings))


def collection_dimension(searcher: Searcher, models_dir: Path) -> int | None:
    """The size of a collection's vectors: as created, as its index holds, or as its model
    makes them (None: a collection without vectors, built lexical only)."""
    from embedsvc.encoders import embedding_dimension, resolve_model

    store = searcher.store
    dim = store.get_meta("dimension")
    if dim is None:
        view = searcher.view()
        if view.index is not None:
            dim = view.index.dim
        elif len(view.fresh):
            dim = int(view.fresh.vectors.shape[1])
        elif store.get_meta("model_id"):
            spec = resolve_model(store.get_meta("model_id"), models_dir)
            dim = embedding_dimension(spec, models_dir)
    return int(dim) if dim is not None else None


def unit_vectors_of(searcher: Searcher, models_dir: Path, vectors: Sequence[Sequence[float]],
                    what: Sequence[str]) -> list[Any]:
    """Vectors made elsewhere checked against the collection's dimension, made unit length."""
    dim = collection_dimension(searcher, models_dir)
    if dim is None:
        raise VectorMismatch(f"collection '{searcher.paths.name}' holds no vectors (it was built "
                             "lexical only); it cannot store or search by vectors")
    return [unit_vector(v, dim, label) for v, label in zip(vectors, what, strict=True)]


class Service:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.models = ModelPool(settings)
        # One for every collection: queries of collections sharing a model share encoder calls.
        self.queries = QueryEncoder.from_settings(settings)
        self._searchers: dict[str, tuple[tuple[int, int], Searcher]] = {}
        self._lock = threading.Lock()
        self._broken: set[str] = set()
        self.worker = LiveWorker(settings, self.stores, self.models.get)
        self.drift = DriftMonitor(drift_policy(settings))
        self._index_state: dict[str, str] = {}  # collection -> loading | ready | failed
        self.stopping = False
        self._stop = threading.Event()
        self._verifier: threading.Thread | None = None

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
            if self._searchers.pop(name, None) is not None:
                self.drift.forget(name)  # recreated or restored: another corpus
            paths, store = open_store(self.settings.collections_dir, name)
            searcher = Searcher(paths, store, self.models.get, fusion=fusion_of(self.settings),
                                queries=self.queries)
            searcher.on_damage = record_index_damage
            searcher.on_queries = lambda vectors, best: self.drift.record(name, vectors, best)
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
               load_model: bool = True, dimension: int | None = None) -> dict[str, Any]:
        """A new empty collection; ``model`` is checked and resolved before anything is made.

        With ``dimension`` and no ``model`` the collection has no model: its documents come
        with vectors made elsewhere, and text queries are answered lexically. With both, the
        model must make vectors of that dimension. ``load_model`` starts loading the model at
        once (a server: documents are on their way).
        """
        from embedsvc.encoders import embedding_dimension, resolve_model

        if dimension is not None and model is None:
            create_collection(self.settings.collections_dir, name, None, indexed_fields,
                              dimension=dimension)
            self._index_state.pop(name, None)
            return self.describe(name)
        spec = resolve_model(model or self.settings.default_model, self.settings.models_dir)
        made = embedding_dimension(spec, self.settings.models_dir)
        if dimension is not None and dimension != made:
            raise VectorMismatch(f"dimension {dimension} was asked for, but model '{spec.model_id}' makes "
                                 f"{made}-dimensional vectors; leave one of them out")
        create_collection(self.settings.collections_dir, name, spec.model_id, indexed_fields,
                          spec.weights_sha256, made)
        self._index_state.pop(name, None)  # of a collection of that name deleted before
        if load_model:
            self.models.get(spec.model_id)
        return self.describe(name)

    def unit_vectors(self, name: str, vectors: Sequence[Sequence[float]], what: Sequence[str]) -> list[Any]:
        """Each vector checked against the collection's dimension and made unit length."""
        return unit_vectors_of(self.searcher(name), self.settings.models_dir, vectors, what)

    def delete(self, name: str) -> None:
        delete_collection(self.settings.collections_dir, name)
        with self._lock:
            self._searchers.pop(name, None)
            self._index_state.pop(name, None)
        self.drift.forget(name)

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
        """Background work: leases, embedding, jobs, checking served files; and, if set,
        preloading."""
        if self.settings.preload_models:
            self.preload()
        self.worker.start()
        if self.settings.verify_interval_seconds > 0:
            self._verifier = threading.Thread(target=self._verify_loop, name="verify-indexes",
                                              daemon=True)
            self._verifier.start()

    def begin_stopping(self) -> None:
        """Shutdown has begun (SIGTERM): readiness turns false so no new traffic is sent."""
        self.stopping = True
        log.info("shutting down: /readyz answers 503; in %.0f s new connections are refused and "
                 "the requests in flight get at most %.0f s to finish",
                 self.settings.shutdown_drain_seconds, self.settings.shutdown_timeout_seconds)

    def stop(self) -> None:
        """Stop background work and close every database connection cleanly."""
        self.stopping = True
        self._stop.set()
        self.worker.stop()
        if self._verifier is not None:
            self._verifier.join(timeout=30)
        with self._lock:
            for _, searcher in self._searchers.values():
                searcher.store.close_all()
            self._searchers.clear()
        log.info("stopped: databases closed")

    def _verify_loop(self) -> None:
        """Re-check the served index files on an interval: a file damaged under a running
        server (memory-mapped, so read again at each search) must not go on answering."""
        while not self._stop.wait(self.settings.verify_interval_seconds):
            for name in list(self._searchers):
                if self._stop.is_set():
                    return
                try:
                    searcher = self.searcher(name)  # the collection as it is now (recreated?)
                    searcher.view()  # the version current now: one replaced is not damaged
                    searcher.verify()
                except CollectionNotFound:
                    with self._lock:
                        self._searchers.pop(name, None)
                except Exception:  # noqa: BLE001 - one collection's trouble must not stop the checks
                    log.exception("%s: checking the index files failed", name)

    def preload(self) -> None:
        """Start loading every model a collection uses, and its index, in the background:
        the server answers at once (a query that needs an index still loading waits for
        it), and checksumming large indexes never delays the start."""
        self.models.get(self.settings.default_model)
        searchers = []
        for name in self.collections():
            searcher = self.searcher(name)
            model_id = searcher.store.get_meta("model_id")
            if model_id:
                self.models.get(model_id)
                searchers.append(searcher)
                self._index_state[name] = "loading"
        threading.Thread(target=_load_indexes, args=(searchers, self._index_state),
                         name="preload-indexes", daemon=True).start()

    def describe(self, name: str) -> dict[str, Any]:
        """What a collection holds and serves, including what is not indexed yet."""
        searcher = self.searcher(name)
        store = searcher.store
        with store.read() as conn:
            count = lambda sql: conn.execute(sql).fetchone()[0]  # noqa: E731
            info: dict[str, Any] = {
                "name": name,
                "model": store.get_meta("model_id"),
                "dimension": store.get_meta("dimension"),
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
        if info["dimension"] is None and info["index"]:
            info["dimension"] = info["index"]["dim"]
        # live vectors of the served version: its count less what was deleted since
        info["indexed_vectors"] = info["index"]["count"] - info["deleted_vectors"] \
            if info["index"] else 0
        info["drift"] = self.drift.figures(name, searcher.view())
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

    def readiness(self) -> dict[str, Any]:
        """Ready once the default model, every model the collections need and their indexes
        are loaded; ``degraded`` when one failed (search still answers, with a fallback, so
        the server still takes traffic); ``stopping`` from SIGTERM on."""
        loaded = self.models.status()
        models = {self.settings.default_model: "not_loaded"}
        indexes = {}
        names = self.collections()
        for name in names:
            try:
                model_id = self.store(name).get_meta("model_id")
                if model_id:
                    models[model_id] = "not_loaded"
                    indexes[name] = self._index_state_of(name)
            except CollectionNotFound:
                continue  # deleted since it was listed
            except Exception:  # noqa: BLE001 - a probe must get an answer, not a 500
                log.exception("%s: cannot be opened", name)
                indexes[name] = "failed"
        models = {m: loaded.get(m, {}).get("state") or state for m, state in models.items()}
        # what was not preloaded (preloading off, or a collection made since) loads on first
        # use: not a reason to wait
        states = set(models.values()) | set(indexes.values())
        status = ("stopping" if self.stopping else "degraded" if "failed" in states
                  else "starting" if "loading" in states else "ready")
        return {"status": status, "models": models, "indexes": indexes, "collections": names}


    def _index_state_of(self, name: str) -> str:
        """none (no version yet), loading, ready, failed (e.g. found damaged) or not_loaded."""
        cached = self._searchers.get(name)
        if cached is not None and cached[1].index_failed:
            return "failed"
        if self.store(name).get_meta("current_version") is None:
            return "none"
        if cached is not None and cached[1].current_index_loaded:
            return "ready"
        return self._index_state.get(name, "not_loaded")


def _load_indexes(searchers: list[Searcher], state: dict[str, str]) -> None:
    for searcher in searchers:
        name = searcher.paths.name
        try:
            searcher.current_index()
            state[name] = "failed" if searcher.index_failed else "ready"
        except Exception:  # noqa: BLE001 - a query will meet the same error and report it
            state[name] = "failed"
            log.exception("%s: preloading the index failed", name)
        finally:
            searcher.store.close()  # this thread's connection

