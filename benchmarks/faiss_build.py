"""Benchmark: embedsvc's chunked FAISS build against a plain FAISS script, same layout.

Why: the build streams chunk files to keep memory bounded by a chunk, validates, tunes and
writes atomically; this measures what that costs against the plain way (load everything,
train, add, search) and whether peak memory stays flat as the corpus grows.

Each phase runs in its own child process, one at a time, so ``ru_maxrss`` is the peak of
that phase alone:

1. ``generate``: clustered synthetic unit vectors written as chunk files of ``--chunk``
   rows (streamed: one chunk in memory), plus held-out queries and their exact top-10.
2. ``embedsvc``: ``build_index(..., index="auto", memory_budget=--budget)``.
3. ``plain``: the same factory string with plain FAISS: load all vectors, train on a
   random sample of the same size, add in one call, write.
4. ``search``: both indexes with the same search parameters, timed in alternating rounds
   (queries/s, recall@10 on the held-out queries against exact top-10).
5. ``base``: import numpy, faiss and embedsvc and exit: the fixed base of a process.

This calls ``build_index`` directly on 50,000-row chunk files; the whole CLI path
(``embedsvc index build --vectors``: SQLite ingest, 512-row chunk files, model, versions)
is measured by ``benchmarks/vectors_build.py``.

Usage::

    python benchmarks/faiss_build.py --n 200000
    python benchmarks/faiss_build.py --sizes 200000,1000000    # side by side
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from indexing.build import build_index, recall_at_k, search_shards  # noqa: E402
from indexing.chunkfiles import ChunkFile, write_chunk  # noqa: E402
from indexing.layouts import format_bytes, parse_bytes  # noqa: E402

log = logging.getLogger("benchmarks.faiss_build")

DIM = 384
K = 10
INTRINSIC = 32  # dimensions of within-cluster variation, as in real embeddings


def _centres(dim: int, clusters: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    basis = (rng.standard_normal((INTRINSIC, dim)) / np.sqrt(dim)).astype(np.float32)
    return centres, basis


def synthetic(rows: int, dim: int, clusters: int, seed: int, part: int) -> np.ndarray:
    """(rows, dim) unit vectors: cluster centre + low-rank variation + a little noise.

    Args:
        rows: vectors to make.
        dim: dimension.
        clusters: number of cluster centres (shared by every part of one seed).
        seed: data set seed.
        part: which part (chunk) of the data set; each part has its own random stream.

    Returns:
        float32 unit vectors.
    """
    centres, basis = _centres(dim, clusters, seed)
    rng = np.random.default_rng([seed, part])
    labels = rng.integers(0, clusters, rows)
    shape = rng.standard_normal((rows, INTRINSIC), dtype=np.float32) @ basis  # (rows, dim)
    noise = rng.standard_normal((rows, dim), dtype=np.float32) / np.sqrt(dim)
    x = centres[labels] + 0.12 * shape + 0.2 * noise
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _peak_rss() -> int:
    """This process's peak resident set size in bytes (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def phase_generate(work: Path, n: int, chunk: int, queries: int, seed: int) -> dict[str, Any]:
    """Write chunk files and held-out queries with their exact top-10, one chunk at a time."""
    clusters = max(16, n // 1000)
    q = synthetic(queries, DIM, clusters, seed, part=10**6)
    heap = faiss.ResultHeap(queries, K, keep_max=True)
    started = time.perf_counter()
    for number, start in enumerate(range(0, n, chunk)):
        rows = min(chunk, n - start)
        x = synthetic(rows, DIM, clusters, seed, part=number)
        ids = np.arange(start, start + rows, dtype=np.int64)
        write_chunk(work / "chunks", number, ids, x)
        scores, local = faiss.knn(q, x, K, metric=faiss.METRIC_INNER_PRODUCT)
        heap.add_result(scores, ids[local])
    heap.finalize()
    np.save(work / "queries.npy", q)
    np.save(work / "truth.npy", heap.I)
    return {"seconds": time.perf_counter() - started, "chunks": number + 1,
            "peak_rss": _peak_rss()}


def _chunks(work: Path) -> list[ChunkFile]:
    files = sorted((work / "chunks").glob("chunk-*.ids.npy"))
    return [ChunkFile(work / "chunks", int(f.name.split("-")[1].split(".")[0])) for f in files]


def phase_embedsvc(work: Path, budget: int, seed: int) -> dict[str, Any]:
    """embedsvc's build, exactly as the CLI would call it."""
    manifest = build_index(_chunks(work), DIM, work / "index", index="auto",
                           memory_budget=budget, seed=seed)
    return {"manifest": manifest, "peak_rss": _peak_rss()}


def _timed(search: Any, q: np.ndarray) -> tuple[float, np.ndarray]:
    """Seconds to search all queries in batches of 100, and the ids found."""
    started = time.perf_counter()
    found = np.vstack([search(q[i:i + 100]) for i in range(0, len(q), 100)])
    return time.perf_counter() - started, found


def phase_search(work: Path, rounds: int = 3) -> dict[str, Any]:
    """Search the held-out queries with embedsvc's shards and with the plain index.

    The two are timed in alternating rounds (best of ``rounds`` each) so that load from
    other processes on the machine falls on both alike.
    """
    manifest = json.loads((work / "manifest.json").read_text())
    params = manifest["search_params"]
    shards = [faiss.read_index(str(work / "index" / s["file"])) for s in manifest["shards"]]
    plain = faiss.read_index(str(work / "plain.faiss"))
    for index in [*shards, plain]:
        if params:
            faiss.ParameterSpace().set_index_parameters(index, params)
    q, truth = np.load(work / "queries.npy"), np.load(work / "truth.npy")
    paths = {"embedsvc": lambda b: search_shards(shards, b, K)[1],
             "plain": lambda b: plain.search(b, K)[1]}
    return time_alternating(paths, q, truth, rounds)


def time_alternating(paths: dict[str, Any], q: np.ndarray, truth: np.ndarray,
                     rounds: int) -> dict[str, dict[str, float]]:
    """Best-of-``rounds`` queries/s and recall@10 of each search path, timed in turn so
    that load from other processes falls on all of them alike."""
    best = dict.fromkeys(paths, math.inf)
    recall: dict[str, float] = {}
    for _ in range(rounds):
        for name, search in paths.items():
            seconds, found = _timed(search, q)
            best[name] = min(best[name], seconds)
            recall[name] = recall_at_k(found, truth)
    return {name: {"qps": len(q) / best[name], "recall": recall[name]} for name in paths}


def phase_plain(work: Path, factory: str, train_size: int, seed: int) -> dict[str, Any]:
    """The same layout built the plain way: all vectors in memory, one add call."""
    started = time.perf_counter()
    parts = [c.load(mmap=False) for c in _chunks(work)]
    ids = np.concatenate([p[0] for p in parts])
    xb = np.concatenate([p[1] for p in parts])
    del parts
    index = faiss.index_factory(DIM, factory, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        rng = np.random.default_rng(seed)
        index.train(xb[np.sort(rng.choice(len(xb), train_size, replace=False))])
    if faiss.try_extract_index_ivf(index) is None:
        index = faiss.IndexIDMap2(index)
    index.add_with_ids(xb, ids)
    faiss.write_index(index, str(work / "plain.faiss"))
    return {"seconds": time.perf_counter() - started, "peak_rss": _peak_rss()}


def phase_base() -> dict[str, Any]:
    return {"peak_rss": _peak_rss()}


def _child(phase: str, work: Path, **kwargs: Any) -> dict[str, Any]:
    """Run one phase in a fresh interpreter and return what it printed as JSON."""
    cmd = [sys.executable, __file__, "--phase", phase, "--work", str(work),
           "--phase-args", json.dumps(kwargs)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"phase {phase} failed ({out.returncode}):\n{out.stderr[-4000:]}")
    for line in out.stderr.splitlines():
        if " INFO " in line or " WARNING " in line:
            log.info("[%s] %s", phase, line.split(" ", 3)[-1])
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_size(n: int, args: argparse.Namespace) -> dict[str, Any]:
    """All phases for one corpus size; the chunk folder is removed afterwards."""
    work = Path(tempfile.mkdtemp(prefix=f"faiss-build-{n}-", dir=args.tmp))
    try:
        log.info("n=%d: generating chunk files in %s", n, work)
        gen = _child("generate", work, n=n, chunk=args.chunk, queries=args.queries,
                     seed=args.seed)
        log.info("n=%d: embedsvc build", n)
        emb = _child("embedsvc", work, budget=args.budget, seed=args.seed)
        manifest = emb["manifest"]
        (work / "manifest.json").write_text(json.dumps(manifest))
        log.info("n=%d: plain FAISS build of %s", n, manifest["layout"])
        plain = _child("plain", work, factory=manifest["layout"],
                       train_size=manifest["train_size"], seed=args.seed)
        log.info("n=%d: searching both with %s", n, manifest["search_params"] or "exact")
        search = _child("search", work)
        base = _child("base", work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"n": n, "generate": gen, "embedsvc": emb, "plain": plain, "search": search,
            "base": base}


def _row(r: dict[str, Any]) -> list[str]:
    m, plain = r["embedsvc"]["manifest"], r["plain"]
    serve, plain_search = r["search"]["embedsvc"], r["search"]["plain"]
    phases = m["phase_seconds"]
    core = phases["train"] + phases["add"]
    base = r["base"]["peak_rss"]
    return [
        f"{r['n']:,}", f"`{m['layout']}`", m["search_params"] or "exact",
        f"{m['build_seconds']:.1f}", f"{plain['seconds']:.1f}",
        f"{m['build_seconds'] / plain['seconds']:.2f}",
        f"{core:.1f}", f"{phases['tune']:.1f}",
        f"{serve['qps']:,.0f}", f"{plain_search['qps']:,.0f}",
        f"{serve['qps'] / plain_search['qps']:.2f}",
        f"{m['recall_at_10']:.3f}", f"{serve['recall']:.3f}", f"{plain_search['recall']:.3f}",
        format_bytes(r["embedsvc"]["peak_rss"]), format_bytes(r["embedsvc"]["peak_rss"] - base),
        format_bytes(r["embedsvc"]["peak_rss"] - base - m["index_bytes"]),
        format_bytes(plain["peak_rss"]), format_bytes(base), format_bytes(m["index_bytes"]),
    ]


HEADER = ["vectors", "layout", "search", "build s", "plain build s", "build ratio",
          "train+add s", "tune s", "q/s", "plain q/s", "q/s ratio", "recall@10 (tuning)",
          "recall@10 (held-out)", "plain recall@10", "peak RSS", "peak RSS − base",
          "− index",
          "plain peak RSS", "process base", "index size"]


def table(results: list[dict[str, Any]]) -> str:
    """Markdown table, one row per corpus size; ratios are embedsvc / plain."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(_row(r)) + " |" for r in results]
    return "\n".join(lines)


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1_000_000, help="vectors (default 1,000,000)")
    p.add_argument("--sizes", help="comma-separated sizes to run side by side, e.g. 200000,1000000")
    p.add_argument("--chunk", type=int, default=50_000, help="rows per chunk file")
    p.add_argument("--budget", default="2GB", help="--memory-budget for the build")
    p.add_argument("--queries", type=int, default=1000, help="held-out queries")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tmp", default=None, help="folder for the temporary chunk files")
    p.add_argument("--json", help="also write the raw results here")
    p.add_argument("--phase", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    p.add_argument("--phase-args", default="{}", help=argparse.SUPPRESS)
    return p.parse_args()


PHASES = {"generate": phase_generate, "embedsvc": phase_embedsvc, "plain": phase_plain,
          "search": phase_search}


def main() -> None:
    args = _parse()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.phase:
        kwargs = json.loads(args.phase_args)
        result = phase_base() if args.phase == "base" else PHASES[args.phase](
            Path(args.work), **kwargs)
        print(json.dumps(result))
        return
    args.budget = parse_bytes(args.budget)
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else [args.n]
    results = [run_size(n, args) for n in sizes]
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    cpu = f"{faiss.omp_get_max_threads()} OpenMP threads, faiss {faiss.__version__}"
    print(f"\nFAISS build, {DIM}-d clustered synthetic vectors, budget "
          f"{format_bytes(args.budget)}, {cpu}\n")
    print(table(results))


if __name__ == "__main__":
    main()
