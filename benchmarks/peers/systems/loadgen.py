"""A bounded closed-loop load generator in Python, for what wrk cannot express.

N client threads, each sending its next query as soon as the previous one is answered,
cycling through the query list, for a fixed duration after a warm-up; loopback only.
Two kinds of client:

- ``http``: a plain HTTP request per query over a kept-alive connection (stdlib only),
  used for every system when wrk is not installed.
- ``chroma``: Chroma's own client (``HttpClient`` + the sentence-transformers embedding
  function), run in the chromadb venv: Chroma embeds the query in the client and sends
  the vector to ``chroma run``, so its text search over HTTP is client-side embedding
  plus a server query, and that is what is timed here.

Prints one JSON line: requests, errors, seconds, latency percentiles in ms.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

# One call: a query text in, True when the answer was a success.
Call = Callable[[str], bool]


def http_client(host: str, port: int, spec: dict) -> Callable[[], Call]:
    """A factory of per-thread callers sending ``spec``'s request (one connection each).

    ``spec``: ``{"method": "POST", "path": "/search", "body": {"query": "{q}"} | None,
    "query_param": "query" | None}``; ``{q}`` in body strings is the query text.
    """
    from urllib.parse import quote

    def connect() -> http.client.HTTPConnection:
        conn = http.client.HTTPConnection(host, port, timeout=60)
        conn.connect()
        # as wrk and httpx do: no Nagle delay on small requests
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    def make() -> Call:
        conn = connect()

        def call(text: str) -> bool:
            nonlocal conn
            path, body, headers = spec["path"], None, {}
            if spec.get("query_param"):
                path += ("&" if "?" in path else "?") + f"{spec['query_param']}={quote(text)}"
            if spec.get("body") is not None:
                body = json.dumps({k: (text if v == "{q}" else v) for k, v in spec["body"].items()}).encode()
                headers["Content-Type"] = "application/json"
            try:
                conn.request(spec["method"], path, body=body, headers=headers)
                response = conn.getresponse()
                response.read()
                return 200 <= response.status < 300
            except (OSError, http.client.HTTPException):
                conn.close()
                try:
                    conn = connect()
                except OSError:
                    pass  # the next call fails and counts, and tries again
                return False

        return call

    return make


def chroma_client(host: str, port: int, spec: dict) -> Callable[[], Call]:
    """Per-thread Chroma HTTP clients sharing one embedding function (one model in memory)."""
    import chromadb
    from chromadb.utils.embedding_functions import SentenceTransformerEmbeddingFunction

    ef = SentenceTransformerEmbeddingFunction(model_name=spec["model"], device="cpu")

    def make() -> Call:
        client = chromadb.HttpClient(host=host, port=port)
        collection = client.get_collection(spec["collection"], embedding_function=ef)

        def call(text: str) -> bool:
            try:
                ids = collection.query(query_texts=[text], n_results=spec.get("k", 10), include=["distances"])["ids"]
                return bool(ids and ids[0])
            except Exception:  # noqa: BLE001 - any failure is an error count, as wrk counts them
                return False

        return call

    return make


def run(make: Callable[[], Call], queries: list[str], clients: int, seconds: float) -> dict:
    """Closed loop: ``clients`` threads for ``seconds``; latencies of successful calls only."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    callers = [make() for _ in range(clients)]  # connections made before the clock starts
    start_line = threading.Barrier(clients + 1)
    deadline = [0.0]

    def worker(n: int) -> None:
        call, i = callers[n], n * 37  # threads start at different queries
        start_line.wait()
        while time.perf_counter() < deadline[0]:
            text = queries[i % len(queries)]
            i += 1
            t0 = time.perf_counter()
            ok = call(text)
            if ok:
                latencies[n].append((time.perf_counter() - t0) * 1000)
            else:
                errors[n] += 1

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(clients)]
    for t in threads:
        t.start()
    deadline[0] = time.perf_counter() + seconds
    began = time.perf_counter()
    start_line.wait()
    for t in threads:
        t.join(seconds + 120)
    elapsed = time.perf_counter() - began
    samples = [x for per in latencies for x in per]
    cuts = statistics.quantiles(samples, n=100, method="inclusive") if len(samples) >= 2 else [float("nan")] * 99
    return {"requests": len(samples), "errors": sum(errors), "seconds": elapsed,
            "p50_ms": cuts[49], "p95_ms": cuts[94], "p99_ms": cuts[98]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--kind", choices=("http", "chroma"), required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--spec", required=True, help="JSON: the request (http) or model and collection (chroma)")
    p.add_argument("--queries", type=Path, required=True, help="JSON list of [id, text]")
    p.add_argument("--clients", type=int, required=True)
    p.add_argument("--duration", type=float, required=True)
    p.add_argument("--warmup", type=float, default=0.0)
    args = p.parse_args()
    queries = [text for _, text in json.loads(args.queries.read_text())]
    kinds = {"http": http_client, "chroma": chroma_client}
    make = kinds[args.kind]("127.0.0.1", args.port, json.loads(args.spec))
    if args.warmup > 0:
        run(make, queries, 1, args.warmup)
    print("LOADJSON " + json.dumps(run(make, queries, args.clients, args.duration)), flush=True)


if __name__ == "__main__":
    main()
