"""Search over one collection: picks the mode, applies filters and the cold-start fallbacks.

The searcher holds a :class:`~embedsvc.search.fresh.LiveView`: the served index version,
its tombstones and the fresh segment. Before each search it compares the write number and
version the database names with the view's (one indexed read) and catches up with what
changed; a new version is loaded beside the old one and swapped in by reference, so
searches in flight finish on the old snapshot and no search waits for a write.

Dense search merges the index version (tombstones excluded inside FAISS) with an exact
scan of the fresh segment, by score, and collapses passages to documents by their best
passage. A metadata filter is one SQL condition for every mode: BM25 applies it in its
query, dense search turns it into the set of matching vector ids. When ``k`` documents
are not found at the depth asked for (many passages per document, a selective filter),
it asks deeper until they are or every candidate has been seen.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from embedsvc.backends import mismatch
from embedsvc.collection import CollectionPaths
from embedsvc.encoders import Encoder
from embedsvc.files import read_json

# The client's result types are the server's too: one definition of a hit for both sides.
from embedsvc.responses import Hit, Passage
from embedsvc.search import fresh as live
from embedsvc.search.dense import DenseIndex, IdFilter, IndexLoadError, damaged_shards, merge_top
from embedsvc.search.filters import CompiledFilter
from embedsvc.search.fusion import rrf
from embedsvc.search.lexical import search_lexical
from embedsvc.search.query_encoding import DIRECT, QueryEncoder
from embedsvc.store import Store, document_text, split_id

log = logging.getLogger(__name__)

Mode = Literal["auto", "dense", "lexical", "hybrid"]
MODES: tuple[str, ...] = ("auto", "dense", "lexical", "hybrid")
# Candidates fetched from each side before fusion.
_HYBRID_DEPTH = 100
# Filters whose matching vector ids a view keeps (a view lasts until the next write).
_CACHED_FILTERS = 32


class SearchConflict(Exception):
    """The request cannot be served as asked (HTTP 409): e.g. dense without an index."""


class SearchUnavailable(Exception):
    """A needed resource is temporarily missing (HTTP 503): e.g. the model is loading."""


# A ranked item: (document row id, score, vector id of the best passage or None).
Ranked = tuple[int, float, int | None]


@dataclass(frozen=True)
class Fusion:
    """How hybrid search fuses its two rankings: weighted reciprocal rank fusion."""

    rrf_k: int = 60
    dense_weight: float = 1.0
    lexical_weight: float = 1.0


@dataclass
class SearchResult:
    hits: list[Hit]
    mode: str
    fallback: str | None = None
    index_version: int | None = None
    took_ms: float = 0.0


EncoderLookup = Callable[[str], Encoder | None]

# Inner products of unit vectors lie in [-1, 1]; approximate layouts (PQ) stray a little.
# Past this, the index's memory holds something other than what was built: damage.
IMPOSSIBLE_SCORE = 1.5


class IndexDamaged(SearchUnavailable):
    """The served index gave an answer it cannot give when intact; it has been dropped."""


@dataclass(frozen=True)
class _Restriction:
    """What a filter leaves to dense search: index vector ids and fresh rows."""

    index: IdFilter | None
    fresh: np.ndarray | None  # bool mask over the fresh segment
    candidates: int


class Searcher:
    """Answers searches for one collection with whatever is available right now."""

    def __init__(self, paths: CollectionPaths, store: Store, encoders: EncoderLookup,
                 pinned_version: int | None = None, fusion: Fusion = Fusion(),
                 queries: QueryEncoder = DIRECT):
        self.paths = paths
        self.store = store
        self.encoders = encoders
        self.fusion = fusion
        # Encodes queries: shared by a server's searchers, so that concurrent queries of every
        # collection with the same model share encoder calls and the cache.
        self.queries = queries
        # A version to search instead of the current one (to evaluate a candidate): its index
        # alone, without the served version's fresh segment and tombstones.
        self.pinned_version = pinned_version
        self._view: live.LiveView | None = None
        self._failed_version: int | None = None
        self._reload_lock = threading.Lock()
        self.on_damage: Callable[[str], None] = lambda name: None  # e.g. count it in a metric
        # (unit query vectors, best-hit cosines) of unfiltered dense queries: drift monitoring
        self.on_queries: Callable[[np.ndarray, np.ndarray], None] | None = None

    # --- the current snapshot --------------------------------------------------------------
    def view(self) -> live.LiveView:
        """The collection's dense side as of the last committed write."""
        view = self._view
        if view is not None and self.pinned_version is None:
            caught_up = live.refresh(self.store, view)
            if caught_up is not None:
                with self._reload_lock:
                    if self._view is view:  # not dropped (as damaged) or reloaded meanwhile
                        self._view = caught_up
                        return caught_up
        elif view is not None:
            return view
        with self._reload_lock:
            return self._reload()

    def _reload(self) -> live.LiveView:
        """Load the version the database names (keeping the old one if it is broken)."""
        if self.pinned_version is not None:
            index = self._load_index(self.pinned_version, None)
            self._view = live.LiveView(self.pinned_version, index, 0, np.empty(0, np.int64),
                                       live.FreshSegment.empty())
            return self._view
        while True:  # until the state read is the state of the version loaded
            with self.store.read() as conn:
                wanted, _, _ = live.state_numbers(conn)
            held = self._view.index if self._view is not None else None
            if held is not None and held.manifest["version"] == wanted:
                index = held
            else:
                index = self._load_index(wanted, held)
            view = live.load(self.store, index, wanted)
            if view is not None:
                self._view = view
                return view

    def _load_index(self, wanted: int | None, held: DenseIndex | None) -> DenseIndex | None:
        if wanted is None or self._failed_version == wanted:
            return held if wanted is not None else None
        try:
            index = DenseIndex.load(self.paths.version_dir(wanted), previous=held)
            log.info("%s: serving index version %s", self.paths.name, wanted)
            return index
        except IndexLoadError as exc:
            # Keep serving what we have; never swap in a broken version.
            self._failed_version = wanted
            log.error("%s: cannot load version %s, still serving %s: %s", self.paths.name,
                      wanted, held.manifest["version"] if held else "none", exc)
            return held

    def drop_damaged(self, index: DenseIndex, why: str) -> None:
        """Stop serving a version found damaged after it was loaded: from now on it is
        answered as one that cannot be loaded, until a new version (or the intact files,
        see :meth:`verify`) comes."""
        version = index.manifest["version"]
        with self._reload_lock:
            if self._view is None or self._view.index is not index:
                return  # already dropped
            self._failed_version = version
            self._view = None
        log.error("%s: index version %s is damaged and no longer served (%s); searches fall "
                  "back to lexical with fallback index_unavailable; rebuild with `embedsvc index "
                  "build %s` or restore the files", self.paths.name, version, why, self.paths.name)
        self.on_damage(self.paths.name)

    def verify(self) -> None:
        """Check the served version's files against their checksums (the background check
        of a server); and let a version dropped as damaged back in once its files match."""
        view = self._view
        if view is not None and view.index is not None:
            problems = damaged_shards(view.index.folder, view.index.manifest)
            if problems:
                self.drop_damaged(view.index, "; ".join(problems))
        elif self._failed_version is not None:
            folder = self.paths.version_dir(self._failed_version)
            manifest_path = folder / "manifest.json"
            if manifest_path.is_file() and not damaged_shards(folder, read_json(manifest_path)):
                log.info("%s: the files of version %s match their checksums again; loading it",
                         self.paths.name, self._failed_version)
                with self._reload_lock:
                    self._failed_version, self._view = None, None

    def current_index(self) -> DenseIndex | None:
        """The index version being served (loading it if it changed)."""
        return self.view().index

    @property
    def current_index_loaded(self) -> bool:
        """True once a version is loaded and served (without loading anything)."""
        view = self._view
        return view is not None and view.index is not None

    @property
    def index_failed(self) -> bool:
        """True when the version the database names could not be loaded."""
        view = self._view
        return self._failed_version is not None and (view is None or view.index is None)

    # --- search ----------------------------------------------------------------------------
    def search(self, query: str, k: int, mode: str = "auto", model: str | None = None,
               include_text: bool = False, include_metadata: bool = False,
               where: CompiledFilter | None = None, fusion: Fusion | None = None) -> SearchResult:
        return self.search_many([query], k, mode, model, include_text, include_metadata, where,
                                fusion)[0]

    def search_vector(self, vector: np.ndarray, k: int, include_text: bool = False,
                      include_metadata: bool = False,
                      where: CompiledFilter | None = None) -> SearchResult:
        """Dense search by a unit query vector made elsewhere (checked by the caller)."""
        start = time.perf_counter()
        view = self.view()
        name = self.paths.name
        if self.index_failed:
            raise SearchUnavailable(f"the index of '{name}' cannot be loaded (see the server log and "
                                    f"`embedsvc index check {name}`)")
        empty = view.index is None and not len(view.fresh)  # nothing to find yet: no hits
        ranked = [] if empty else self.dense_by_vectors(view, vector[None, :], k, where)[0]
        if self.on_queries is not None and where is None and ranked:
            self.on_queries(vector[None, :], np.array([ranked[0][1]]))
        version = view.index.manifest["version"] if view.index is not None else None
        took = round((time.perf_counter() - start) * 1000, 3)
        return SearchResult(self._hits(ranked, include_text, include_metadata), "dense", None, version, took)

    def search_many(self, queries: Sequence[str], k: int, mode: str = "auto",
                    model: str | None = None, include_text: bool = False,
                    include_metadata: bool = False, where: CompiledFilter | None = None,
                    fusion: Fusion | None = None) -> list[SearchResult]:
        """Search several queries at once (one encoder call), e.g. for evaluation."""
        args = (queries, k, mode, model, include_text, include_metadata, where, fusion)
        try:
            return self._search_many(*args)
        except IndexDamaged:  # the version is dropped now: answer as for one that cannot load
            return self._search_many(*args)

    def _search_many(self, queries: Sequence[str], k: int, mode: str, model: str | None,
                     include_text: bool, include_metadata: bool, where: CompiledFilter | None,
                     fusion: Fusion | None) -> list[SearchResult]:
        start = time.perf_counter()
        view = self.view()
        used, fallback, encoder = self._plan(view, mode, model)
        if used == "lexical":
            ranked = [self._lexical(q, k, where) for q in queries]
        else:
            assert encoder is not None
            ranked = self._dense(view, encoder, queries, k if used == "dense" else _HYBRID_DEPTH,
                                 where)
            if used == "hybrid":
                ranked = [self._fuse(q, dense, k, where, fusion or self.fusion)
                          for q, dense in zip(queries, ranked, strict=True)]
        took = (time.perf_counter() - start) * 1000 / max(len(queries), 1)
        version = view.index.manifest["version"] if view.index is not None else None
        return [
            SearchResult(self._hits(r, include_text, include_metadata), used, fallback, version,
                         round(took, 3))
            for r in ranked
        ]

    def _plan(self, view: live.LiveView, mode: str,
              model: str | None) -> tuple[str, str | None, Encoder | None]:
        """What answers this request: (mode used, fallback reason or None, encoder)."""
        if mode == "lexical":
            return "lexical", None, None
        encoder, missing = self._dense_side(view, mode, model)
        if encoder is None:
            return "lexical", missing, None
        if mode == "auto":  # the best answer available: both sides when both can answer
            return ("hybrid", None, encoder) if self._has_text(view) else ("dense", "no_text", encoder)
        return mode, None, encoder

    def _dense_side(self, view: live.LiveView, mode: str,
                    model: str | None) -> tuple[Encoder | None, str | None]:
        """The encoder when dense search can answer, else why not (raising for mode dense)."""
        name = self.paths.name
        model_id = view.index.model_id if view.index is not None else self.store.get_meta("model_id")
        if model is not None and model_id is not None and model != model_id:
            raise SearchConflict(f"collection '{name}' is indexed with model '{model_id}', not "
                                 f"'{model}'; vector spaces of different models are never mixed")
        if self.index_failed:  # fresh vectors alone would be a partial answer: say so instead
            if mode == "dense":
                raise SearchUnavailable(
                    f"the index of '{name}' cannot be loaded (see the server log and "
                    f"`embedsvc index check {name}`); use mode 'auto' or 'lexical'")
            return None, "index_unavailable"
        if view.index is None and not len(view.fresh):
            if mode == "dense":
                raise SearchConflict(
                    f"collection '{name}' has no dense index yet: use mode 'lexical' or 'auto', "
                    f"or build one with `embedsvc index build {name}` (documents written "
                    "through the API are searchable densely once embedded)")
            return None, "no_index"
        if model_id is None:  # vectors made elsewhere: a text query has nothing to embed it
            if mode == "dense":
                raise SearchConflict(f"collection '{name}' has no model to embed a text query: "
                                     "search it with a 'vector', or lexically")
            return None, "no_model"
        encoder = self.encoders(model_id)
        if encoder is None:
            if mode == "dense":
                raise SearchUnavailable(f"model '{model_id}' is not loaded yet; retry, or use "
                                        "mode 'auto'")
            return None, "model_unavailable"
        built_with = self._snapshot_fact(view, f"mismatch:{encoder.space}",
                                         lambda: mismatch(self.store.get_meta, encoder.space))
        if built_with is not None:
            if mode == "dense":
                raise SearchConflict(
                    f"collection '{name}' was embedded with backend '{built_with}', whose vectors "
                    f"are not interchangeable with those of this server's backend "
                    f"'{encoder.backend}' for this model; serve with "
                    f"--backend {built_with} or rebuild with `embedsvc index build {name} "
                    f"--backend {encoder.backend}`")
            return None, "backend_mismatch"
        return encoder, None

    def _has_text(self, view: live.LiveView) -> bool:
        """Whether lexical search has anything to search (not a collection of bare vectors)."""
        return self._snapshot_fact(view, "has_text", lambda: self.store.conn.execute(
            "SELECT 1 FROM documents_fts_docsize LIMIT 1").fetchone() is not None)

    @staticmethod
    def _snapshot_fact(view: live.LiveView, name: str, read: Callable[[], Any]) -> Any:
        """``read()`` once per snapshot: what it reads changes only with a write or a new
        version, and either makes a new view."""
        if name not in view.cache:
            view.cache[name] = read()
        return view.cache[name]

    def _lexical(self, query: str, k: int, where: CompiledFilter | None) -> list[Ranked]:
        return [(d, s, None) for d, s in search_lexical(self.store, query, k, where)]

    def _dense(self, view: live.LiveView, encoder: Encoder, queries: Sequence[str], k: int,
               where: CompiledFilter | None) -> list[list[Ranked]]:
        """Top ``k`` documents per query over index and fresh segment, each by its best passage."""
        vectors = self.queries.encode(encoder, queries)
        dim = view.index.dim if view.index is not None else view.fresh.vectors.shape[1]
        if vectors.shape[1] != dim:
            raise SearchConflict(
                f"model '{encoder.spec.model_id}' makes {vectors.shape[1]}-d vectors but the "
                f"index holds {dim}-d ones; rebuild the index with this model")
        ranked = self.dense_by_vectors(view, vectors, k, where)
        if self.on_queries is not None and where is None:
            answered = [i for i, r in enumerate(ranked) if r]
            self.on_queries(vectors[answered], np.array([ranked[i][0][1] for i in answered]))
        return ranked

    def dense_by_vectors(self, view: live.LiveView, vectors: np.ndarray, k: int,
                         where: CompiledFilter | None = None) -> list[list[Ranked]]:
        """Top ``k`` documents for (nq, dim) unit query vectors: the dense path after encoding.

        Returns:
            Per query, (document row id, score, vector id of its best passage), best first.
        """
        only = self._restriction(view, where)
        per_doc = view.index.passages_per_document() if view.index is not None else 1.0
        # twice the passages k documents have on average, as some have more; a collection of
        # one passage a document needs k (the loop below widens if some have none)
        spare = 2 if per_doc > 1 else 1
        depth = max(1, min(only.candidates, int(np.ceil(k * per_doc * spare))))
        while True:
            scores, ids = self._passages(view, vectors, depth, only)
            ranked = [best_passage_per_document(s, i, k) for s, i in zip(scores, ids, strict=True)]
            if depth >= only.candidates or all(len(r) >= k for r in ranked):
                return ranked
            depth = min(only.candidates, depth * 4)

    def _passages(self, view: live.LiveView, vectors: np.ndarray, depth: int,
                  only: _Restriction) -> tuple[np.ndarray, np.ndarray]:
        """Top ``depth`` passages (scores, vector ids) of index and fresh segment, merged."""
        parts = []
        in_index = view.index is not None and not (only.index is not None and only.index.include
                                                   and not len(only.index.ids))
        if in_index:
            parts.append(self._checked(view.index, view.index.search(
                vectors, min(depth, view.index.count), only.index)))
        if len(view.fresh):
            parts.append(view.fresh.search(vectors, depth, only.fresh))
        if not parts:
            return np.empty((len(vectors), 0), np.float32), np.empty((len(vectors), 0), np.int64)
        if len(parts) == 1 and in_index:
            return parts[0]  # the index's shards, merged already
        return merge_top(np.concatenate([p[0] for p in parts], axis=1),
                         np.concatenate([p[1] for p in parts], axis=1), depth)

    def _checked(self, index: DenseIndex,
                 found: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        if (np.abs(found[0]) <= IMPOSSIBLE_SCORE).all():  # the usual case, in one pass
            return found
        scores = found[0][found[1] >= 0]
        impossible = scores[~(np.abs(scores) <= IMPOSSIBLE_SCORE)]  # NaN included
        if len(impossible):
            worst = impossible[0]
            self.drop_damaged(index, f"a search returned the score {worst:g}, impossible for unit vectors")
            raise IndexDamaged(f"the index of '{self.paths.name}' was found damaged and is no longer "
                               "served; retry (searches fall back to lexical)")
        return found

    def _restriction(self, view: live.LiveView, where: CompiledFilter | None) -> _Restriction:
        """The vectors dense search may return: all live ones, or those a filter matches."""
        if where is None:
            cached = view.cache.get("tombstones")
            if cached is None:  # made once per snapshot: building the selector costs ~ms
                tombstones = IdFilter(view.tombstones, include=False) if len(view.tombstones) else None
                cached = view.cache["tombstones"] = _Restriction(tombstones, None, view.live_vectors)
            return cached
        key = f"filter:{where.key}"
        cached = view.cache.get(key)
        if cached is None:
            # one integer a passage: its vector id and whether the served index holds it
            rows = np.fromiter((r[0] for r in self.store.conn.execute(
                "SELECT p.id * 2 + p.indexed FROM passages p JOIN documents "
                f"ON documents.rowid = p.doc WHERE ({where.sql})", where.params)), np.int64)
            indexed = np.sort(rows[rows % 2 == 1] // 2)
            fresh = np.isin(view.fresh.vids, rows[rows % 2 == 0] // 2)
            cached = _Restriction(IdFilter(indexed, include=True), fresh,
                                  len(indexed) + int(fresh.sum()))
            if len(view.cache) >= _CACHED_FILTERS:
                view.cache.clear()
            view.cache[key] = cached
        return cached

    def _fuse(self, query: str, dense: list[Ranked], k: int, where: CompiledFilter | None,
              fusion: Fusion) -> list[Ranked]:
        lexical = search_lexical(self.store, query, _HYBRID_DEPTH, where)
        if not lexical:  # nothing lexical to add: dense alone
            return dense[:k]
        best_passage = {doc: vid for doc, _, vid in dense}
        fused = rrf([[doc for doc, _, _ in dense], [doc for doc, _ in lexical]], k=fusion.rrf_k,
                    limit=k, weights=(fusion.dense_weight, fusion.lexical_weight))
        return [(doc, score, best_passage.get(doc)) for doc, score in fused]

    def _hits(self, ranked: list[Ranked], include_text: bool,
              include_metadata: bool) -> list[Hit]:
        rows = self.store.documents_by_rowid(doc for doc, _, _ in ranked)
        spans = self.store.passage_spans(vid for _, _, vid in ranked if vid is not None)
        hits = []
        for doc, score, vid in ranked:
            row = rows.get(doc)
            if row is None:  # deleted since the search began
                continue
            passage = None
            start, end = spans.get(vid, (0, 0)) if vid is not None else (0, 0)
            if end > start:  # documents with no text (embeddings made elsewhere) have none
                text = document_text(row.title, row.text)[start:end]
                passage = Passage(ord=split_id(vid)[1], start=start, end=end, text=text)
            hits.append(Hit(id=row.id, score=float(np.float32(score)), title=row.title,
                            text=row.text if include_text else None,
                            metadata=row.metadata if include_metadata else None, passage=passage))
        return hits


def best_passage_per_document(scores: np.ndarray, ids: np.ndarray, k: int) -> list[Ranked]:
    """Collapse a passage ranking (best first) to documents, keeping each one's best passage."""
    seen: set[int] = set()
    ranked: list[Ranked] = []
    for score, vid in zip(scores.tolist(), ids.tolist(), strict=True):  # Python numbers: faster
        if vid < 0:
            continue
        doc = split_id(int(vid))[0]
        if doc not in seen:
            seen.add(doc)
            ranked.append((doc, score, vid))
            if len(ranked) == k:
                break
    return ranked
