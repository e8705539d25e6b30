"""The serving side's state: the collections under the home folder and the models they need.

One :class:`Service` per server process. Searchers are created on first use and kept;
each one picks up new index versions by itself, so builds never need a restart.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from embedsvc.collection import list_collections, open_store, read_manifest
from embedsvc.model_pool import ModelPool
from embedsvc.search.searcher import Searcher
from embedsvc.settings import Settings

log = logging.getLogger(__name__)


def local_searcher(settings: Settings, collection: str,
                   pinned_version: int | None = None) -> Searcher:
    """A searcher for batch work (CLI, evaluation, pipeline stages) whose model lookup
    blocks until the model is loaded: such callers want dense results, not a fallback."""
    from embedsvc.encoders import load_encoder

    paths, store = open_store(settings.collections_dir, collection)
    return Searcher(paths, store, lambda name: load_encoder(
        name, settings.models_dir, settings.device, settings.encode_batch_size),
        pinned_version=pinned_version)


class Service:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.models = ModelPool(settings)
        self._searchers: dict[str, Searcher] = {}
        self._lock = threading.Lock()

    def collections(self) -> list[str]:
        return list_collections(self.settings.collections_dir)

    def searcher(self, name: str) -> Searcher:
        """The searcher of an existing collection (CollectionNotFound otherwise)."""
        searcher = self._searchers.get(name)
        if searcher is None:
            paths, store = open_store(self.settings.collections_dir, name)
            with self._lock:
                searcher = self._searchers.setdefault(name, Searcher(paths, store, self.models.get))
        return searcher

    def preload(self) -> None:
        """Start loading every model a collection is indexed with, and its index, in the
        background: the server answers at once (a query that needs an index still loading
        waits for it), and checksumming large indexes never delays the start."""
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
        searcher = self.searcher(name)
        store = searcher.store
        version = store.get_meta("current_version")
        info: dict[str, Any] = {
            "name": name,
            "documents": store.count_documents(),
            "index_version": version,
            "model": store.get_meta("model_id"),
            "index": None,
        }
        if version is not None:
            manifest = read_manifest(searcher.paths, version)
            info["index"] = {
                key: manifest.get(key)
                for key in ("version", "layout", "dim", "count", "metric", "recall_at_10",
                            "index_bytes", "created_at", "weights_sha256", "search_params")
            }
            info["index"]["shards"] = len(manifest.get("shards", []))
            state = self.models.status().get(manifest["model_id"], {}).get("state")
            info["model_state"] = state or "not_loaded"
        return info

    def readiness(self) -> dict[str, str]:
        """Models the collections need and their state; ready when none is still loading."""
        wanted = {}
        for name in self.collections():
            model_id = self.searcher(name).store.get_meta("model_id")
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
