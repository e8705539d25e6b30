"""Indexing throughput on SciFact and search latency over its 300 test queries.

Builds the whole corpus with the default model (docs/s), then times every test query
in-process (the Searcher the API uses) and over HTTP (the real uvicorn server and our
client), for each search mode. Prints a Markdown table; paste it into RESULTS.md.

    python benchmarks/index_and_search.py [--home DIR] [--reuse]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from embedsvc.client import Client  # noqa: E402
from embedsvc.collection import open_store  # noqa: E402
from embedsvc.encoders import load_encoder  # noqa: E402
from embedsvc.search.searcher import Searcher  # noqa: E402
from embedsvc.settings import Settings  # noqa: E402
from indexing.job import BuildJob, BuildOptions  # noqa: E402
from tests.conftest import RunningServer  # noqa: E402

SCIFACT = REPO / "data" / "scifact"
MODES = ("dense", "lexical", "hybrid")


def percentiles(samples: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return cuts[49], cuts[94]


def test_queries() -> list[str]:
    judged = {line.split("\t")[0] for line in (SCIFACT / "qrels" / "test.tsv").read_text().splitlines()[1:]}
    rows = [json.loads(line) for line in (SCIFACT / "queries.jsonl").read_text().splitlines()]
    return [r["text"] for r in rows if r["_id"] in judged]


def time_calls(call, queries: list[str]) -> tuple[float, float, float]:
    call(queries[0])  # warm-up: first-call costs are not latency
    samples = []
    for query in queries:
        start = time.perf_counter()
        call(query)
        samples.append((time.perf_counter() - start) * 1000)
    p50, p95 = percentiles(samples)
    return p50, p95, len(samples) / (sum(samples) / 1000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--home", type=Path, help="home folder (default: a temporary one)")
    parser.add_argument("--reuse", action="store_true", help="keep an existing build")
    args = parser.parse_args()
    home = args.home or Path(tempfile.mkdtemp(prefix="embedsvc-bench-"))
    settings = Settings(home=home)
    print(f"machine: {platform.machine()}, {platform.processor() or '?'}, "
          f"python {platform.python_version()}, home {home}")

    job = BuildJob(settings, "scifact", SCIFACT, BuildOptions())
    report = job.run()
    if report.status == "built":
        print(f"\n| indexing | value |\n|---|---|\n| documents | {report.documents} |\n"
              f"| seconds | {report.seconds:.1f} |\n| docs/s | {report.docs_per_second:.1f} |")
    elif not args.reuse:
        print("collection already built (use a fresh --home to time indexing)")

    queries = test_queries()
    paths, store = open_store(settings.collections_dir, "scifact")
    searcher = Searcher(paths, store, lambda name: load_encoder(name, settings.models_dir))
    rows = []
    with RunningServer(settings) as server, Client(server.url, timeout=60) as client:
        for mode in MODES:
            local = time_calls(lambda q, m=mode: searcher.search(q, 10, m), queries)
            remote = time_calls(lambda q, m=mode: client.search("scifact", q, k=10, mode=m), queries)
            rows.append((mode, local, remote))
    print("\n| mode | in-process p50 ms | p95 ms | q/s | HTTP p50 ms | p95 ms | q/s | HTTP/in-process p50 |"
          "\n|---|---|---|---|---|---|---|---|")
    for mode, (lp50, lp95, lqps), (rp50, rp95, rqps) in rows:
        print(f"| {mode} | {lp50:.2f} | {lp95:.2f} | {lqps:.0f} | {rp50:.2f} | {rp95:.2f} | "
              f"{rqps:.0f} | {rp50 / lp50:.2f} |")


if __name__ == "__main__":
    main()
