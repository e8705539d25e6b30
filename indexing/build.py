"""Build a FAISS index version from chunks, in memory bounded by one chunk.

A chunk (:class:`indexing.chunkfiles.VectorChunk`) is a chunk file of embedded vectors
(``ChunkFile``) or rows of a ``--vectors`` input read in place
(:class:`indexing.vector_sources.VectorRows`). The build never holds the corpus: chunks are
memory-mapped and read one batch at a time to validate, sample, add and compute exact
neighbours, so what stays resident is the index itself, the training sample and one batch.
The steps, in order:

1. validate every chunk (dimension, dtype, NaN/inf, id count, duplicate ids) before any
   expensive work, so a bad file fails the build in seconds with its name in the message
   (a caller that trains ahead checks its input itself, as ``--vectors`` does);
2. choose the layout under the memory budget (:mod:`indexing.layouts`) and log why;
3. train on a seeded random sample drawn across all chunks (inputs are often sorted, so
   the first rows would give a skewed quantizer); :func:`train_index` does steps 2-3 on
   their own, before the ids exist, for a caller that stores documents meanwhile;
4. clone the trained empty index once per shard and add the vectors in batches of up to
   64MB (large chunks in place, small ones packed: thousands of 512-row FAISS calls cost
   twice the time on a busy machine), each vector to shard ``id % S``;
5. tune ``nprobe`` / ``efSearch`` on seeded sample queries against exact top-10 until
   recall@10 reaches the target, and record the recall measured;
6. write ``shard-NNNN.faiss`` files atomically and return the manifest fields.

Sharded search (fan out, then merge the top k exactly as one index would) is
``embedsvc.search.dense.search_shards``, shared by the tuning here and by serving.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from embedsvc.files import sha256_file, write_atomic_with
from embedsvc.search.dense import search_shards
from indexing.chunkfiles import VectorChunk
from indexing.errors import BuildError
from indexing.layouts import LayoutChoice, LayoutError, choose_layout, classify, format_bytes

log = logging.getLogger(__name__)

K_EVAL = 10
# Rows per batch when reading chunk files: caps transient memory whatever the chunk size.
BATCH_BYTES = 64 * 2**20
# Tuning queries: 1% of the vectors, within these bounds. Their exact top-10 costs
# (queries x corpus) inner products, work plain FAISS never does; 500 queries (5000
# neighbours) still measure recall@10 near 0.95 to about +-0.003 (one standard error if the
# neighbours were independent; a little more since they are not).
MIN_TUNING_QUERIES = 100
MAX_TUNING_QUERIES = 500
MAX_EF_SEARCH = 4096
# Tuning stops once doubling nprobe / efSearch adds less recall than this.
PLATEAU = 0.001


class _Corpus:
    """The chunks of a build, validated, with the row offsets of each chunk."""

    def __init__(self, chunks: Sequence[VectorChunk], dim: int, ids: np.ndarray,
                 counts: list[int]):
        self.chunks = list(chunks)
        self.dim = dim
        self.ids = ids  # (n,) every id, in chunk order; 8 bytes a vector
        self.counts = counts
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    @property
    def n(self) -> int:
        return int(self.offsets[-1])

    @property
    def batch_rows(self) -> int:
        return max(1, BATCH_BYTES // (self.dim * 4))

    def batches(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, vectors) batches of at most ``batch_rows`` rows, in order.

        A large chunk is handed to FAISS in place, as slices of its memory map: copying a
        million rows out first cost 4% of the add. Small chunks (512 rows by default) are
        packed into one batch instead: thousands of small FAISS calls each pay for starting
        and joining their OpenMP threads, which on a busy machine (threads waiting for a
        core) cost more than the arithmetic. Each chunk is mapped afresh and unmapped once
        its rows are passed on, so mapped pages never pile up in the process's RSS.
        """
        size = self.batch_rows
        pieces: list[tuple[np.ndarray, np.ndarray]] = []  # small chunks' rows, to be packed
        packed = 0
        for chunk in self.chunks:
            ids, vectors = chunk.load()
            if len(ids) >= size // 2:
                if pieces:
                    yield _concatenate(pieces)
                    pieces, packed = [], 0
                for start in range(0, len(ids), size):
                    yield ids[start:start + size], vectors[start:start + size]
                continue
            start = 0
            while start < len(ids):
                take = min(size - packed, len(ids) - start)
                pieces.append((ids[start:start + take], vectors[start:start + take]))
                packed, start = packed + take, start + take
                if packed == size:
                    yield _concatenate(pieces)
                    pieces, packed = [], 0
            del ids, vectors
        if pieces:
            yield _concatenate(pieces)

    def gather(self, rows: np.ndarray) -> np.ndarray:
        """Vectors at global row numbers ``rows`` (sorted), read chunk by chunk."""
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        bounds = np.searchsorted(rows, self.offsets)
        for i, chunk in enumerate(self.chunks):
            lo, hi = bounds[i], bounds[i + 1]
            if lo == hi:
                continue
            _, vectors = chunk.load()
            out[lo:hi] = vectors[rows[lo:hi] - self.offsets[i]]
            del vectors
        return out


def _concatenate(pieces: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([i for i, _ in pieces]), np.concatenate([v for _, v in pieces])


def validate_chunks(chunks: Sequence[VectorChunk], dim: int) -> tuple[np.ndarray, list[int]]:
    """Check every chunk before anything is built.

    Args:
        chunks: the chunks of the build.
        dim: the dimension every vector must have.

    Returns:
        (all ids in chunk order, the row count of each chunk).

    Raises:
        BuildError: a chunk is missing or unreadable, has the wrong dimension or dtype,
            NaN/inf values, a different number of ids and vectors, negative or duplicate ids.
    """
    if not chunks:
        raise BuildError("no chunk files to build from")
    all_ids, counts = [], []
    for chunk in chunks:
        ids = _validate_chunk(chunk, dim)
        all_ids.append(ids)
        counts.append(len(ids))
    ids = np.concatenate(all_ids)
    _check_unique(ids, chunks, counts)
    return ids, counts


def _validate_chunk(chunk: VectorChunk, dim: int) -> np.ndarray:
    name = chunk.vectors_path
    try:
        ids, vectors = chunk.load()
    except (OSError, ValueError) as exc:
        raise BuildError(f"{name}: cannot read chunk {chunk.number} ({exc}); "
                         "rerun the build to rewrite it") from exc
    if vectors.ndim != 2 or vectors.shape[1] != dim:
        raise BuildError(f"{name}: vectors have shape {vectors.shape}, expected (n, {dim}); "
                         "was it embedded with another model?")
    if vectors.dtype != np.float32:
        raise BuildError(f"{name}: vectors are {vectors.dtype}, expected float32")
    if ids.ndim != 1 or len(ids) != len(vectors):
        raise BuildError(f"{name}: {ids.shape[0] if ids.ndim else 0} ids in {chunk.ids_path.name}"
                         f" for {len(vectors)} vectors; the chunk is inconsistent, rewrite it")
    if not np.issubdtype(ids.dtype, np.integer):
        raise BuildError(f"{chunk.ids_path}: ids are {ids.dtype}, expected int64")
    step = max(1, BATCH_BYTES // (dim * 4))
    for start in range(0, len(vectors), step):
        block = vectors[start:start + step]
        if not np.isfinite(block).all():
            row = start + int(np.argmin(np.isfinite(block).all(axis=1)))
            raise BuildError(f"{name}: row {row} (id {int(ids[row])}) has NaN or inf values; "
                             "fix the input or the model that produced it")
    ids = np.array(ids, dtype=np.int64)
    if len(ids) and ids.min() < 0:
        raise BuildError(f"{chunk.ids_path}: negative id {int(ids.min())}; ids must be >= 0")
    return ids


def _check_unique(ids: np.ndarray, chunks: Sequence[VectorChunk], counts: list[int]) -> None:
    order = np.sort(ids)
    dup = np.flatnonzero(order[1:] == order[:-1])
    if len(dup) == 0:
        return
    value = int(order[dup[0]])
    rows = np.flatnonzero(ids == value)
    bounds = np.cumsum(counts)
    files = sorted({str(chunks[int(np.searchsorted(bounds, r, side="right"))].ids_path)
                    for r in rows})
    raise BuildError(f"id {value} appears {len(rows)} times (in {', '.join(files)}); "
                     "every vector needs a unique id")


def sample_rows(n: int, size: int, seed: int, exclude: np.ndarray | None = None) -> np.ndarray:
    """A seeded random sample of row numbers in ``[0, n)``, sorted, without repeats.

    Memory is proportional to the sample, not to ``n``, unless the sample is most of ``n``.

    Args:
        n: rows available.
        size: rows wanted (at most ``n``).
        seed: random seed; the same seed gives the same sample.
        exclude: row numbers to leave out (e.g. the training sample), when enough other
            rows remain; otherwise they are allowed.

    Returns:
        Sorted int64 row numbers.
    """
    rng = np.random.default_rng(seed)
    skip = np.empty(0, dtype=np.int64)
    if exclude is not None and n - len(exclude) >= size:
        skip = np.asarray(exclude, dtype=np.int64)
    size = min(size, n - len(skip))
    if 2 * (size + len(skip)) >= n:  # dense: a permutation is no larger than the sample
        pool = rng.permutation(n)
        return np.sort(pool[~np.isin(pool, skip)][:size]).astype(np.int64)
    picked = np.empty(0, dtype=np.int64)
    while len(picked) < size:
        draw = np.concatenate([picked, rng.integers(0, n, 2 * (size - len(picked)) + 16)])
        draw = draw[~np.isin(draw, skip)]
        _, first = np.unique(draw, return_index=True)
        picked = draw[np.sort(first)][:size]  # keep draw order: the earliest draws win
    return np.sort(picked)


def _empty_index(choice: LayoutChoice, dim: int, seed: int) -> faiss.Index:
    """The FAISS index for ``choice``, wrapped so that it stores the chunk files' ids."""
    index = faiss.index_factory(dim, choice.factory, faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.cp.seed = seed
        ivf.cp.spherical = True  # unit vectors searched by inner product
        ivf = faiss.downcast_index(ivf)
        if isinstance(ivf, faiss.IndexIVFPQ):
            # polysemous codes only serve Hamming pre-filtering, which search never uses
            ivf.do_polysemous_training = False
            ivf.pq.cp.seed = seed
    top = faiss.downcast_index(index)
    takes_ids = isinstance(top, faiss.IndexIDMap | faiss.IndexIVF) or (
        isinstance(top, faiss.IndexPreTransform)
        and isinstance(faiss.downcast_index(top.index), faiss.IndexIVF))
    return index if takes_ids else faiss.IndexIDMap2(index)


def _reserve(index: faiss.Index, count: int) -> None:
    """Size flat storage for ``count`` vectors up front, so growth never copies it.

    A std::vector grown add by add doubles its capacity: the last growth holds the old and
    the new buffer at once, up to 2.5x the final size. Resizing to the final size and back to
    zero keeps the capacity and lets every add write in place.
    """
    inner = faiss.downcast_index(index)
    if isinstance(inner, faiss.IndexIDMap):
        inner = faiss.downcast_index(inner.index)
    if isinstance(inner, faiss.IndexHNSW):
        inner = faiss.downcast_index(inner.storage)
    if isinstance(inner, faiss.IndexFlatCodes) and inner.ntotal == 0:
        inner.codes.resize(count * inner.code_size)
        inner.codes.resize(0)


@dataclass
class TrainedIndex:
    """An empty index trained for a corpus of ``n`` vectors, and the layout choice behind it."""

    choice: LayoutChoice
    index: faiss.Index
    n: int
    seconds: float


def train_index(chunks: Sequence[VectorChunk], dim: int, *, index: str = "auto",
                memory_budget: int | None = None, target_recall: float = 0.95,
                seed: int = 0) -> TrainedIndex:
    """Choose the layout and train it, before the ids are known.

    Training reads vectors only, so a caller can store the documents (which give the ids)
    while FAISS trains; :func:`build_index` then takes the result as ``trained``. Arguments
    are those of :func:`build_index`.
    """
    counts = [len(chunk.load()[1]) for chunk in chunks]
    return _choose_and_train(_Corpus(chunks, dim, np.empty(0, np.int64), counts), index,
                             memory_budget, target_recall, seed)


def _choose_and_train(corpus: _Corpus, index: str, memory_budget: int | None,
                      target_recall: float, seed: int) -> TrainedIndex:
    started = time.perf_counter()
    choice = choose_layout(corpus.n, corpus.dim, memory_budget, index, target_recall,
                           working_bytes=working_bytes(corpus.dim))
    log.info("%s", choice.reason)
    trained = _empty_index(choice, corpus.dim, seed)
    if not trained.is_trained:
        rows = sample_rows(corpus.n, choice.train_size, seed)
        sample = corpus.gather(rows)  # (train_size, dim)
        log.info("training %s on %d vectors sampled across %d chunks", choice.factory,
                 len(rows), len(corpus.chunks))
        trained.train(sample)
        log.info("trained in %.1fs", time.perf_counter() - started)
    return TrainedIndex(choice, trained, corpus.n, time.perf_counter() - started)


def check_shard_settings(shards: int | None, max_shard_bytes: int | None = None) -> None:
    """Raise :class:`BuildError` for shard settings no build can use, before any work."""
    _shard_count(shards, max_shard_bytes, 0)


def _shard_count(shards: int | None, max_shard_bytes: int | None, index_bytes: int) -> int:
    count = 1 if shards is None else shards
    if count < 1:
        raise BuildError(f"--shards must be at least 1, got {count}")
    if max_shard_bytes is not None:
        if max_shard_bytes <= 0:
            raise BuildError(f"shard size limit must be positive, got {max_shard_bytes}")
        count = max(count, math.ceil(index_bytes / max_shard_bytes))
    return count


def _add(indexes: list[faiss.Index], corpus: _Corpus,
         progress: Callable[[int], None] | None) -> None:
    n_shards = len(indexes)
    added = 0
    for ids, vectors in corpus.batches():
        if n_shards == 1:
            indexes[0].add_with_ids(vectors, ids)
        else:
            owner = ids % n_shards
            for s, index in enumerate(indexes):
                mask = owner == s
                if mask.any():
                    index.add_with_ids(np.ascontiguousarray(vectors[mask]), ids[mask])
        added += len(ids)
        if progress is not None:
            progress(added)


def exact_topk(corpus: _Corpus, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top ``k`` by inner product over all chunk files, one batch at a time."""
    heap = faiss.ResultHeap(len(queries), k, keep_max=True)
    for ids, vectors in corpus.batches():
        scores, rows = faiss.knn(queries, vectors, min(k, len(vectors)),
                                 metric=faiss.METRIC_INNER_PRODUCT)
        heap.add_result(scores, np.where(rows >= 0, ids[np.maximum(rows, 0)], -1))
    heap.finalize()
    return heap.D, heap.I


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each query's true top ``k`` ids that ``found`` contains.

    Args:
        found: (nq, k) ids returned by the index under test (-1 for missing).
        truth: (nq, k) exact ids.

    Returns:
        recall@k in [0, 1].
    """
    hits = (found[:, :, None] == truth[:, None, :]) & (found[:, :, None] >= 0)
    return float(hits.any(axis=1).sum() / truth.size)


def _knob(index: faiss.Index, kind: str) -> tuple[str, list[int]] | None:
    """The search-time parameter to tune and its candidate values, cheapest first."""
    if faiss.try_extract_index_ivf(index) is not None:
        nlist = faiss.extract_index_ivf(index).nlist
        return "nprobe", [2**i for i in range(int(math.log2(nlist)) + 1)] + (
            [nlist] if nlist & (nlist - 1) else [])
    if kind == "hnsw":
        return "efSearch", [2**i for i in range(4, int(math.log2(MAX_EF_SEARCH)) + 1)]
    return None


def _tune(indexes: list[faiss.Index], corpus: _Corpus, choice: LayoutChoice, kind: str,
          target: float, seed: int) -> tuple[str, float]:
    """Smallest nprobe / efSearch reaching ``target`` recall@10 on sample queries."""
    if kind == "flat":
        return "", 1.0
    nq = min(corpus.n, max(MIN_TUNING_QUERIES, min(MAX_TUNING_QUERIES, corpus.n // 100)))
    train_rows = sample_rows(corpus.n, choice.train_size, seed) if choice.train_size else None
    queries = corpus.gather(sample_rows(corpus.n, nq, seed + 1, exclude=train_rows))
    k = min(K_EVAL, corpus.n)
    _, truth = exact_topk(corpus, queries, k)
    knob = _knob(indexes[0], kind)
    if knob is None:
        recall = recall_at_k(search_shards(indexes, queries, k)[1], truth)
        log.info("%s has no search parameter to tune: recall@%d %.3f", choice.factory, k, recall)
        return "", recall
    name, values = knob
    space = faiss.ParameterSpace()
    best = ("", -1.0)
    for value in values:
        params = f"{name}={value}"
        for index in indexes:
            space.set_index_parameters(index, params)
        recall = recall_at_k(search_shards(indexes, queries, k)[1], truth)
        log.info("tuning %s: %s → recall@%d %.4f", choice.factory, params, k, recall)
        if recall >= target:
            return params, recall
        if recall <= best[1] + PLATEAU:
            break  # quantisation error dominates: larger values only cost time
        best = (params, recall)
    log.warning("%s reaches recall@%d %.3f at best (%s), below the target %.2f; use a larger "
                "--memory-budget or a layout with more bytes per vector",
                choice.factory, k, best[1], best[0], target)
    for index in indexes:
        space.set_index_parameters(index, best[0])
    return best


def _write(indexes: list[faiss.Index], out_dir: Path) -> list[dict[str, Any]]:
    out_dir.mkdir(parents=True, exist_ok=True)
    shards = []
    for number, index in enumerate(indexes):
        path = out_dir / f"shard-{number:04d}.faiss"
        write_atomic_with(path, lambda tmp, index=index: faiss.write_index(index, tmp))
        shards.append({"file": path.name, "count": int(index.ntotal),
                       "sha256": sha256_file(path)})
    return shards


def working_bytes(dim: int) -> int:
    """Memory a build needs besides the index and the training sample.

    One batch copied out of a memory-mapped chunk file, the mapped pages of that batch, and
    the tuning queries. Pass it to :func:`indexing.layouts.choose_layout` to predict the
    layout a build will choose before the chunk files exist.

    Args:
        dim: vector dimension.

    Returns:
        Bytes.
    """
    batch_rows = max(1, BATCH_BYTES // (dim * 4))
    return 2 * batch_rows * dim * 4 + MAX_TUNING_QUERIES * dim * 4


def build_index(
    chunks: list[VectorChunk],
    dim: int,
    out_dir: Path,
    *,
    index: str = "auto",
    memory_budget: int | None = None,
    target_recall: float = 0.95,
    shards: int | None = None,
    max_shard_bytes: int | None = None,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
    trained: TrainedIndex | None = None,
) -> dict[str, Any]:
    """Build an index from chunks and write its shards into ``out_dir``.

    Args:
        chunks: chunk files or input rows giving (ids, unit-normalised float32 vectors).
        dim: vector dimension.
        out_dir: folder for ``shard-NNNN.faiss`` (created; files written atomically).
        index: ``auto``, ``flat``, ``hnsw``, ``ivf``, ``ivfpq`` or a FAISS factory string.
        memory_budget: bytes the build may use (see :func:`indexing.layouts.parse_bytes`);
            None for no limit.
        target_recall: recall@10 that tuning aims for.
        shards: number of shards; None for one unless ``max_shard_bytes`` asks for more.
        max_shard_bytes: split into as many shards as keep each under this estimate.
        seed: seed of the training and tuning samples (and of k-means).
        progress: called with the number of vectors added so far after each batch.
        trained: the result of :func:`train_index` on these chunks, when training ran
            earlier (beside the documents' ingest); None to choose and train here.

    Returns:
        Manifest fields: layout, kind, params, search_params, recall_at_10, count, dim,
        metric, shards (file, count, sha256), index_bytes, build_seconds, phase_seconds
        (validate, train, add, tune, write), reason, train_size, faiss_version.

    Raises:
        BuildError: a chunk file is bad (named in the message) or the shard settings are.
        LayoutError: no layout fits the budget or the factory string is unknown.
    """
    clock = _Clock()
    check_shard_settings(shards, max_shard_bytes)
    ids, counts = validate_chunks(chunks, dim)
    corpus = _Corpus(chunks, dim, ids, counts)
    clock.lap("validate")
    if trained is None:
        trained = _choose_and_train(corpus, index, memory_budget, target_recall, seed)
        clock.lap("train")
    elif trained.n != corpus.n:
        raise BuildError(f"the index was trained for {trained.n} vectors, the chunks hold {corpus.n}")
    else:
        clock.lap("train", trained.seconds)  # ran before this call, beside other work
    choice = trained.choice
    n_shards = _shard_count(shards, max_shard_bytes, choice.index_bytes)
    kind, _ = classify(trained.index)
    indexes = [trained.index] + [faiss.clone_index(trained.index) for _ in range(n_shards - 1)]
    shard_counts = np.bincount(corpus.ids % n_shards, minlength=n_shards)
    for shard, count in zip(indexes, shard_counts, strict=True):
        _reserve(shard, int(count))
    log.info("adding %d vectors from %d chunks into %d shard(s)", corpus.n, len(chunks),
             n_shards)
    _add(indexes, corpus, progress)
    clock.lap("add")
    search_params, recall = _tune(indexes, corpus, choice, kind, target_recall, seed)
    clock.lap("tune")
    written = _write(indexes, out_dir)
    clock.lap("write")
    index_bytes = sum((out_dir / s["file"]).stat().st_size for s in written)
    log.info("built %s: %d vectors, %d shard(s), %s, recall@10 %.3f (%s) in %.1fs",
             choice.factory, corpus.n, n_shards, format_bytes(index_bytes), recall,
             search_params or "exact", clock.total())
    return {
        "layout": choice.factory, "kind": kind, "params": dict(choice.params),
        "search_params": search_params, "recall_at_10": round(recall, 4),
        "count": corpus.n, "dim": dim, "metric": "ip", "shards": written,
        "index_bytes": index_bytes, "build_seconds": round(clock.total(), 3),
        "phase_seconds": clock.laps, "reason": choice.reason,
        "train_size": choice.train_size, "faiss_version": faiss.__version__,
    }


def update_index(
    base: list[faiss.Index],
    base_manifest: dict[str, Any],
    choice: LayoutChoice,
    out_dir: Path,
    *,
    remove: np.ndarray,
    add_ids: np.ndarray,
    add_vectors: np.ndarray,
    chunks: list[VectorChunk] | None,
    target_recall: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """A new version from an old one's index: ``remove`` ids dropped, vectors added, retuned.

    What a compaction does when the layout stays what the build chose: no training, no
    pass over the unchanged vectors except the tuning's exact neighbours.

    Args:
        base: the old version's shards, read into memory (they are modified).
        base_manifest: the old version's manifest.
        choice: the layout :func:`indexing.layouts.choose_layout` picks for the new size; its
            factory must be the old one's.
        out_dir: folder of the new version's shards.
        remove: ids to drop (tombstones of the old version).
        add_ids: (n,) ids to add, each to shard ``id % shards`` as :func:`build_index` does.
        add_vectors: (n, dim) their unit float32 vectors.
        chunks: every live vector of the new version, to tune ``nprobe`` / ``efSearch`` on
            (None: keep the old version's setting and recall).
        target_recall: recall@10 that tuning aims for.
        seed: seed of the tuning sample.

    Returns:
        Manifest fields, as :func:`build_index` returns them.
    """
    clock = _Clock()
    dim = int(base_manifest["dim"])
    removed = 0
    if len(remove):
        selector = faiss.IDSelectorBatch(np.ascontiguousarray(remove, dtype=np.int64))
        removed = sum(int(shard.remove_ids(selector)) for shard in base)
    if removed != len(remove):
        log.warning("%d of %d tombstones were not in the index", len(remove) - removed, len(remove))
    clock.lap("remove")
    owner = add_ids % len(base)
    for number, shard in enumerate(base):
        mask = owner == number
        if mask.any():
            shard.add_with_ids(np.ascontiguousarray(add_vectors[mask], dtype=np.float32),
                               np.ascontiguousarray(add_ids[mask], dtype=np.int64))
    clock.lap("add")
    kind, _ = classify(base[0])
    params, recall = base_manifest.get("search_params") or "", float(base_manifest["recall_at_10"])
    if chunks is not None:
        ids, counts = validate_chunks(chunks, dim)
        params, recall = _tune(base, _Corpus(chunks, dim, ids, counts), choice, kind,
                               target_recall, seed)
    clock.lap("tune")
    written = _write(base, out_dir)
    clock.lap("write")
    count = sum(int(shard.ntotal) for shard in base)
    log.info("updated %s: -%d +%d vectors → %d, recall@10 %.3f (%s) in %.1fs", choice.factory,
             removed, len(add_ids), count, recall, params or "exact", clock.total())
    return {
        **{key: base_manifest.get(key) for key in ("layout", "kind", "params", "train_size",
                                                   "reason")},
        "search_params": params, "recall_at_10": round(recall, 4), "count": count, "dim": dim,
        "metric": "ip", "shards": written,
        "index_bytes": sum((out_dir / s["file"]).stat().st_size for s in written),
        "build_seconds": round(clock.total(), 3), "phase_seconds": clock.laps,
        "faiss_version": faiss.__version__,
    }


class _Clock:
    """Seconds spent in each phase of a build, for the manifest and the benchmark."""

    def __init__(self) -> None:
        self.started = self.last = time.perf_counter()
        self.laps: dict[str, float] = {}
        self.elsewhere = 0.0  # seconds of phases run before the clock started

    def lap(self, name: str, seconds: float | None = None) -> None:
        """End phase ``name`` now, or record ``seconds`` it took elsewhere."""
        now = time.perf_counter()
        self.laps[name] = round(now - self.last if seconds is None else seconds, 3)
        self.last = now
        self.elsewhere += 0.0 if seconds is None else seconds

    def total(self) -> float:
        return time.perf_counter() - self.started + self.elsewhere


__all__ = ["BuildError", "LayoutError", "TrainedIndex", "build_index", "check_shard_settings",
           "exact_topk", "recall_at_k", "sample_rows", "search_shards", "train_index",
           "update_index", "validate_chunks", "working_bytes"]
