"""What every system's worker script shares: the corpus, the query protocol, the CLI.

Each ``sys_*.py`` script runs inside its own system's venv, so this module uses the
standard library only. A worker has two commands:

- ``index --corpus C --model M --out DIR``: read the corpus, embed and index it, persist
  it under DIR, exit. The orchestrator times the whole process and samples its memory.
- ``query --model M --out DIR --queries Q --result R``: open the persisted index, rank
  every query at depth 100 (untimed: it is both the ranking the orchestrator scores and
  the warm-up), then time each query alone at k=10 and write both to R as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

# Nothing in a benchmark may download: every system gets the same local model folder.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

log = logging.getLogger("benchmarks.peers")

COLLECTION = "scifact"
RANK_DEPTH = 100
TIMED_K = 10

# A search as a worker sees it: a query text and k in, ranked document ids out.
SearchFn = Callable[[str, int], list[str]]


def read_corpus(path: Path) -> Iterator[tuple[str, str]]:
    """(id, text) per line of a BEIR ``corpus.jsonl``, the text being ``title + " " + text``
    (as embedsvc, BEIR and MTEB embed a document)."""
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            yield str(row["_id"]), f"{row.get('title') or ''} {row.get('text') or ''}".strip()


def batches(items: Iterator, size: int) -> Iterator[list]:
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def read_queries(path: Path) -> list[tuple[str, str]]:
    """The orchestrator's query file: a JSON list of [query id, text]."""
    return [(str(q), str(t)) for q, t in json.loads(Path(path).read_text())]


def measure(search: SearchFn, queries: list[tuple[str, str]]) -> dict:
    """Rank every query at depth 100 (untimed; also the warm-up), then time each alone at k=10.

    Returns:
        ``{"ranked": {qid: [ids]}, "latency_ms": [one per query]}``.
    """
    ranked = {qid: search(text, RANK_DEPTH) for qid, text in queries}
    latency = []
    for _, text in queries:
        start = time.perf_counter()
        search(text, TIMED_K)
        latency.append((time.perf_counter() - start) * 1000)
    return {"ranked": ranked, "latency_ms": latency}


def run_queries(search: SearchFn, queries: list[tuple[str, str]], result: Path,
                extra: dict | None = None) -> None:
    """:func:`measure`, written to ``result`` as JSON with ``extra``."""
    Path(result).write_text(json.dumps({**measure(search, queries), **(extra or {})}))


def parser(description: str) -> argparse.ArgumentParser:
    """The two commands every worker takes (see the module docstring)."""
    p = argparse.ArgumentParser(description=description)
    sub = p.add_subparsers(dest="command", required=True)
    index = sub.add_parser("index", help="embed and index the corpus, persist it under --out")
    index.add_argument("--corpus", type=Path, required=True)
    query = sub.add_parser("query", help="rank and time the queries against the index in --out")
    query.add_argument("--queries", type=Path, required=True)
    query.add_argument("--result", type=Path, required=True)
    for cmd in (index, query):
        cmd.add_argument("--model", required=True, help="local sentence-transformers folder")
        cmd.add_argument("--out", type=Path, required=True, help="the system's index folder")
    return p


def setup_logging() -> None:
    """Our messages at INFO, the libraries' at WARNING: sentence-transformers shows a progress
    bar per encode call when its logger is at INFO, which no system does by default."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
