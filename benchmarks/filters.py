"""Benchmark: filtered dense search, recall@10 against brute force over the matching set and
latency beside unfiltered search.

Why: issue 8 filters inside FAISS with an ID selector (exact search over the matches when
they are few, more IVF lists probed when they are a small share) and asks that whenever k
documents match, k come back at the collection's target recall.

Setup: N clustered 384-d unit vectors (``faiss_build.synthetic``) in a Parquet file whose
other columns become metadata: ``half`` (i % 2), ``twentieth`` (i % 20), ``bucket`` (i %
1000), so the filters ``{"half": 1}``, ``{"twentieth": 3}`` and ``{"bucket": 7}`` match 50%,
5% and 0.1% independently of where the vectors lie. A collection is created with those
fields indexed and built with ``index build --vectors`` once per layout (``auto``, Flat at
this size, and ``ivf``). Queries are held-out vectors from the same generator, searched one
at a time through ``Searcher.dense_by_vectors`` (the dense path after the model's encoder:
filter compiled to SQL, matching ids, selector, FAISS, passages collapsed to documents).

Timing alternates unfiltered and filtered queries in rounds; "cold" clears the searcher's
per-snapshot cache of matching ids before every query (what the first query after a write
pays: the SQL), "warm" does not (repeated filters between writes).

Usage::

    python benchmarks/filters.py                 # 100k vectors, 200 queries
    python benchmarks/filters.py --n 20000 --queries 50
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from faiss_build import DIM, synthetic  # noqa: E402

from embedsvc.collection import create_collection, open_store  # noqa: E402
from embedsvc.encoders import DEFAULT_MODEL, unpack_default_model  # noqa: E402
from embedsvc.search.filters import compile_filter  # noqa: E402
from embedsvc.service import local_searcher  # noqa: E402
from embedsvc.settings import Settings  # noqa: E402
from indexing.job import BuildJob, BuildOptions  # noqa: E402

K = 10
FILTERS = {"50%": ({"half": 1}, lambda i: i % 2 == 1),
           "5%": ({"twentieth": 3}, lambda i: i % 20 == 3),
           "0.1%": ({"bucket": 7}, lambda i: i % 1000 == 7)}


def make_input(work: Path, n: int) -> tuple[Path, np.ndarray]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    clusters = max(16, n // 1000)
    vectors = np.concatenate([synthetic(min(50_000, n - s), DIM, clusters, 0, s // 50_000)
                              for s in range(0, n, 50_000)])
    rows = np.arange(n)
    table = pa.table({"id": [f"v{i}" for i in range(n)], "vector": list(vectors),
                      "half": rows % 2, "twentieth": rows % 20, "bucket": rows % 1000})
    pq.write_table(table, work / "v.parquet")
    return work / "v.parquet", vectors


def build(work: Path, models: Path, parquet: Path, layout: str) -> Settings:
    home = work / f"home-{layout}"
    (home / "models").mkdir(parents=True)
    (home / "models" / "_bundled").symlink_to(models / "_bundled", target_is_directory=True)
    settings = Settings(home=home)
    create_collection(settings.collections_dir, "f", DEFAULT_MODEL, ["half", "twentieth", "bucket"])
    BuildJob(settings, "f", None, BuildOptions(vectors=parquet, index=layout)).run()
    return settings


def truth(vectors: np.ndarray, queries: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Exact top-k row numbers among ``rows`` for each query."""
    scores = queries @ vectors[rows].T
    return rows[np.argsort(-scores, axis=1)[:, :K]]


def measure(settings: Settings, vectors: np.ndarray, queries: np.ndarray,
            rounds: int) -> list[dict[str, Any]]:
    searcher = local_searcher(settings, "f")
    view = searcher.view()
    _, store = open_store(settings.collections_dir, "f")
    row_of = {rowid: int(doc[1:]) for rowid, doc in store.conn.execute("SELECT rowid, id FROM documents")}

    def run(where: Any, cold: bool) -> tuple[list[float], np.ndarray]:
        times, found = [], []
        for q in queries:
            if cold:
                view.cache.clear()
            started = time.perf_counter()
            ranked = searcher.dense_by_vectors(view, q[None, :], K, where)[0]
            times.append(time.perf_counter() - started)
            found.append([row_of[doc] for doc, _, _ in ranked] + [-1] * (K - len(ranked)))
        return times, np.array(found)

    n = len(vectors)
    results = []
    for label, (raw, match) in FILTERS.items():
        where = compile_filter(raw)
        rows = np.flatnonzero(match(np.arange(n)))
        exact = truth(vectors, queries, rows)
        timings: dict[str, list[float]] = {"unfiltered": [], "warm": [], "cold": []}
        for _ in range(rounds):  # alternating, so load from elsewhere falls on all alike
            timings["unfiltered"] += run(None, False)[0]
            warm_times, found = run(where, False)
            timings["warm"] += warm_times
            timings["cold"] += run(where, True)[0]
        recall = np.mean([len(set(f) & set(t)) / K for f, t in zip(found, exact, strict=True)])
        complete = np.mean([(f >= 0).sum() == K for f in found])
        results.append({"filter": label, "matching": len(rows), "recall": recall,
                        "complete": complete, **{name: _percentiles(t) for name, t in timings.items()}})
    return results


def _percentiles(times: list[float]) -> dict[str, float]:
    ms = sorted(1000 * t for t in times)
    return {"p50": statistics.median(ms), "p99": ms[min(len(ms) - 1, int(0.99 * len(ms)))]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--layouts", default="auto,ivf")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bench-filters-") as tmp:
        work = Path(tmp)
        unpack_default_model(work / "models")
        parquet, vectors = make_input(work, args.n)
        queries = synthetic(args.queries, DIM, max(16, args.n // 1000), 0, 10**6)
        for layout in args.layouts.split(","):
            settings = build(work, work / "models", parquet, layout)
            manifest = local_searcher(settings, "f").view().index.manifest
            print(f"\n{args.n} vectors, --index {layout} → {manifest['layout']} "
                  f"({manifest['search_params'] or 'exact'}, unfiltered recall@10 "
                  f"{manifest['recall_at_10']:.3f}); target recall 0.95; {args.queries} queries, "
                  f"{args.rounds} rounds, one query per call")
            print("| filter | matching | recall@10 | k returned | unfiltered p50/p99 ms | "
                  "filtered warm p50/p99 ms | filtered cold p50/p99 ms | warm/unfiltered p50 |")
            print("|---|---|---|---|---|---|---|---|")
            for r in measure(settings, vectors, queries, args.rounds):
                u, w, c = r["unfiltered"], r["warm"], r["cold"]
                print(f"| {r['filter']} | {r['matching']} | {r['recall']:.3f} | "
                      f"{r['complete']:.0%} | {u['p50']:.2f} / {u['p99']:.2f} | "
                      f"{w['p50']:.2f} / {w['p99']:.2f} | {c['p50']:.2f} / {c['p99']:.2f} | "
                      f"{w['p50'] / u['p50']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
