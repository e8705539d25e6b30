"""Benchmark: the dense query path of the real server, with query micro-batching on and off.

Why: under load each search used to run its own forward pass with every torch thread, and
embedsvc served fewer queries/s than a naive FastAPI + sentence-transformers server.
Concurrent single-query searches are now gathered into one encoder call
(``EMBEDSVC_QUERY_BATCH_WAIT_MS``, ``EMBEDSVC_QUERY_BATCH_SIZE``); this measures what that
buys, and what it costs a lone query.

Setup: one home with SciFact (or its first ``--docs N`` documents) indexed; one
``embedsvc serve`` process on it per arm, side by side:

- **unbatched**: ``query_batch_size=1`` (every query its own encoder call, as before);
- **batched**: the defaults (wait up to 2 ms, at most 32 queries a call);
- **no-wait** (with ``--arms``): ``query_batch_wait_ms=0``, gathering only the queries that
  queued behind a running call.

The query-embedding cache is off in every arm (``query_cache_size=0``): every query is
encoded, as it is when queries rarely repeat. Within a round each level runs on every arm
in turn, the first arm rotating from round to round, so drift of a shared machine hits the
arms alike. Each round measures, per arm,
p50/p95 at 1 client (one request at a time) and queries/s (and p50/p95) at 8 and 32
concurrent clients, each client one keep-alive connection sending dense searches of the
SciFact queries. The load generator is a minimal asyncio HTTP/1.1 client, so it takes as
little CPU from the servers as it can. Prints a Markdown table, and texts per encoder call
from the servers' own ``embedsvc_encode_batch_size`` histogram.

``--profile`` instead profiles one server (the default settings, the cache off unless
``--profile-queries`` repeats a few queries) with py-spy while clients send dense searches,
and prints where the time goes (see ``benchmarks/query_profile.md``).

Usage::

    python benchmarks/query_path.py                       # full SciFact, 3 rounds
    python benchmarks/query_path.py --arms unbatched,no-wait,batched
    python benchmarks/query_path.py --docs 300 --rounds 1 --requests 64   # a smoke run
    python benchmarks/query_path.py --docs 1000 --profile --profile-seconds 30
    python benchmarks/query_path.py --docs 1000 --profile --profile-queries 20  # cached queries
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from embedsvc.settings import Settings, environment_of  # noqa: E402
from indexing.job import BuildJob, BuildOptions  # noqa: E402

SCIFACT = ROOT / "data" / "scifact"
COLLECTION = "scifact"
SEARCH_PATH = f"/v1/collections/{COLLECTION}/search"
ARMS: dict[str, dict[str, object]] = {
    "unbatched": {"query_batch_size": 1, "query_cache_size": 0},
    # gathers what queued behind a running call, never waits for more
    "no-wait": {"query_batch_wait_ms": 0.0, "query_cache_size": 0},
    "batched": {"query_cache_size": 0},  # query_batch_wait_ms and query_batch_size: defaults
}
LEVELS = (1, 8, 32)


# --- corpus and servers ---------------------------------------------------------------------
def corpus_folder(docs: int | None, work: Path) -> Path:
    """SciFact itself, or a BEIR-style folder holding its first ``docs`` documents."""
    if docs is None:
        return SCIFACT
    folder = work / f"scifact-{docs}"
    folder.mkdir(parents=True, exist_ok=True)
    with gzip.open(SCIFACT / "corpus.jsonl.gz", "rt", encoding="utf-8") as fh, \
            (folder / "corpus.jsonl").open("w", encoding="utf-8") as out:
        for i, line in enumerate(fh):
            if i >= docs:
                break
            out.write(line)
    return folder


def queries() -> list[str]:
    """Every SciFact query (1,109), so that few repeat within a level."""
    rows = (json.loads(line) for line in (SCIFACT / "queries.jsonl").read_text().splitlines())
    return [row["text"] for row in rows]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    """An ``embedsvc serve`` process (the real server, as deployed)."""

    name: str
    process: subprocess.Popen
    port: int


def start(name: str, settings: Settings, log: Path) -> Server:
    port = free_port()
    env = {**os.environ, **environment_of(settings)}
    process = subprocess.Popen(
        [sys.executable, "-m", "embedsvc", "--home", str(settings.home), "serve", "--port", str(port)],
        env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    return Server(name, process, port)


def wait_ready(server: Server, timeout: float = 300.0) -> None:
    """Until the server answers a dense search (model and index loaded)."""
    deadline = time.monotonic() + timeout
    body = json.dumps({"query": "warm-up", "k": 10, "mode": "dense"}).encode()
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"server {server.name} exited with {server.process.returncode}")
        try:
            status, _ = asyncio.run(one_request(server.port, SEARCH_PATH, body))
            if status == 200:
                return
        except (OSError, asyncio.IncompleteReadError):
            pass  # not listening yet
        time.sleep(0.2)
    raise RuntimeError(f"server {server.name} not ready in {timeout:.0f} s")


def stop(servers: list[Server]) -> None:
    for server in servers:
        server.process.terminate()
    for server in servers:
        server.process.wait(timeout=60)


# --- a lean HTTP/1.1 load generator ---------------------------------------------------------
class Connection:
    """One keep-alive HTTP/1.1 connection: POST a JSON body, read the status and body."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        self.writer.write(b"POST %s HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
                          b"content-length: %d\r\n\r\n%s" % (path.encode(), len(body), body))
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
        if length is None:
            raise RuntimeError("response without content-length")
        return status, await self.reader.readexactly(int(length.group(1)))

    async def get(self, path: str) -> bytes:
        self.writer.write(b"GET %s HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n" % path.encode())
        head = await self.reader.readuntil(b"\r\n\r\n")
        length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
        if length is not None:
            return await self.reader.readexactly(int(length.group(1)))
        return await _chunked(self.reader)

    def close(self) -> None:
        self.writer.close()


async def _chunked(reader: asyncio.StreamReader) -> bytes:
    parts = []
    while size := int((await reader.readline()).strip(), 16):
        parts.append(await reader.readexactly(size))
        await reader.readline()
    await reader.readline()
    return b"".join(parts)


async def one_request(port: int, path: str, body: bytes) -> tuple[int, bytes]:
    connection = await Connection.open(port)
    try:
        return await connection.post(path, body)
    finally:
        connection.close()


def search_body(query: str) -> bytes:
    return json.dumps({"query": query, "k": 10, "mode": "dense"}).encode()


@dataclass
class Level:
    """What one arm did at one level of concurrency in one round."""

    latencies_ms: list[float] = field(default_factory=list)
    took_ms: list[float] = field(default_factory=list)  # the searcher's own time, per answer
    seconds: float = 0.0
    texts: float = 0.0  # texts encoded, from the server's histogram
    calls: float = 0.0  # encoder calls


async def load(port: int, clients: int, bodies: Iterator[bytes], total: int) -> Level:
    """``total`` searches from ``clients`` connections, each sending its next one as soon
    as it has its answer."""
    connections = [await Connection.open(port) for _ in range(clients)]
    level = Level()
    left = total

    async def client(connection: Connection) -> None:
        nonlocal left
        while left > 0:
            left -= 1
            started = time.perf_counter()
            status, answer = await connection.post(SEARCH_PATH, next(bodies))
            level.latencies_ms.append((time.perf_counter() - started) * 1000)
            if status != 200:
                raise RuntimeError(f"search answered {status}: {answer[:300]!r}")
            took = _TOOK.search(answer)
            level.took_ms.append(float(took.group(1)) if took else float("nan"))

    started = time.perf_counter()
    try:
        await asyncio.gather(*(client(c) for c in connections))
    finally:
        for connection in connections:
            connection.close()
    level.seconds = time.perf_counter() - started
    return level


_TOOK = re.compile(rb'"took_ms":\s*([0-9.]+)')
_HISTOGRAM = re.compile(r'^embedsvc_encode_batch_size_(sum|count)\{[^}]*\} ([0-9.e+]+)$', re.M)


async def encode_counts(port: int) -> tuple[float, float]:
    """(texts encoded, encoder calls) so far, summed over models."""
    connection = await Connection.open(port)
    try:
        text = (await connection.get("/metrics")).decode()
    finally:
        connection.close()
    totals = {"sum": 0.0, "count": 0.0}
    for kind, value in _HISTOGRAM.findall(text):
        totals[kind] += float(value)
    return totals["sum"], totals["count"]


async def measure(server: Server, clients: int, bodies: Iterator[bytes], total: int) -> Level:
    texts, calls = await encode_counts(server.port)
    level = await load(server.port, clients, bodies, total)
    texts_after, calls_after = await encode_counts(server.port)
    level.texts, level.calls = texts_after - texts, calls_after - calls
    return level


def cycle(items: list[bytes]) -> Iterator[bytes]:
    while True:
        yield from items


# --- the comparison -------------------------------------------------------------------------
def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def compare(servers: list[Server], rounds: int, requests: int) -> dict[tuple[str, int], Level]:
    """Each round, each level, every arm in turn (the first arm rotating from round to
    round), so a burst of load from elsewhere on the machine falls on all arms alike;
    pool each arm's samples per level."""
    bodies = cycle([search_body(q) for q in queries()])
    pooled = {(s.name, n): Level() for s in servers for n in LEVELS}
    for server in servers:  # warm-up, not counted: first calls, thread pools, allocators
        asyncio.run(measure(server, 8, bodies, 32))
    for number in range(rounds):
        for clients in LEVELS:
            for server in servers[number % len(servers):] + servers[:number % len(servers)]:
                total = requests if clients == 1 else requests * 2
                level = asyncio.run(measure(server, clients, bodies, total))
                into = pooled[(server.name, clients)]
                into.latencies_ms += level.latencies_ms
                into.seconds += level.seconds
                into.texts += level.texts
                into.calls += level.calls
    return pooled


def table(pooled: dict[tuple[str, int], Level], names: list[str]) -> str:
    first, last = names[0], names[-1]
    lines = [f"| clients | metric | {' | '.join(names)} | {last}/{first} |",
             "|---|---|" + "---|" * (len(names) + 1)]
    metrics: list[tuple[str, Callable[[Level], float]]] = [
        ("queries/s", lambda lv: len(lv.latencies_ms) / lv.seconds),
        ("p50 ms", lambda lv: statistics.median(lv.latencies_ms)),
        ("p95 ms", lambda lv: percentile(lv.latencies_ms, 0.95)),
        ("texts per encode call", lambda lv: lv.texts / lv.calls if lv.calls else float("nan")),
    ]
    for clients in LEVELS:
        for label, metric in metrics:
            values = [metric(pooled[(name, clients)]) for name in names]
            ratio = values[-1] / values[0] if values[0] else float("nan")
            lines.append(f"| {clients} | {label} | {' | '.join(f'{v:.2f}' for v in values)} | {ratio:.2f} |")
    return "\n".join(lines)


def same_hits(servers: list[Server], count: int = 20) -> str:
    """How many of the first ``count`` queries get the same top-10 ids from every arm."""
    answers = []
    for server in servers:
        ids = []
        for query in queries()[:count]:
            _, body = asyncio.run(one_request(server.port, SEARCH_PATH, search_body(query)))
            ids.append([hit["id"] for hit in json.loads(body)["hits"]])
        answers.append(ids)
    same = sum(1 for i in range(count) if all(a[i] == answers[0][i] for a in answers))
    return f"{same}/{count} queries have the same top-10 ids in every arm"


# --- profiling ------------------------------------------------------------------------------
# Where a sampled stack's time goes, checked in this order (the first match wins), each a
# test on the stack's frames as "function (path)" strings, outermost first.
WAITING = "waiting, not working (epoll, a lock, a queue: py-spy counts some waits)"
_WAITS = ("EpollSelector.select (", "Condition.wait (", "Event.wait (", "Future.result (")
CATEGORIES: list[tuple[str, Callable[[list[str]], bool]]] = [
    (WAITING, lambda s: s[-1].startswith(_WAITS)),
    ("background threads (writer lease, embedding worker)",
     lambda s: any("embedsvc/live/" in f or "_verify_loop" in f for f in s)),
    ("encoding the query (sentence-transformers, torch)",
     lambda s: any(("encode (" in f and "embedsvc/" in f) or "sentence_transformers" in f for f in s)),
    ("FAISS search (and fresh segment, merge)",
     lambda s: any("embedsvc/search/dense.py" in f or f.startswith("FreshSegment.search (") for f in s)),
    ("SQLite hydration of hits (documents, passage spans)", lambda s: any("._hits (" in f for f in s)),
    ("snapshot check (write number, version)", lambda s: any("Searcher.view (" in f for f in s)),
    ("searcher, other (plan, restriction, ranking)", lambda s: any("embedsvc/search/" in f for f in s)),
    ("response: validation and serialisation", lambda s: any("serialize_response (" in f for f in s)),
    ("route code (checks, metrics, serialisation)", lambda s: any("embedsvc/api/routes/" in f for f in s)),
    ("auth (key check, rate limit)", lambda s: any("embedsvc/api/auth.py" in f for f in s)),
    ("thread-pool hand-offs (anyio: dependencies, endpoint)", lambda s: any("anyio/" in f for f in s)),
    ("request: body parsing and validation",
     lambda s: any(f.startswith(("solve_dependencies (", "request_body_to_args (", "parse_json (",
                                 "check_tree (", "check_body (", "JsonRequest.json (")) for f in s)),
    ("observability (metrics, access log)",
     lambda s: any("prometheus_client" in f or "/logging/" in f or "_log_access (" in f for f in s)),
    ("HTTP protocol and event loop (uvicorn, asyncio)",
     lambda s: any("uvicorn/" in f or "h11" in f or "httptools" in f or "asyncio/" in f for f in s)),
]


def parse_raw(path: Path) -> Counter[tuple[str, ...]]:
    """py-spy's raw format: one ``frame;frame;... count`` line per distinct stack."""
    stacks: Counter[tuple[str, ...]] = Counter()
    for line in path.read_text().splitlines():
        frames, _, count = line.rpartition(" ")
        if frames:
            stacks[tuple(frames.split(";"))] += int(count)
    return stacks


def categorise(stacks: Counter[tuple[str, ...]]) -> Counter[str]:
    shares: Counter[str] = Counter()
    for stack, count in stacks.items():
        frames = list(stack)
        label = next((name for name, test in CATEGORIES if test(frames)), "other")
        shares[label] += count
    return shares


def inclusive(stacks: Counter[tuple[str, ...]], top: int) -> list[tuple[str, int]]:
    """Functions by the samples whose stack holds them (cumulative time), most first."""
    counts: Counter[str] = Counter()
    for stack, count in stacks.items():
        for frame in set(stack):
            counts[frame] += count
    return counts.most_common(top)


def short(frame: str) -> str:
    """``function (path)`` with the path cut to the package part."""
    name, _, path = frame.partition(" (")
    path = path.rstrip(")")
    for marker in ("site-packages/", "/work/main/", str(ROOT) + "/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{name} ({path})"


def profile(settings: Settings, work: Path, seconds: float, rate: int, clients: int,
            distinct: int | None = None, keep: Path | None = None) -> None:
    """py-spy on one server while ``clients`` clients send dense searches (of the first
    ``distinct`` queries only, if given: cached after the warm-up); print the summary."""
    server = start("profiled", settings, work / "profiled.log")
    try:
        wait_ready(server)
        bodies = cycle([search_body(q) for q in queries()[:distinct]])
        asyncio.run(load(server.port, clients, bodies, 50))  # warm-up
        raw = work / "profile.txt"
        spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "--pid",
                                str(server.process.pid), "--duration", str(int(seconds)), "--rate",
                                str(rate), "--format", "raw", "--nolineno", "--full-filenames",
                                "--nonblocking", "--output", str(raw)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(1.0)  # py-spy attaches
        levels = []
        while spy.poll() is None:
            levels.append(asyncio.run(measure(server, clients, bodies, 40)))
        if spy.returncode != 0:
            raise RuntimeError(f"py-spy failed: {spy.stderr.read().decode() if spy.stderr else ''}")
    finally:
        stop([server])
    if keep is not None:
        keep.write_text(raw.read_text())
    pooled = Level()
    for level in levels:
        pooled.latencies_ms += level.latencies_ms
        pooled.took_ms += level.took_ms
        pooled.seconds += level.seconds
        pooled.texts += level.texts
        pooled.calls += level.calls
    report(parse_raw(raw), rate, pooled, clients)


def report(stacks: Counter[tuple[str, ...]], rate: int, level: Level, clients: int) -> None:
    total = sum(stacks.values())
    latencies = level.latencies_ms
    requests = len(latencies)
    outside = [lat - took for lat, took in zip(latencies, level.took_ms, strict=True)]
    print(f"{requests} dense searches from {clients} client(s) in {level.seconds:.1f} s: "
          f"{requests / level.seconds:.1f} q/s, p50 {statistics.median(latencies):.2f} ms, "
          f"p95 {percentile(latencies, 0.95):.2f} ms")
    print(f"medians per request: searcher (took_ms: encode, FAISS, hydration) "
          f"{statistics.median(level.took_ms):.2f} ms; outside it (HTTP, framework, middleware, "
          f"serialisation, client) {statistics.median(outside):.2f} ms; "
          f"{level.texts / max(level.calls, 1):.2f} texts per encoder call")
    shares = categorise(stacks)
    waiting = shares.pop(WAITING, 0)
    work = {stack: count for stack, count in stacks.items() if not stack[-1].startswith(_WAITS)}
    busy = total - waiting
    print(f"py-spy: {total} samples of Python threads not idle at {rate}/s, {waiting} of them "
          f"waiting; the other {busy} = {busy / rate / requests * 1000:.2f} ms of server thread "
          "time per request\n")
    print("| where | % of working samples | ms per request |\n|---|---|---|")
    for label, count in shares.most_common():
        print(f"| {label} | {100 * count / busy:.1f} | {count / rate / requests * 1000:.2f} |")
    print("\n| function (cumulative, working samples) | % |\n|---|---|")
    for frame, count in inclusive(Counter(work), 30):
        print(f"| {short(frame)} | {100 * count / busy:.1f} |")


# --- main -----------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, help="index only the first N SciFact documents")
    parser.add_argument("--home", type=Path, help="home folder to build in and reuse (default: temporary)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, alternating the arms")
    parser.add_argument("--requests", type=int, default=200,
                        help="searches per arm and round at 1 client (twice as many at 8 and 32)")
    parser.add_argument("--arms", default="unbatched,batched",
                        help=f"arms to compare, first is the baseline (of {', '.join(ARMS)})")
    parser.add_argument("--profile", action="store_true", help="profile one server instead (py-spy)")
    parser.add_argument("--profile-seconds", type=float, default=20.0)
    parser.add_argument("--profile-rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--profile-clients", type=int, default=1)
    parser.add_argument("--profile-queries", type=int,
                        help="send only the first N queries (all cached after the warm-up)")
    parser.add_argument("--profile-raw", type=Path, help="keep py-spy's raw stacks in this file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="embedsvc-query-path-") as tmp:
        work = Path(tmp)
        home = args.home or work / "home"
        quiet = {"log_level": "WARNING", "verify_interval_seconds": 0}
        base = Settings(home=home, **quiet)
        report_ = BuildJob(base, COLLECTION, corpus_folder(args.docs, work), BuildOptions()).run()
        print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}; "
              f"{report_.documents or 'reused'} documents ({report_.status})")
        if args.profile:
            # every query encoded, unless the point is to see the path without encoding
            cache = {} if args.profile_queries else {"query_cache_size": 0}
            profile(base.model_copy(update=cache), work, args.profile_seconds, args.profile_rate,
                    args.profile_clients, args.profile_queries, args.profile_raw)
            return
        arms = args.arms.split(",")
        servers = [start(name, Settings(home=home, **quiet, **ARMS[name]), work / f"{name}.log")
                   for name in arms]
        try:
            for server in servers:
                wait_ready(server)
            pooled = compare(servers, args.rounds, args.requests)
            agreement = same_hits(servers)
        finally:
            stop(servers)
    print(f"\n{args.rounds} round(s), arms alternating; dense search, k=10, query cache off\n")
    print(table(pooled, arms))
    print(f"\n{agreement}")


if __name__ == "__main__":
    main()
