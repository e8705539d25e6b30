"""Query encoding: concurrent queries gathered into one encoder call, the query cache, and
the search and embed routes that use them (through the real server).

The unit tests use :class:`RecordingEncoder`, which computes a real vector per text
(deterministic, so a batched row can be compared exactly with a direct encode), records
every call, and can hold calls at a gate: a held call keeps the batcher busy while the
test lines up callers behind it, so what is gathered never depends on timing.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from embedsvc.client import Client
from embedsvc.search.query_encoding import QueryBatcher, QueryCache, QueryEncoder
from embedsvc.settings import Settings
from tests.conftest import RunningServer, wait_for

DEADLINE = 60.0  # seconds before a test calls a hang a failure


class RecordingEncoder:
    """An encoder whose vector of a text is seeded by the text's hash; records its calls."""

    def __init__(self, dim: int = 8, key: tuple[str, str] = ("weights", "torch")):
        self.key = key
        self.dim = dim
        self.calls: list[list[str]] = []
        self.started = threading.Semaphore(0)  # released once per call begun
        self.gate = threading.Event()  # calls wait here until it is set
        self.gate.set()
        self.fail_on: str | None = None
        self._lock = threading.Lock()

    def vector(self, text: str) -> np.ndarray:
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
        row = np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)
        return row / np.linalg.norm(row)

    def encode(self, texts: list[str]) -> np.ndarray:
        with self._lock:
            self.calls.append(list(texts))
        self.started.release()
        if not self.gate.wait(DEADLINE):
            raise TimeoutError("the test never opened the gate")
        if self.fail_on is not None and self.fail_on in texts:
            raise RuntimeError(f"cannot encode {self.fail_on!r}")
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        return np.stack([self.vector(t) for t in texts])


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=40) as executor:
        yield executor


def hold_busy(batcher: QueryBatcher, encoder: RecordingEncoder,
              pool: ThreadPoolExecutor) -> Future:
    """Start an encoder call and hold it at the gate: the batcher is busy until the gate opens."""
    encoder.gate.clear()
    held = pool.submit(batcher.encode_one, encoder, "held")
    assert encoder.started.acquire(timeout=DEADLINE), "the held call never started"
    return held


def line_up(batcher: QueryBatcher, encoder: RecordingEncoder, texts: list[str],
            pool: ThreadPoolExecutor) -> list[Future]:
    """One caller per text, each waiting in the batcher (behind a held call)."""
    futures = [pool.submit(batcher.encode_one, encoder, text) for text in texts]
    wait_for(lambda: batcher.waiting() == len(set(texts)), timeout=DEADLINE, interval=0.005)
    return futures


# --- the batcher ----------------------------------------------------------------------------
def test_concurrent_callers_share_one_call_and_get_their_own_rows(pool: ThreadPoolExecutor) -> None:
    encoder = RecordingEncoder()
    batcher = QueryBatcher(wait_s=0.0, max_size=32)
    held = hold_busy(batcher, encoder, pool)
    texts = [f"query {i}" for i in range(12)]
    futures = line_up(batcher, encoder, texts, pool)
    encoder.gate.set()
    rows = [f.result(timeout=DEADLINE) for f in futures]
    np.testing.assert_array_equal(held.result(timeout=DEADLINE), encoder.vector("held"))
    assert encoder.calls == [["held"], texts]  # the twelve in one call, in arrival order
    for text, row in zip(texts, rows, strict=True):
        np.testing.assert_array_equal(row, encoder.vector(text))
    assert (batcher.calls, batcher.texts) == (2, 13)


def test_batches_are_bounded_by_the_batch_size_and_go_in_order(pool: ThreadPoolExecutor) -> None:
    encoder = RecordingEncoder()
    batcher = QueryBatcher(wait_s=0.0, max_size=4)
    hold_busy(batcher, encoder, pool)
    texts = [f"q{i}" for i in range(10)]
    futures = []
    for text in texts:  # one at a time, so arrival order is known
        futures.append(pool.submit(batcher.encode_one, encoder, text))
        wait_for(lambda n=len(futures): batcher.waiting() == n, timeout=DEADLINE, interval=0.005)
    encoder.gate.set()
    for text, future in zip(texts, futures, strict=True):
        np.testing.assert_array_equal(future.result(timeout=DEADLINE), encoder.vector(text))
    assert encoder.calls == [["held"], texts[0:4], texts[4:8], texts[8:10]]


def test_a_lone_query_is_encoded_at_once_whatever_the_wait(pool: ThreadPoolExecutor) -> None:
    encoder = RecordingEncoder()
    batcher = QueryBatcher(wait_s=3600.0, max_size=32)  # an hour: waiting would be a hang
    row = pool.submit(batcher.encode_one, encoder, "alone").result(timeout=DEADLINE)
    np.testing.assert_array_equal(row, encoder.vector("alone"))
    assert encoder.calls == [["alone"]]


def test_a_full_batch_goes_without_waiting(pool: ThreadPoolExecutor) -> None:
    encoder = RecordingEncoder()
    batcher = QueryBatcher(wait_s=3600.0, max_size=3)
    hold_busy(batcher, encoder, pool)
    futures = line_up(batcher, encoder, ["a", "b", "c"], pool)
    encoder.gate.set()
    assert [f.result(timeout=DEADLINE).tolist() for f in futures] == \
        [encoder.vector(t).tolist() for t in "abc"]
    assert encoder.calls == [["held"], ["a", "b", "c"]]


def test_the_same_text_twice_in_a_batch_is_encoded_once(pool: ThreadPoolExecutor) -> None:
    encoder = RecordingEncoder()
    batcher = QueryBatcher(wait_s=0.0, max_size=32)
    hold_busy(batcher, encoder, pool)
    futures = line_up(batcher, encoder, ["same", "other", "same", "same"], pool)
    encoder.gate.set()
    rows = [f.result(timeout=DEADLINE) for f in futures]
    assert encoder.calls == [["held"], ["same", "other"]]
    for text, row in zip(["same", "other", "same", "same"], rows, strict=True):
        np.testing.assert_array_equal(row, encoder.vector(text))


def test_an_encoder_error_reaches_every_caller_of_the_batch(pool: ThreadPoolExecutor) -> None:
    encoder = RecordingEncoder()
    batcher = QueryBatcher(wait_s=0.0, max_size=32)
    held = hold_busy(batcher, encoder, pool)
    futures = line_up(batcher, encoder, ["fine", "boom", "also fine"], pool)
    encoder.fail_on = "boom"
    encoder.gate.set()
    held.result(timeout=DEADLINE)  # its own call did not fail
    for future in futures:
        with pytest.raises(RuntimeError, match="cannot encode 'boom'"):
            future.result(timeout=DEADLINE)
    encoder.fail_on = None  # and the batcher is not stuck: the next query is answered
    np.testing.assert_array_equal(pool.submit(batcher.encode_one, encoder, "after")
                                  .result(timeout=DEADLINE), encoder.vector("after"))


def test_batch_size_one_encodes_each_query_in_its_own_call_at_once(pool: ThreadPoolExecutor) -> None:
    """Off means as before: no query waits for another's call to end."""
    encoder = RecordingEncoder()
    batcher = QueryBatcher(wait_s=3600.0, max_size=1)
    encoder.gate.clear()
    futures = [pool.submit(batcher.encode_one, encoder, text) for text in ("x", "y", "z")]
    for _ in range(3):  # all three calls run at the same time, none waiting for the others
        assert encoder.started.acquire(timeout=DEADLINE)
    encoder.gate.set()
    assert sorted(map(tuple, encoder.calls)) == [("x",), ("y",), ("z",)]
    for text, future in zip("xyz", futures, strict=True):
        np.testing.assert_array_equal(future.result(timeout=DEADLINE), encoder.vector(text))


def test_many_threads_against_a_real_encoder_get_their_own_vectors(settings: Settings) -> None:
    """The bundled model, called through the batcher by 24 threads at once: each thread's
    vector is the one a direct encode of its text gives (padding in a batch moves floats
    in the last digits only), and no call holds more than the batch size."""
    from embedsvc.encoders import DEFAULT_MODEL, load_encoder

    model = load_encoder(DEFAULT_MODEL, settings.models_dir)

    class Counting:
        key = model.key
        calls: list[int] = []

        def encode(self, texts: list[str]) -> np.ndarray:
            self.calls.append(len(texts))
            return model.encode(texts)

    texts = [f"does vitamin {c} prevent illness number {i}" for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWX")]
    batcher = QueryBatcher(wait_s=0.002, max_size=8)
    counting = Counting()
    start = threading.Barrier(len(texts))

    def one(text: str) -> np.ndarray:
        start.wait(DEADLINE)
        return batcher.encode_one(counting, text)

    with ThreadPoolExecutor(len(texts)) as executor:
        rows = list(executor.map(one, texts))
    direct = model.encode(texts)
    np.testing.assert_allclose(np.stack(rows), direct, atol=1e-5)
    assert sum(counting.calls) == len(texts) and max(counting.calls) <= 8


# --- the cache and the searcher's entry point ------------------------------------------------
def test_a_cached_query_is_not_encoded_again_and_cannot_be_changed_by_a_caller() -> None:
    encoder = RecordingEncoder()
    queries = QueryEncoder(wait_ms=2.0, batch_size=32, cache_size=16)
    first = queries.encode(encoder, ["vitamin d"])
    first[0, :] = 0  # the caller's own array
    again = queries.encode(encoder, ["vitamin d"])
    assert encoder.calls == [["vitamin d"]]
    np.testing.assert_array_equal(again[0], encoder.vector("vitamin d"))
    cached = queries.cache.get((encoder.key, "vitamin d"))
    assert cached is not None and not cached.flags.writeable
    with pytest.raises(ValueError):
        cached[0] = 1.0
    assert (queries.cache.hits, queries.cache.misses) == (2, 1)


def test_the_cache_is_keyed_by_encoder_and_bounded() -> None:
    encoder, other = RecordingEncoder(), RecordingEncoder(key=("other weights", "torch"))
    queries = QueryEncoder(cache_size=3)
    for text in ("a", "b", "c"):
        queries.encode(encoder, [text])
    queries.encode(other, ["a"])  # another vector space: encoded, and "a" of encoder is evicted
    assert other.calls == [["a"]] and len(queries.cache) == 3
    queries.encode(encoder, ["b"])  # still cached
    queries.encode(encoder, ["a"])  # was evicted: encoded again
    assert encoder.calls == [["a"], ["b"], ["c"], ["a"]]


def test_lru_order_keeps_what_is_used() -> None:
    cache = QueryCache(2)
    row = np.ones(4, np.float32)
    cache.put(("k", "a"), row)
    cache.put(("k", "b"), row)
    assert cache.get(("k", "a")) is not None  # "a" is now the most recent
    cache.put(("k", "c"), row)
    assert cache.get(("k", "b")) is None and cache.get(("k", "a")) is not None
    row[:] = 5  # the caller's array is not the cached one
    assert float(cache.get(("k", "a"))[0]) == 1.0


def test_several_queries_use_the_cache_and_one_call_for_the_rest() -> None:
    encoder = RecordingEncoder()
    queries = QueryEncoder(cache_size=16)
    queries.encode(encoder, ["b"])
    out = queries.encode(encoder, ["a", "b", "c", "a"])
    assert encoder.calls == [["b"], ["a", "c", "a"]]
    np.testing.assert_array_equal(out, np.stack([encoder.vector(t) for t in "abca"]))
    assert queries.encode(encoder, []).shape == (0, encoder.dim)


def test_without_cache_nothing_is_kept() -> None:
    encoder = RecordingEncoder()
    queries = QueryEncoder(cache_size=0)
    queries.encode(encoder, ["a"])
    queries.encode(encoder, ["a"])
    queries.encode(encoder, ["b"], cache=False)
    assert encoder.calls == [["a"], ["a"], ["b"]] and len(queries.cache) == 0


# --- through the real server ----------------------------------------------------------------
def same_ranking(a: list, b: list, noise: float = 1e-4) -> bool:
    """Same scores rank by rank, and the same documents but where scores tie within float
    noise (a batch pads a query, moving the last digits): tied documents may swap places,
    or one of two tied at the last rank may be cut."""
    if len(a) != len(b) or any(abs(x.score - y.score) >= noise for x, y in zip(a, b, strict=True)):
        return False
    differ = {h.id for h in a} ^ {h.id for h in b}
    last = a[-1].score if a else 0.0
    return all(abs(h.score - last) < noise for h in a + b if h.id in differ)


@pytest.fixture(scope="module")
def uncached_server(served_home: Settings) -> Iterator[RunningServer]:
    """A server on the shared home with the query cache off: every search is encoded."""
    with RunningServer(served_home.model_copy(update={"query_cache_size": 0})) as running:
        yield running


def service_of(running: RunningServer):
    return running.server.config.app.state.service


def test_concurrent_searches_get_the_answers_of_sequential_ones(
        uncached_server: RunningServer, mini_beir: Path) -> None:
    texts = [json.loads(line)["text"] for line in (mini_beir / "queries.jsonl").read_text().splitlines()][:24]
    with Client(uncached_server.url, timeout=DEADLINE) as client:
        wait_for(lambda: client.readyz().status == "ready", timeout=DEADLINE)  # model and index
        sequential = {t: client.search("mini", t, k=10, mode="dense").hits for t in texts}
        start = threading.Barrier(len(texts))

        def one(text: str) -> list:
            start.wait(DEADLINE)
            return client.search("mini", text, k=10, mode="dense").hits

        with ThreadPoolExecutor(len(texts)) as executor:
            concurrent = dict(zip(texts, executor.map(one, texts), strict=True))
    for text in texts:
        assert same_ranking(concurrent[text], sequential[text]), text
    stats = service_of(uncached_server).queries.stats()  # each query encoded, once a search
    assert stats["cache_hits"] == 0 and stats["batch_texts"] == 2 * len(texts)


def test_search_and_embed_bodies_are_the_declared_models(settings: Settings) -> None:
    """The bodies the routes write themselves: UTF-8 text as is, an integer past 64 bits,
    float32 vectors; parsed by the client into the response models; the schema unchanged."""
    metadata = {"big": 10**30, "note": "crème brûlée ✓ 漢字", "ratio": 0.1}
    with RunningServer(settings) as running, Client(running.url, timeout=DEADLINE) as client:
        client.create_collection("notes")
        client.upsert("notes", [{"id": "n1", "title": "Ünïcode ✓", "text": "漢字 and crème",
                                 "metadata": metadata}])
        raw = httpx.post(f"{running.url}/v1/collections/notes/search",
                         json={"query": "crème", "mode": "lexical", "include_text": True,
                               "include_metadata": True})
        assert raw.status_code == 200 and raw.headers["content-type"] == "application/json"
        assert "漢字".encode() in raw.content and b"\\u" not in raw.content
        hit = client.search("notes", "crème", mode="lexical", include_metadata=True).hits[0]
        assert (hit.id, hit.title, hit.metadata) == ("n1", "Ünïcode ✓", metadata)

        out = client.embed(["vitamin D deficiency"])
        model = service_of(running).models.wait(out.model, DEADLINE)
        np.testing.assert_allclose(np.array(out.vectors, np.float32), model.encode(["vitamin D deficiency"]),
                                   atol=1e-6)
        schema = httpx.get(f"{running.url}/openapi.json").json()["paths"]
    for path, model_name in (("/v1/collections/{name}/search", "SearchResult"), ("/v1/embed", "Embeddings")):
        body = schema[path]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
        assert body["$ref"].endswith(f"/{model_name}")


def cache_count(url: str, result: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    found = re.search(rf'^embedsvc_query_cache_total{{result="{result}"}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def test_a_repeated_query_is_a_cache_hit_on_metrics(served_home: Settings) -> None:
    with RunningServer(served_home) as running, Client(running.url, timeout=DEADLINE) as client:
        wait_for(lambda: client.readyz().status == "ready", timeout=DEADLINE)
        before = {r: cache_count(running.url, r) for r in ("hit", "miss")}
        first = client.search("mini", "a query asked twice", k=5, mode="dense")
        again = client.search("mini", "a query asked twice", k=5, mode="dense")
        after = {r: cache_count(running.url, r) for r in ("hit", "miss")}
    assert [h.id for h in again.hits] == [h.id for h in first.hits]
    assert after["miss"] - before["miss"] == 1 and after["hit"] - before["hit"] == 1
