"""Query drift: are people still asking what the collection can answer?

The server keeps, per collection, a window of the most recent dense queries: each query's
unit vector and the cosine of its best hit. From it come three figures, in ``describe``,
``/metrics`` and the playground:

- ``mean_best_cosine``: how close the best answer is, on average;
- ``low_score_share``: the share of queries whose best hit scores below
  ``drift_low_score``: questions the corpus has no good answer to;
- ``centroid_distance``: 1 - cosine between the mean query and the mean corpus vector.

The collection is marked ``drifting`` once the window holds ``drift_min_queries`` queries and
more than ``drift_alert_share`` of them score low. Queries with a metadata filter are left
out (their best hit is the filter's), and so are collections whose scores are not cosines.
Each server process keeps its own window (with ``serve --workers N``, the worker answering).

The corpus centroid is estimated per index version: from an IVF index's list centroids
weighted by list sizes (what k-means makes them: the means of their lists), else from up to
``CENTROID_SAMPLE`` stored vectors of each shard, plus the fresh vectors.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

CENTROID_SAMPLE = 20_000


@dataclass(frozen=True)
class DriftPolicy:
    window: int
    low_score: float
    alert_share: float
    min_queries: int


class DriftMonitor:
    """The recent query windows of every collection a server process answers for."""

    def __init__(self, policy: DriftPolicy):
        self.policy = policy
        self._windows: dict[str, deque[tuple[np.ndarray, float]]] = {}
        self._centroids: dict[str, tuple[Any, np.ndarray | None]] = {}
        self._lock = threading.Lock()

    def record(self, name: str, vectors: np.ndarray, best: np.ndarray) -> None:
        """Add queries (unit vectors) and the cosine of each one's best hit."""
        if self.policy.window == 0:
            return
        with self._lock:
            window = self._windows.setdefault(name, deque(maxlen=self.policy.window))
            window.extend(zip(vectors.astype(np.float32, copy=True), best.tolist(), strict=True))

    def forget(self, name: str) -> None:
        """A collection deleted or replaced: its queries described another corpus."""
        with self._lock:
            self._windows.pop(name, None)
            self._centroids.pop(name, None)

    def figures(self, name: str, view: Any) -> dict[str, Any] | None:
        """The drift figures of ``name`` against the corpus ``view`` serves; None before any
        dense query was recorded."""
        with self._lock:
            window = list(self._windows.get(name, ()))
        if not window:
            return None
        vectors = np.stack([v for v, _ in window])
        best = np.array([s for _, s in window], dtype=np.float64)
        policy = self.policy
        low_share = float(np.mean(best < policy.low_score))
        corpus = self._corpus_centroid(name, view)
        distance = None if corpus is None else round(1.0 - float(_unit(vectors.mean(axis=0)) @ corpus), 6)
        return {
            "queries": len(window),
            "mean_best_cosine": round(float(best.mean()), 6),
            "low_score_share": round(low_share, 6),
            "centroid_distance": distance,
            "drifting": len(window) >= policy.min_queries and low_share > policy.alert_share,
        }

    def _corpus_centroid(self, name: str, view: Any) -> np.ndarray | None:
        key = (view.index.manifest.get("version") if view.index is not None else None, len(view.fresh))
        with self._lock:
            cached = self._centroids.get(name)
        if cached is not None and cached[0] == key:
            return cached[1]
        centroid = corpus_centroid(view)
        with self._lock:
            self._centroids[name] = (key, centroid)
        return centroid


def corpus_centroid(view: Any) -> np.ndarray | None:
    """The unit mean of the vectors ``view`` searches (estimated; see the module doc)."""
    total, count = None, 0.0
    parts = [shard_sum(shard) for shard in view.index.shards] if view.index is not None else []
    if len(view.fresh):
        parts.append((view.fresh.vectors.sum(axis=0, dtype=np.float64), float(len(view.fresh))))
    for vector_sum, n in parts:
        total = vector_sum if total is None else total + vector_sum
        count += n
    return None if total is None or count == 0 else _unit(total / count)


def shard_sum(index: Any) -> tuple[np.ndarray, float]:
    """(sum of the shard's vectors, their number), from IVF list centroids or a sample."""
    import faiss

    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:  # not an IVF index
        ivf = None
    if ivf is not None:
        sizes = np.array([ivf.invlists.list_size(i) for i in range(ivf.nlist)], dtype=np.float64)
        return sizes @ ivf.quantizer.reconstruct_n(0, ivf.nlist).astype(np.float64), float(sizes.sum())
    base = faiss.downcast_index(index)
    while hasattr(base, "index") and not hasattr(base, "storage"):  # id maps around the vectors
        base = faiss.downcast_index(base.index)
    n = min(int(base.ntotal), CENTROID_SAMPLE)
    if n == 0:
        return np.zeros(index.d), 0.0
    sample = base.reconstruct_n(0, n).astype(np.float64)
    return sample.sum(axis=0) * (base.ntotal / n), float(base.ntotal)


def _unit(vector: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else vector
