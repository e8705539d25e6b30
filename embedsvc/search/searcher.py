"""Search over one collection: picks the mode, applies the cold-start fallbacks.

The searcher holds the current index version as an immutable snapshot. Before each
search it compares the version the database names with the one it holds (one indexed
read); a new version is loaded beside the old one and swapped in by reference, so
searches in flight finish on the old snapshot and no search ever waits on a lock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

# The client's result types are the server's too: one definition of a hit for both sides.
from embedsvc.client import Hit, Passage
from embedsvc.collection import CollectionPaths
from embedsvc.encoders import Encoder
from embedsvc.search.dense import DenseIndex, IndexLoadError
from embedsvc.search.fusion import rrf
from embedsvc.search.lexical import search_lexical
from embedsvc.store import Store, document_text, split_id

log = logging.getLogger(__name__)

Mode = Literal["auto", "dense", "lexical", "hybrid"]
MODES: tuple[str, ...] = ("auto", "dense", "lexical", "hybrid")
# Candidates fetched from each side before fusion.
_HYBRID_DEPTH = 100


class SearchConflict(Exception):
    """The request cannot be served as asked (HTTP 409): e.g. dense without an index."""


class SearchUnavailable(Exception):
    """A needed resource is temporarily missing (HTTP 503): e.g. the model is loading."""


# A ranked item: (document row id, score, vector id of the best passage or None).
Ranked = tuple[int, float, int | None]


@dataclass
class SearchResult:
    hits: list[Hit]
    mode: str
    fallback: str | None = None
    index_version: int | None = None
    took_ms: float = 0.0


EncoderLookup = Callable[[str], Encoder | None]


class Searcher:
    """Answers searches for one collection with whatever is available right now."""

    def __init__(self, paths: CollectionPaths, store: Store, encoders: EncoderLookup,
                 pinned_version: int | None = None):
        self.paths = paths
        self.store = store
        self.encoders = encoders
        # A version to search instead of the current one (to evaluate a candidate).
        self.pinned_version = pinned_version
        self._index: DenseIndex | None = None
        self._failed_version: int | None = None
        self._reload_lock = threading.Lock()

    # --- the current index snapshot --------------------------------------------------------
    def current_index(self) -> DenseIndex | None:
        """The index version the database names, loading it if it changed since last time."""
        wanted = self.pinned_version or self.store.get_meta("current_version")
        index = self._index
        if wanted is None:
            return None
        if index is not None and index.manifest["version"] == wanted:
            return index
        if self._failed_version == wanted:
            return index  # known broken: keep serving what we have, without the lock
        with self._reload_lock:
            index = self._index
            stale = index is None or index.manifest["version"] != wanted
            if stale and self._failed_version != wanted:
                try:
                    self._index = DenseIndex.load(self.paths.version_dir(wanted))
                    log.info("%s: serving index version %s", self.paths.name, wanted)
                except IndexLoadError as exc:
                    # Keep serving what we have; never swap in a broken version.
                    self._failed_version = wanted
                    log.error("%s: cannot load version %s, still serving %s: %s", self.paths.name,
                              wanted, index.manifest["version"] if index else "none", exc)
        return self._index

    @property
    def index_failed(self) -> bool:
        """True when the version the database names could not be loaded."""
        return self._failed_version is not None and self._index is None

    # --- search ----------------------------------------------------------------------------
    def search(self, query: str, k: int, mode: str = "auto", model: str | None = None,
               include_text: bool = False, include_metadata: bool = False) -> SearchResult:
        return self.search_many([query], k, mode, model, include_text, include_metadata)[0]

    def search_many(self, queries: Sequence[str], k: int, mode: str = "auto",
                    model: str | None = None, include_text: bool = False,
                    include_metadata: bool = False) -> list[SearchResult]:
        """Search several queries at once (one encoder call), e.g. for evaluation."""
        start = time.perf_counter()
        index, fallback, encoder = self._plan(mode, model)
        used = "lexical" if index is None else ("hybrid" if mode == "hybrid" else "dense")
        if used == "lexical":
            ranked = [[(d, s, None) for d, s in search_lexical(self.store, q, k)] for q in queries]
        else:
            assert encoder is not None
            ranked = self._dense(index, encoder, queries, k if used == "dense" else _HYBRID_DEPTH)
            if used == "hybrid":
                ranked = [self._fuse(q, dense, k) for q, dense in zip(queries, ranked, strict=True)]
        took = (time.perf_counter() - start) * 1000 / max(len(queries), 1)
        version = index.manifest["version"] if index is not None else None
        return [
            SearchResult(self._hits(r, include_text, include_metadata), used, fallback, version,
                         round(took, 3))
            for r in ranked
        ]

    def _plan(self, mode: str, model: str | None) -> tuple[DenseIndex | None, str | None, Encoder | None]:
        """Decide what can serve this request: (index or None for lexical, fallback, encoder)."""
        if mode == "lexical":
            return None, None, None
        index = self.current_index()
        if index is None:
            if self.index_failed:
                if mode == "dense":
                    raise SearchUnavailable(
                        f"the index of '{self.paths.name}' cannot be loaded (see the server log and "
                        f"`embedsvc index check {self.paths.name}`); use mode 'auto' or 'lexical'"
                    )
                return None, "index_unavailable", None
            if mode == "dense":
                raise SearchConflict(
                    f"collection '{self.paths.name}' has no dense index yet: use mode 'lexical' "
                    f"or 'auto', or build one with `embedsvc index build {self.paths.name}`"
                )
            return None, "no_index", None
        if model is not None and model != index.model_id:
            raise SearchConflict(
                f"collection '{self.paths.name}' is indexed with model '{index.model_id}', not "
                f"'{model}'; vector spaces of different models are never mixed"
            )
        encoder = self.encoders(index.model_id)
        if encoder is None:
            if mode == "dense":
                raise SearchUnavailable(
                    f"model '{index.model_id}' is not loaded yet; retry, or use mode 'auto'"
                )
            return None, "model_unavailable", None
        return index, None, encoder

    def _dense(self, index: DenseIndex, encoder: Encoder, queries: Sequence[str],
               k: int) -> list[list[Ranked]]:
        """Top ``k`` documents per query, each scored by its best passage."""
        vectors = encoder.encode(list(queries))
        if vectors.shape[1] != index.dim:
            raise SearchConflict(
                f"model '{encoder.spec.model_id}' makes {vectors.shape[1]}-d vectors but the "
                f"index holds {index.dim}-d ones; rebuild the index with this model"
            )
        scores, ids = index.search(vectors, index.passage_depth(k))
        return [best_passage_per_document(row_s, row_i, k)
                for row_s, row_i in zip(scores, ids, strict=True)]

    def _fuse(self, query: str, dense: list[Ranked], k: int) -> list[Ranked]:
        lexical = search_lexical(self.store, query, _HYBRID_DEPTH)
        if not lexical:  # nothing lexical to add: dense alone
            return dense[:k]
        best_passage = {doc: vid for doc, _, vid in dense}
        fused = rrf([[doc for doc, _, _ in dense], [doc for doc, _ in lexical]], limit=k)
        return [(doc, score, best_passage.get(doc)) for doc, score in fused]

    def _hits(self, ranked: list[Ranked], include_text: bool,
              include_metadata: bool) -> list[Hit]:
        rows = self.store.documents_by_rowid(doc for doc, _, _ in ranked)
        spans = self.store.passage_spans(vid for _, _, vid in ranked if vid is not None)
        hits = []
        for doc, score, vid in ranked:
            row = rows.get(doc)
            if row is None:  # deleted since the index was built
                continue
            passage = None
            start, end = spans.get(vid, (0, 0)) if vid is not None else (0, 0)
            if end > start:  # documents with no text (embeddings made elsewhere) have none
                text = document_text(row.title, row.text)[start:end]
                passage = Passage(split_id(vid)[1], start, end, text)
            hits.append(Hit(row.id, float(np.float32(score)), row.title,
                            row.text if include_text else None,
                            row.metadata if include_metadata else None, passage))
        return hits


def best_passage_per_document(scores: np.ndarray, ids: np.ndarray, k: int) -> list[Ranked]:
    """Collapse a passage ranking (best first) to documents, keeping each one's best passage."""
    seen: set[int] = set()
    ranked: list[Ranked] = []
    for score, vid in zip(scores, ids, strict=True):
        if vid < 0:
            continue
        doc = split_id(int(vid))[0]
        if doc not in seen:
            seen.add(doc)
            ranked.append((doc, float(score), int(vid)))
            if len(ranked) == k:
                break
    return ranked
