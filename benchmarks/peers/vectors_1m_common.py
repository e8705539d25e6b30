"""The child side of ``benchmarks/peers/vectors_1m.py``: one system's build or search phase.

Each system has a file ``vectors_1m_<system>.py`` run by that system's own python (a peer
venv, or the project's for embedsvc and raw FAISS). It defines ``build(data, out, opts)``
and ``open_index(out, opts)`` and ends with ``main(build, open_index)``; this module does
the rest, with numpy and the standard library only (it is imported in every venv):

- ``--phase build``: ``build`` reads ``data/vectors.npy`` (:func:`load_vectors` maps it;
  systems that take batches are fed from the mapping) and writes the system's index under
  ``--out`` the way the system persists it;
- ``--phase search``: ``open_index`` loads it (the way a service starts), then the
  system's search parameter is swept upward, one setting at a time, each setting timed
  over every query sent one at a time with k=10, until recall@10 against the exact top-10
  reaches ``--target``; at that setting the single-query pass is repeated (best of
  ``--rounds``) and the batch API, if the system has one, is timed too.

The result is one JSON object written to ``--result`` (stdout is left to the system's own
chatter); the parent measures wall time and peak RSS of the whole process.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np

log = logging.getLogger("benchmarks.peers.vectors_1m")

K = 10
WARM_QUERIES = 50  # sent once before the sweep, untimed: lazy loads, caches, allocators
PLATEAU = 0.002  # a recall@10 gain below this is no gain (sweeps stop on a plateau)


class Searchable(Protocol):
    """What a system's ``open_index`` returns."""

    # groups of settings, each group cheapest first; the sweep walks them in order and
    # leaves a group early when its recall stops growing (e.g. LanceDB's refine factors)
    settings: list[list[Any]]

    def set(self, setting: Any) -> None:
        """Use ``setting`` (an efSearch, an nprobe, …) for the following searches."""

    def one(self, query: np.ndarray) -> np.ndarray:
        """Row numbers of the top ``K`` for one (dim,) query, best first."""

    def batch(self, queries: np.ndarray) -> np.ndarray | None:
        """(nq, K) row numbers through the system's batch API, or None when it has none."""

    # optional: ``extra(queries, truth, rounds) -> dict``, more timings, run after the sweep


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int = K) -> float:
    """Mean share of each query's exact top ``k`` that ``found`` holds in its first ``k``."""
    hits = sum(len(np.intersect1d(f[:k], t[:k])) for f, t in zip(found, truth, strict=True))
    return hits / (k * len(truth))


def grow(start: int, stop: int, factor: float = 1.5) -> list[int]:
    """Integer settings from ``start`` to ``stop`` (both included), each about ``factor``
    times the one before: search cost grows roughly linearly in efSearch and nprobe."""
    out, value = [], max(1, start)
    while value < stop:
        out.append(value)
        value = max(value + 1, round(value * factor))
    return [*out, stop]


def as_rows(ids: Iterable[Any], k: int = K) -> np.ndarray:
    """(k,) int64 row numbers, -1 padded, from whatever ids a system returned."""
    out = np.full(k, -1, np.int64)
    got = np.asarray(list(ids)[:k], dtype=np.int64)
    out[: len(got)] = got
    return out


def time_single(index: Searchable, q: np.ndarray) -> tuple[float, np.ndarray]:
    """Every query alone, one after another, as a service answers them: (seconds, ids)."""
    found = np.empty((len(q), K), np.int64)
    start = time.perf_counter()
    for i in range(len(q)):
        found[i] = index.one(q[i])
    return time.perf_counter() - start, found


def time_batch(index: Searchable, q: np.ndarray) -> tuple[float, np.ndarray] | None:
    start = time.perf_counter()
    found = index.batch(q)
    if found is None:
        return None
    return time.perf_counter() - start, np.asarray(found, np.int64)


def sweep(index: Searchable, q: np.ndarray, truth: np.ndarray, target: float,
          rounds: int) -> dict[str, Any]:
    """The first setting reaching ``target`` recall@10, its queries/s alone and in batch.

    Args:
        index: the opened system.
        q: (nq, dim) float32 queries.
        truth: (nq, K) exact top-K row numbers.
        target: recall@10 to reach.
        rounds: timed passes at the chosen setting (best kept; the sweep's pass is one).

    Returns:
        ``sweep`` (setting, recall, queries/s per setting tried), ``setting``, ``recall``,
        ``qps`` (single queries), ``batch_qps`` and ``batch_recall`` (None without a batch
        API), ``reached`` (whether ``target`` was reached; if not, the best setting is used).
    """
    tried: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    chosen: dict[str, Any] | None = None
    # settings without a recall gain of PLATEAU before a group is left: one when another
    # group follows (LanceDB: nprobes beyond what matters at this refine factor), three
    # otherwise (a layout whose quantisation caps its recall)
    patience = 1 if len(index.settings) > 1 else 3
    for group in index.settings:
        recalls: list[float] = []
        for setting in group:
            index.set(setting)
            seconds, found = time_single(index, q)
            row = {"setting": setting, "recall": recall_at_k(found, truth),
                   "qps": len(q) / seconds}
            tried.append(row)
            log.info("setting %s: recall@10 %.4f, %.0f queries/s", setting, row["recall"], row["qps"])
            if best is None or row["recall"] > best["recall"]:
                best = row
            if row["recall"] >= target:
                chosen = row
                break
            recalls.append(row["recall"])
            if len(recalls) > patience and recalls[-1] - recalls[-1 - patience] < PLATEAU:
                log.info("recall stopped growing (%d settings without +%g); leaving this "
                         "group of settings", patience, PLATEAU)
                break
        if chosen is not None:
            break
    assert best is not None, "a system offers at least one setting"
    use = chosen or best
    index.set(use["setting"])
    qps = use["qps"]
    for _ in range(rounds - 1):
        seconds, _ = time_single(index, q)
        qps = max(qps, len(q) / seconds)
    batch_qps = batch_recall = None
    for _ in range(rounds):
        timed = time_batch(index, q)
        if timed is None:
            break
        batch_qps = max(batch_qps or 0.0, len(q) / timed[0])
        batch_recall = recall_at_k(timed[1], truth)
    return {"sweep": tried, "setting": use["setting"], "recall": use["recall"], "qps": qps,
            "batch_qps": batch_qps, "batch_recall": batch_recall, "reached": chosen is not None}


def load_vectors(data: Path) -> np.ndarray:
    """(n, dim) float32 unit rows, memory-mapped: a batch is read when it is used."""
    return np.load(data / "vectors.npy", mmap_mode="r")


def batches(vectors: np.ndarray, rows: int) -> Iterator[tuple[int, np.ndarray]]:
    """(first row number, (rows, dim) float32 in memory) over the mapped vectors."""
    for start in range(0, len(vectors), rows):
        yield start, np.ascontiguousarray(vectors[start:start + rows], dtype=np.float32)


def main(build: Callable[[Path, Path, dict[str, Any]], dict[str, Any]],
         open_index: Callable[[Path, dict[str, Any]], Searchable]) -> None:
    """Run the phase the command line names and write its JSON result."""
    p = argparse.ArgumentParser()
    p.add_argument("--phase", choices=("build", "search"), required=True)
    p.add_argument("--data", required=True, help="folder of vectors.npy, queries.npy, truth.npy")
    p.add_argument("--out", required=True, help="the system's index folder")
    p.add_argument("--result", required=True, help="where the JSON result goes")
    p.add_argument("--opts", default="{}", help="system options, JSON")
    p.add_argument("--target", type=float, default=0.95)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("faiss.loader", "httpx", "chromadb.telemetry"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    data, out, opts = Path(args.data), Path(args.out), json.loads(args.opts)
    start = time.perf_counter()
    if args.phase == "build":
        out.mkdir(parents=True, exist_ok=True)
        info = build(data, out, opts)
        result = {**info, "build_seconds": time.perf_counter() - start}
    else:
        q = np.load(data / "queries.npy")
        truth = np.load(data / "truth.npy")
        index = open_index(out, opts)
        index.set(index.settings[0][0])
        for i in range(min(WARM_QUERIES, len(q))):
            index.one(q[i])
        opened = time.perf_counter() - start
        log.info("opened and warmed in %.1fs; sweeping", opened)
        result = {**sweep(index, q, truth, args.target, args.rounds), "open_seconds": opened,
                  "info": getattr(index, "info", {})}
        extra = getattr(index, "extra", None)  # a system's own breakdown, at the chosen setting
        if extra is not None:
            result["extra"] = extra(q, truth, args.rounds)
    Path(args.result).write_text(json.dumps(result))
