"""Benchmark: compaction after replacing 1% of a collection, against a full build of it.

Why: issue 8 asks that folding a fresh segment and its tombstones into a new version cost at
most 20% of building the collection again, so that the server can compact by itself as
documents churn. Both sides run in this process, in alternating rounds:

1. full build (timed): ``index build --vectors`` of N clustered 384-d unit vectors with
   text ids (``BuildJob.run()``: checks, SQLite ingest, layout choice, index, store, switch);
2. churn (not timed): 1% of the documents are rewritten through the API's write path with
   new text, and the server's embedder gives them vectors with the bundled model: their old
   vectors become tombstones, the new ones the fresh segment;
3. compaction (timed): ``indexing.compact.compact`` on that collection. This is a minor
   compaction: the base index stays, an exact delta and the dead ids are written beside it;
4. churn again, then a major compaction (timed), forced as it comes once the delta or the
   dead ids pass 10% of the base: the base index is rewritten.

Usage::

    python benchmarks/compaction.py                  # 100k vectors, 1% replaced, 3 rounds
    python benchmarks/compaction.py --n 20000 --rounds 2
"""

from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from faiss_build import DIM, synthetic  # noqa: E402

import indexing.compact  # noqa: E402
from embedsvc.collection import open_store, read_manifest  # noqa: E402
from embedsvc.encoders import DEFAULT_MODEL, load_encoder, unpack_default_model  # noqa: E402
from embedsvc.live.embedder import embed_pending  # noqa: E402
from embedsvc.live.writes import DocumentIn, upsert_documents  # noqa: E402
from embedsvc.settings import Settings  # noqa: E402
from embedsvc.store import Store  # noqa: E402
from indexing.compact import compact  # noqa: E402
from indexing.job import BuildJob, BuildOptions  # noqa: E402

TOPICS = ["vitamin D", "malaria", "protein folding", "heart disease", "sleep", "antibiotics"]


def make_input(work: Path, n: int) -> Path:
    vectors = np.concatenate([synthetic(min(50_000, n - s), DIM, max(16, n // 1000), 0, s // 50_000)
                              for s in range(0, n, 50_000)])
    np.save(work / "v.npy", vectors)
    (work / "v.ids.txt").write_text("".join(f"doc{i}\n" for i in range(n)))
    return work / "v.npy"


def one_round(work: Path, models: Path, npy: Path, n: int, share: float) -> dict[str, float]:
    home = work / "home"
    shutil.rmtree(home, ignore_errors=True)
    (home / "models").mkdir(parents=True)
    (home / "models" / "_bundled").symlink_to(models / "_bundled", target_is_directory=True)
    settings = Settings(home=home)
    started = time.perf_counter()
    BuildJob(settings, "c", None, BuildOptions(vectors=npy)).run()
    build = time.perf_counter() - started

    paths, store = open_store(settings.collections_dir, "c")
    replaced = churn(settings, store, n, share, "Replacement")
    started = time.perf_counter()
    result = compact(paths, store)
    seconds = time.perf_counter() - started
    phases = read_manifest(paths, result["version"])["phase_seconds"]

    churn(settings, store, n, share, "Second replacement")
    indexing.compact.MAJOR_SHARE, share_was = 0.0, indexing.compact.MAJOR_SHARE
    try:
        started = time.perf_counter()
        major = compact(paths, store)
        major_seconds = time.perf_counter() - started
    finally:
        indexing.compact.MAJOR_SHARE = share_was
    major_phases = read_manifest(paths, major["version"])["phase_seconds"]
    return {"build": build, "compact": seconds, "major": major_seconds, "replaced": replaced,
            "folded": result["folded"], "dropped": result["dropped"],
            "phases": phases, "major phases": major_phases}


def churn(settings: Settings, store: Store, n: int, share: float, text: str) -> int:
    """Rewrite ``share`` of the documents with new text and embed them, as the server does."""
    docs = [DocumentIn(f"doc{i}", f"{text} {i}: a study of {TOPICS[i % 6]}.")
            for i in range(0, n, round(1 / share))]
    upsert_documents(store, docs, embed=True)
    encoder = load_encoder(DEFAULT_MODEL, settings.models_dir)
    while embed_pending(store, encoder, limit=256):
        pass
    return len(docs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="documents (vectors)")
    parser.add_argument("--share", type=float, default=0.01, help="share of documents replaced")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bench-compaction-") as tmp:
        work = Path(tmp)
        models = work / "models"
        unpack_default_model(models)
        load_encoder(DEFAULT_MODEL, models)  # loaded once, outside every timing
        npy = make_input(work, args.n)
        rounds = []
        for number in range(args.rounds):
            rounds.append(one_round(work, models, npy, args.n, args.share))
            r = rounds[-1]
            print(f"round {number + 1}: full build {r['build']:.2f}s, compaction {r['compact']:.3f}s "
                  f"({r['compact'] / r['build']:.1%}), major compaction {r['major']:.2f}s "
                  f"({r['major'] / r['build']:.1%}); {r['replaced']} replaced: {r['folded']} fresh "
                  f"folded, {r['dropped']} tombstones dropped; phases {r['phases']}, major "
                  f"{r['major phases']}", flush=True)
    build = statistics.median(r["build"] for r in rounds)
    seconds = statistics.median(r["compact"] for r in rounds)
    major = statistics.median(r["major"] for r in rounds)
    print(f"\n{args.n} vectors, {args.share:.0%} replaced, median of {args.rounds} rounds: full "
          f"build {build:.2f}s, compaction {seconds:.3f}s = {seconds / build:.1%} of a full build; "
          f"a major compaction (due once 10% has changed) {major:.2f}s = {major / build:.1%}")


if __name__ == "__main__":
    main()
