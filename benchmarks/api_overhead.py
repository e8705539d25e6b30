"""Benchmark: what API keys, rate limiting, metrics and the access log cost per request.

Why: issue 9 puts every request through a key check (SHA-256 and constant-time compares), a
token bucket, Prometheus counters and histograms and one JSON log line. Users judge a
service by its latency; this says what those cost beside the work of a request.

Setup: one home with SciFact indexed lexically (no model needed: the point is the request
path, not inference). Two `embedsvc serve` processes on it, side by side:

- **open**: no keys, rate limiting off (the access log and metrics are always on);
- **guarded**: three keys in the key file, the request sent with the admin one (the last
  compared), rate limiting on at a rate it never reaches.

One client (httpx, keep-alive) sends requests one at a time, alternating between the two
servers in rounds (open, guarded, open, ...), each round ``--per-round`` requests of each
kind: `GET /healthz` (open route: the middleware alone), `GET /v1/collections` (a
`read` route: the key check and the bucket on top) and a lexical search. Each server's
access log goes to a file. Prints p50 and p95 per server and kind, and the ratio.

Usage::

    python benchmarks/api_overhead.py                 # 5 rounds of 300 requests per kind
    python benchmarks/api_overhead.py --rounds 3 --per-round 100
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from embedsvc.keys import Scope, create_key  # noqa: E402
from embedsvc.settings import Settings, environment_of  # noqa: E402
from indexing.job import BuildJob, BuildOptions  # noqa: E402

QUERIES = ["vitamin D deficiency", "malaria vaccine", "stem cells and cancer", "obesity in children"]
KINDS = ("healthz", "list", "search")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(settings: Settings, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, **environment_of(settings)}
    process = subprocess.Popen(
        [sys.executable, "-m", "embedsvc", "--home", str(settings.home), "serve", "--port", str(port)],
        env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError("server did not start")


def one_round(client: httpx.Client, per_round: int, out: dict[str, list[float]]) -> None:
    for kind in KINDS:
        for i in range(per_round):
            started = time.perf_counter()
            if kind == "healthz":
                answer = client.get("/healthz")
            elif kind == "list":
                answer = client.get("/v1/collections")
            else:
                answer = client.post("/v1/collections/scifact/search",
                                     json={"query": QUERIES[i % len(QUERIES)], "k": 10, "mode": "lexical"})
            out[kind].append((time.perf_counter() - started) * 1000)
            if answer.status_code != 200:
                raise RuntimeError(f"{kind}: {answer.status_code} {answer.text[:200]}")


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--per-round", type=int, default=300)
    args = parser.parse_args()
    logging_off = {"log_level": "WARNING"}
    with tempfile.TemporaryDirectory(prefix="embedsvc-overhead-") as tmp:
        work = Path(tmp)
        base = Settings(home=work / "home", preload_models=False, verify_interval_seconds=0, **logging_off)
        BuildJob(base, "scifact", ROOT / "data" / "scifact", BuildOptions(lexical_only=True)).run()
        open_settings = base
        guarded_settings = Settings(home=work / "home", preload_models=False, verify_interval_seconds=0,
                                    api_keys_file=work / "keys", rate_limit_per_second=100_000.0,
                                    rate_limit_burst=100_000, **logging_off)
        keys = [create_key(guarded_settings, scope, scope.name) for scope in Scope]
        servers = {"open": start(open_settings, work / "open.log"),
                   "guarded": start(guarded_settings, work / "guarded.log")}
        clients = {"open": httpx.Client(base_url=servers["open"][1], timeout=30),
                   "guarded": httpx.Client(base_url=servers["guarded"][1], timeout=30,
                                           headers={"Authorization": f"Bearer {keys[-1]}"})}
        timings = {name: {kind: [] for kind in KINDS} for name in servers}
        try:
            for name in servers:  # warm-up, not counted
                one_round(clients[name], 20, {kind: [] for kind in KINDS})
            for _ in range(args.rounds):
                for name in servers:
                    one_round(clients[name], args.per_round, timings[name])
        finally:
            for process, _ in servers.values():
                process.terminate()
                process.wait(timeout=60)
        lines = sum(1 for _ in (work / "guarded.log").open())
    report = {}
    print(f"{args.rounds} rounds x {args.per_round} requests per kind, alternating servers")
    print(f"{'kind':8} {'open p50':>9} {'p95':>7} {'guarded p50':>12} {'p95':>7} {'p50 ratio':>10}")
    for kind in KINDS:
        row = {name: (statistics.median(timings[name][kind]), percentile(timings[name][kind], 0.95))
               for name in servers}
        ratio = row["guarded"][0] / row["open"][0]
        report[kind] = {**{f"{n}_p50_ms": round(v[0], 3) for n, v in row.items()},
                        **{f"{n}_p95_ms": round(v[1], 3) for n, v in row.items()}, "p50_ratio": round(ratio, 3)}
        print(f"{kind:8} {row['open'][0]:9.3f} {row['open'][1]:7.3f} {row['guarded'][0]:12.3f} "
              f"{row['guarded'][1]:7.3f} {ratio:10.3f}")
    print(f"access log lines written by the guarded server: {lines}")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
