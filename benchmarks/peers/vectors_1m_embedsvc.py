"""embedsvc's search side for ``vectors_1m.py``: the dense layer the server answers with.

The build is the real CLI (``embedsvc index build --vectors``, run by the driver through
``benchmarks/vectors_build.py``'s ``cli_build``). The search API takes text only and the
model would turn our synthetic queries into other vectors, so queries go in where the
server's own path continues after encoding: ``Searcher.dense_by_vectors(searcher.view(),
vectors, k)``, the code ``POST /search`` runs in ``mode=dense`` once the query is
embedded. Per query that is: the snapshot check against SQLite (one indexed read), the
tombstone restriction, ``DenseIndex.search`` over the version's shards (memory-mapped
where FAISS allows, as the server loads them), merging and the passage → document
collapse. Not included: HTTP, JSON, encoding, and reading the hits' documents.

Sweeps start at the manifest's tuned ``search_params`` (what the service serves); a
larger setting is set on the loaded shards with ``ParameterSpace``, as the manifest's is.
"""

from __future__ import annotations

import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from vectors_1m_common import K, main  # noqa: E402
from vectors_1m_faiss import param_grid  # noqa: E402

from embedsvc.collection import open_store  # noqa: E402
from embedsvc.search.searcher import Searcher  # noqa: E402


class EmbedsvcSearch:
    """One collection's :class:`Searcher`, queried with vectors."""

    def __init__(self, home: Path, collection: str, start: str | None):
        paths, store = open_store(home / "collections", collection)
        # no encoder: dense_by_vectors starts after it
        self.searcher = Searcher(paths, store, lambda model_id: None)
        index = self.searcher.view().index
        if index is None:
            raise RuntimeError(f"collection {collection!r} in {home} has no index")
        manifest = index.manifest
        if start is None:  # what the service serves
            start = manifest.get("search_params") or ""
        self.settings = [param_grid(start, index.shards[0])]
        self.info = {k: manifest.get(k) for k in ("layout", "search_params", "recall_at_10",
                                                  "index_bytes", "reason", "train_size")}
        # documents are named doc<row>: a document row id → the row number of its vector
        conn = sqlite3.connect(f"file:{paths.db}?mode=ro", uri=True)
        pairs = np.array([(r, int(i[3:])) for r, i in conn.execute("SELECT rowid, id FROM documents")],
                         dtype=np.int64)
        conn.close()
        self.row_of = np.full(int(pairs[:, 0].max()) + 1, -1, dtype=np.int64)
        self.row_of[pairs[:, 0]] = pairs[:, 1]

    def set(self, setting: str) -> None:
        if setting:
            for shard in self.searcher.view().index.shards:
                faiss.ParameterSpace().set_index_parameters(shard, setting)

    def _rows(self, ranked: list[tuple[int, float, int | None]]) -> np.ndarray:
        out = np.full(K, -1, np.int64)
        docs = [doc for doc, _, _ in ranked[:K]]
        out[: len(docs)] = self.row_of[docs]
        return out

    def one(self, query: np.ndarray) -> np.ndarray:
        return self._rows(self.searcher.dense_by_vectors(self.searcher.view(), query[None, :], K)[0])

    def batch(self, queries: np.ndarray) -> np.ndarray:
        return np.stack([self._rows(r) for r in
                         self.searcher.dense_by_vectors(self.searcher.view(), queries, K)])

    def extra(self, queries: np.ndarray, truth: np.ndarray, rounds: int) -> dict[str, float]:
        """Where a single query's time goes: the FAISS layer alone (``DenseIndex.search``
        at the depth the searcher asks for) and the snapshot check alone (best of
        ``rounds`` passes each)."""
        view = self.searcher.view()
        depth = max(1, min(view.live_vectors,
                           int(np.ceil(K * view.index.passages_per_document() * 2))))
        index_s = check_s = float("inf")
        for _ in range(rounds):
            start = time.perf_counter()
            for i in range(len(queries)):
                view.index.search(queries[i:i + 1], depth)
            index_s = min(index_s, time.perf_counter() - start)
            start = time.perf_counter()
            for _ in range(len(queries)):
                self.searcher.view()
            check_s = min(check_s, time.perf_counter() - start)
        return {"depth": depth, "dense_index_qps": len(queries) / index_s,
                "view_check_us": check_s / len(queries) * 1e6}


def build(data: Path, out: Path, opts: dict[str, Any]) -> dict[str, Any]:
    raise NotImplementedError("embedsvc builds through its CLI (vectors_1m.py runs it)")


def open_index(out: Path, opts: dict[str, Any]) -> EmbedsvcSearch:
    return EmbedsvcSearch(out, opts.get("collection", "bench"), opts.get("start"))


if __name__ == "__main__":
    main(build, open_index)
