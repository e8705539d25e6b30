"""Benchmark: many clients mixing searches and writes against ``embedsvc serve --workers 2``.

Why: issue 8 asks that writes from any worker be serialised by SQLite without a single
"database is locked", that searches never wait for writes, and that memory does not grow
with churn. This script serves a collection of SciFact documents with two worker processes
on loopback and runs ``--clients`` asyncio clients (our ``AsyncClient``) for ``--seconds``:
each request is a search with probability 0.9 (a SciFact test query, mode ``auto``, k=10)
and otherwise a write, half upserts of a new short document and half deletes of one
upserted earlier. It reports errors (any exception, and "database is locked" anywhere in
the responses or the server log), requests per second, p50/p99 latency per kind, the
server's resident memory (all its processes) after warm-up and at the end, and what the
collection holds afterwards (fresh vectors, pending embeddings, compactions).

Usage::

    python benchmarks/live_load.py                    # 32 clients, 60 s, 1000 documents
    python benchmarks/live_load.py --seconds 20 --docs 300
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from embedsvc.client import AsyncClient, Client, EmbedsvcError  # noqa: E402

SCIFACT = ROOT / "data" / "scifact"
EMBEDSVC = [sys.executable, "-m", "embedsvc"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def prepare(home: Path, docs: int) -> None:
    """A collection of the first ``docs`` SciFact abstracts (built once per home)."""
    corpus = home / "corpus.jsonl"
    with gzip.open(SCIFACT / "corpus.jsonl.gz", "rt") as fh, corpus.open("w") as out:
        for _, line in zip(range(docs), fh, strict=False):
            out.write(line)
    subprocess.run([*EMBEDSVC, "--home", str(home), "index", "build", "load", "--input",
                    str(corpus)], check=True, stdout=subprocess.DEVNULL)


def server_rss(pid: int) -> int:
    """Resident bytes of the server and all its children."""
    pids, total = [pid], 0
    while pids:
        current = pids.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            total += int(next(line.split()[1] for line in status.splitlines()
                              if line.startswith("VmRSS"))) * 1024
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except (OSError, StopIteration):
            continue
        pids += [int(c) for c in children]
    return total


async def client_loop(url: str, queries: list[str], until: float, seed: int,
                      out: dict[str, Any]) -> None:
    rng = random.Random(seed)
    mine: list[str] = []
    async with AsyncClient(url, timeout=60, retries=0) as client:
        while time.monotonic() < until:
            kind = "search" if rng.random() < 0.9 else ("delete" if mine and rng.random() < 0.5
                                                        else "upsert")
            started = time.perf_counter()
            try:
                if kind == "search":
                    await client.search("load", rng.choice(queries), k=10)
                elif kind == "upsert":
                    doc_id = f"w{seed}-{len(out['latency']['upsert'])}-{rng.random():.6f}"
                    await client.upsert("load", [{"id": doc_id, "title": "A new finding",
                                                  "text": rng.choice(queries)}])
                    mine.append(doc_id)
                else:
                    await client.delete("load", ids=[mine.pop(rng.randrange(len(mine)))])
            except EmbedsvcError as exc:
                out["errors"].append(f"{kind}: {exc}")
                continue
            out["latency"][kind].append(time.perf_counter() - started)


def percentiles(seconds: list[float]) -> str:
    if not seconds:
        return "-"
    ms = sorted(1000 * s for s in seconds)
    return f"{statistics.median(ms):.1f} / {ms[min(len(ms) - 1, int(0.99 * len(ms)))]:.1f}"


def run(home: Path, clients: int, seconds: float, warmup: float) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = home / "server.log"
    with log.open("w") as fh:
        server = subprocess.Popen([*EMBEDSVC, "--home", str(home), "serve", "--port", str(port),
                                   "--workers", "2"], stdout=fh, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        with Client(url, timeout=5) as probe:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if probe.search("load", "warm up").mode == "hybrid":
                        break
                except EmbedsvcError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("the server did not become ready")
                time.sleep(0.5)
        queries = [json.loads(line)["text"] for line in (SCIFACT / "queries.jsonl").open()]
        out: dict[str, Any] = {"errors": [], "latency": {"search": [], "upsert": [], "delete": []}}
        warm: dict[str, Any] = {"errors": [], "latency": {"search": [], "upsert": [], "delete": []}}

        async def load(until: float, into: dict[str, Any]) -> None:
            await asyncio.gather(*(client_loop(url, queries, until, seed, into)
                                   for seed in range(clients)))

        asyncio.run(load(time.monotonic() + warmup, warm))
        rss_start = server_rss(server.pid)
        started = time.monotonic()
        samples: list[int] = []
        sampling = threading.Event()

        def sample() -> None:  # the server's memory every 10 s: growth or a plateau
            while not sampling.wait(10):
                samples.append(server_rss(server.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        asyncio.run(load(started + seconds, out))
        sampling.set()
        elapsed = time.monotonic() - started
        rss_end = server_rss(server.pid)
        with Client(url, timeout=60) as client:
            info = client.get_collection("load")
            jobs = client.jobs()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
    server_log = log.read_text()
    locked = server_log.count("database is locked") + sum("locked" in e for e in out["errors"])
    total = sum(len(v) for v in out["latency"].values())
    print(f"{clients} clients, {elapsed:.0f} s against `serve --workers 2` ({info.documents} "
          f"documents at the end)")
    print("| requests | errors | 'database is locked' | requests/s | searches/s | search p50/p99 "
          "ms | upsert p50/p99 ms | delete p50/p99 ms | server RSS after warm-up → end |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| {total} | {len(out['errors'])} | {locked} | {total / elapsed:.1f} | "
          f"{len(out['latency']['search']) / elapsed:.1f} | {percentiles(out['latency']['search'])} | "
          f"{percentiles(out['latency']['upsert'])} | {percentiles(out['latency']['delete'])} | "
          f"{rss_start / 2**20:.0f} MB → {rss_end / 2**20:.0f} MB |")
    print("server RSS every 10 s (MB): " + " ".join(f"{x / 2**20:.0f}" for x in samples))
    print(f"afterwards: {info.fresh_vectors} fresh vectors, {info.pending} pending, "
          f"{info.deleted_vectors} deleted, version {info.index_version}, "
          f"{sum(j.state == 'done' for j in jobs)} compactions; tracebacks in the server log: "
          f"{server_log.count('Traceback')}")
    for error in out["errors"][:10]:
        print("  error:", error)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--warmup", type=float, default=10)
    parser.add_argument("--docs", type=int, default=1000, help="SciFact documents served")
    parser.add_argument("--home", help="reuse this home (its 'load' collection) between runs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        home = Path(args.home) if args.home else Path(tmp)
        if not (home / "collections" / "load").exists():
            home.mkdir(parents=True, exist_ok=True)
            prepare(home, args.docs)
        run(home, args.clients, args.seconds, args.warmup)


if __name__ == "__main__":
    main()
