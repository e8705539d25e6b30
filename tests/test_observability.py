"""Observability through the real server: request ids, the JSON access log, the Prometheus
metrics (requests, latency, encoding, per-collection gauges, process memory) and the
Grafana dashboard's queries, which must name only series a running server exports."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from embedsvc import metrics
from embedsvc.api.observability import ACCESS_LOGGER
from embedsvc.keys import Scope as KeyScope
from embedsvc.keys import create_key
from embedsvc.settings import Settings
from tests.conftest import REPO, RunningServer, make_settings, wait_for

DASHBOARD = REPO / "deploy" / "grafana" / "embedsvc.json"
SEARCH_ROUTE = "/v1/collections/{name}/search"
Samples = dict[tuple[str, frozenset], float]


class Lines(logging.Handler):
    """Collects the access log's lines."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def of(self, request_id: str) -> dict | None:
        for line in self.lines:
            entry = json.loads(line)
            if entry["request_id"] == request_id:
                return entry
        return None


@pytest.fixture
def access_lines() -> Iterator[Lines]:
    handler = Lines()
    logger = logging.getLogger(ACCESS_LOGGER)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


@pytest.fixture(scope="module")
def http(server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def live_home(tmp_path_factory: pytest.TempPathFactory, bundled_model: Path) -> Settings:
    # no automatic compaction: the tests count tombstones
    return make_settings(tmp_path_factory.mktemp("observed-home"), bundled_model, compact_deleted_ratio=1.0)


@pytest.fixture(scope="module")
def live(live_home: Settings) -> Iterator[httpx.Client]:
    """A server of its own, for collections the tests create, compact and delete."""
    with RunningServer(live_home) as running, httpx.Client(base_url=running.url, timeout=60) as client:
        yield client


def scrape(client: httpx.Client) -> Samples:
    response = client.get("/metrics")
    assert response.status_code == 200
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def requests_of(client: httpx.Client, route: str, method: str, status: str) -> float:
    return value(scrape(client), "embedsvc_http_requests_total", route=route, method=method, status=status)


def counted_after(client: httpx.Client, before: float, route: str, method: str, status: str) -> float:
    """The request counter once it passed ``before`` (it moves when the response is sent)."""
    return wait_for(lambda: (now := requests_of(client, route, method, status)) > before and now, timeout=10)


# --- request ids and the access log ---------------------------------------------------------
def test_request_id_is_honoured_and_logged(http: httpx.Client, access_lines: Lines) -> None:
    response = http.get("/healthz", headers={"X-Request-ID": "trace-42/a.b"})
    assert response.headers["x-request-id"] == "trace-42/a.b"
    entry = wait_for(lambda: access_lines.of("trace-42/a.b"), timeout=10)
    assert entry["method"] == "GET" and entry["route"] == "/healthz" and entry["path"] == "/healthz"
    assert entry["status"] == 200 and entry["duration_ms"] >= 0 and entry["bytes_out"] > 0
    assert entry["client"] == "127.0.0.1" and entry["key"] is None  # no keys configured
    assert {"ts", "bytes_in"} <= entry.keys()


@pytest.mark.parametrize("sent", [None, "x" * 500, "two\twords", "caf\xe9"],
                         ids=["absent", "too-long", "control-char", "not-ascii"])
def test_request_id_is_generated_when_absent_or_insane(http: httpx.Client, sent: str | None) -> None:
    headers = {} if sent is None else {"X-Request-ID": sent.encode("latin-1")}
    given = http.get("/healthz", headers=headers).headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", given)


def test_access_log_never_holds_the_authorization_header(http: httpx.Client, access_lines: Lines) -> None:
    rid = "no-secrets-here"
    http.post("/v1/collections/mini/search", json={"query": "vitamin D", "k": 3},
              headers={"Authorization": "Bearer secret-value-123", "X-Request-ID": rid})
    entry = wait_for(lambda: access_lines.of(rid), timeout=10)
    assert entry["route"] == SEARCH_ROUTE and entry["path"] == "/v1/collections/mini/search"
    assert entry["bytes_in"] > 0
    assert not any("secret-value-123" in line for line in access_lines.lines)


def test_access_log_is_one_json_line_per_request(http: httpx.Client, access_lines: Lines) -> None:
    rids = [f"one-line-{i}" for i in range(3)]
    for rid in rids:
        http.get("/v1/collections", headers={"X-Request-ID": rid})
    wait_for(lambda: all(access_lines.of(rid) for rid in rids), timeout=10)
    assert sum(json.loads(line)["request_id"] in rids for line in access_lines.lines) == 3


# --- request metrics ------------------------------------------------------------------------
def test_requests_are_counted_by_route_template(http: httpx.Client) -> None:
    before = requests_of(http, SEARCH_ROUTE, "POST", "200")
    assert http.post("/v1/collections/mini/search", json={"query": "vitamin D", "k": 3}).status_code == 200
    assert counted_after(http, before, SEARCH_ROUTE, "POST", "200") == before + 1

    missing = requests_of(http, SEARCH_ROUTE, "POST", "404")
    assert http.post("/v1/collections/no-such-coll-xyz/search", json={"query": "q"}).status_code == 404
    assert counted_after(http, missing, SEARCH_ROUTE, "POST", "404") == missing + 1

    unmatched = requests_of(http, "unmatched", "GET", "404")
    assert http.get("/no/such/endpoint-xyz").status_code == 404
    assert counted_after(http, unmatched, "unmatched", "GET", "404") == unmatched + 1

    text = http.get("/metrics").text
    assert "no-such-coll-xyz" not in text and "endpoint-xyz" not in text  # raw paths never become labels
    samples = scrape(http)
    assert value(samples, "embedsvc_http_request_seconds_count", route=SEARCH_ROUTE, method="POST") >= 2
    assert value(samples, "embedsvc_http_request_seconds_bucket", route=SEARCH_ROUTE, method="POST",
                 le="+Inf") >= 2
    assert value(samples, "embedsvc_search_total", collection="mini", mode="hybrid", fallback="none") >= 1


def test_unknown_methods_share_one_label(http: httpx.Client) -> None:
    before = requests_of(http, "unmatched", "OTHER", "404")
    # a method the HTTP parser takes (httptools refuses unregistered tokens such as BREW itself)
    http.request("PROPFIND", "/coffee")
    assert counted_after(http, before, "unmatched", "OTHER", "404") == before + 1
    assert "PROPFIND" not in http.get("/metrics").text


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory, bundled_model: Path) -> Iterator[tuple[httpx.Client, str]]:
    """A server with a read key named 'reader' and a 1 KiB body limit."""
    settings = make_settings(tmp_path_factory.mktemp("guarded-home"), bundled_model, max_body_bytes=1024,
                             preload_models=False)
    key = create_key(settings, KeyScope.read, "reader")
    with RunningServer(settings) as running, httpx.Client(base_url=running.url, timeout=60) as client:
        yield client, key


def test_the_key_name_is_logged_never_the_key(guarded: tuple[httpx.Client, str], access_lines: Lines) -> None:
    client, key = guarded
    client.get("/v1/collections", headers={"Authorization": f"Bearer {key}", "X-Request-ID": "with-key"})
    assert wait_for(lambda: access_lines.of("with-key"), timeout=10)["key"] == "reader"
    before = requests_of(client, "/v1/collections", "GET", "401")
    refused = client.get("/v1/collections", headers={"Authorization": "Bearer secret-value-123",
                                                     "X-Request-ID": "bad-key"})
    assert refused.status_code == 401 and refused.headers["x-request-id"] == "bad-key"
    assert counted_after(client, before, "/v1/collections", "GET", "401") == before + 1
    entry = wait_for(lambda: access_lines.of("bad-key"), timeout=10)
    assert (entry["route"], entry["status"], entry["key"]) == ("/v1/collections", 401, None)
    assert not any(key in line or "secret-value-123" in line for line in access_lines.lines)


def test_refused_bodies_are_counted_and_logged(guarded: tuple[httpx.Client, str], access_lines: Lines) -> None:
    """The middleware is outermost: a 413 the body limit answers before routing is counted
    (as unmatched: no route ran) and logged with its path."""
    client, key = guarded
    before = requests_of(client, "unmatched", "POST", "413")
    response = client.post("/v1/embed", json={"texts": ["x" * 2000]},
                           headers={"Authorization": f"Bearer {key}", "X-Request-ID": "big-body"})
    assert response.status_code == 413 and response.headers["x-request-id"] == "big-body"
    assert counted_after(client, before, "unmatched", "POST", "413") == before + 1
    entry = wait_for(lambda: access_lines.of("big-body"), timeout=10)
    assert (entry["route"], entry["path"], entry["status"]) == ("unmatched", "/v1/embed", 413)


def test_encoding_is_timed_by_model(http: httpx.Client) -> None:
    model = "all-MiniLM-L6-v2"
    before = scrape(http)
    response = http.post("/v1/embed", json={"texts": ["one", "two", "three"]})
    assert response.status_code == 200
    after = scrape(http)
    assert value(after, "embedsvc_encode_seconds_count", model=model) > \
        value(before, "embedsvc_encode_seconds_count", model=model)
    assert value(after, "embedsvc_encode_batch_size_sum", model=model) >= \
        value(before, "embedsvc_encode_batch_size_sum", model=model) + 3
    assert value(after, "embedsvc_encode_seconds_sum", model=model) > 0


def test_process_memory_is_exported(http: httpx.Client) -> None:
    assert value(scrape(http), "process_resident_memory_bytes") > 10_000_000


# --- per-collection gauges ------------------------------------------------------------------
def test_collection_gauges_of_the_served_home(http: httpx.Client, mini_rows: list[dict]) -> None:
    samples = scrape(http)
    assert value(samples, "embedsvc_collection_documents", collection="mini") == len(mini_rows)
    assert value(samples, "embedsvc_collection_documents", collection="lexonly") == len(mini_rows)
    assert value(samples, "embedsvc_collection_index_version", collection="mini") >= 1
    assert ("embedsvc_collection_index_version", frozenset({("collection", "lexonly")})) not in samples
    for gauge in ("fresh_vectors", "deleted_vectors", "pending_documents"):
        assert (f"embedsvc_collection_{gauge}", frozenset({("collection", "mini")})) in samples


@pytest.fixture(scope="module")
def notes(live: httpx.Client) -> httpx.Client:
    """'notes' on the live server: three documents, embedded, compacted, then one deleted."""
    assert live.post("/v1/collections", json={"name": "notes"}).status_code == 201
    docs = [{"id": f"d{i}", "text": f"note number {i} about sleep and memory"} for i in range(3)]
    assert live.put("/v1/collections/notes/documents", json={"documents": docs}).status_code == 200
    wait_for(lambda: live.get("/v1/collections/notes").json()["fresh_vectors"] == 3, timeout=120)
    job = live.post("/v1/collections/notes/compact").json()
    done = wait_for(lambda: (j := live.get(f"/v1/jobs/{job['id']}").json())["state"] in ("done", "failed") and j,
                    timeout=120)
    assert done["state"] == "done", done
    assert live.post("/v1/collections/notes/documents/delete", json={"ids": ["d0"]}).status_code == 200
    return live


def test_collection_gauges_follow_writes_and_compaction(notes: httpx.Client) -> None:
    samples = scrape(notes)
    gauge = lambda name: value(samples, f"embedsvc_collection_{name}", collection="notes")  # noqa: E731
    assert gauge("documents") == 2 and gauge("deleted_vectors") == 1
    assert gauge("fresh_vectors") == 0 and gauge("pending_documents") == 0
    assert gauge("index_version") >= 1 and gauge("last_compaction_timestamp_seconds") > 1.6e9
    # a server reports its own home only: the session server's collections are not here
    assert ("embedsvc_collection_documents", frozenset({("collection", "mini")})) not in samples


def test_metrics_survive_a_deleted_collection(live: httpx.Client) -> None:
    assert live.post("/v1/collections", json={"name": "doomed"}).status_code == 201
    assert ("embedsvc_collection_documents", frozenset({("collection", "doomed")})) in scrape(live)
    assert live.delete("/v1/collections/doomed").status_code == 200
    assert ("embedsvc_collection_documents", frozenset({("collection", "doomed")})) not in scrape(live)


def test_a_collection_that_cannot_be_described_is_skipped() -> None:
    class Flaky:
        def collections(self) -> list[str]:
            return ["gone", "ok"]

        def describe(self, name: str) -> dict:
            if name == "gone":
                raise FileNotFoundError("deleted meanwhile")
            return {"documents": 5, "index_version": None, "last_compaction": None}

    token = metrics.current_service.set(Flaky())
    try:
        families = {f.name: f for f in metrics.CollectionCollector().collect()}
    finally:
        metrics.current_service.reset(token)
    assert [(s.labels, s.value) for s in families["embedsvc_collection_documents"].samples] == \
        [({"collection": "ok"}, 5.0)]
    assert families["embedsvc_collection_index_version"].samples == []


# --- the Grafana dashboard --------------------------------------------------------------------
def dashboard_queries() -> list[str]:
    found: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key, item in node.items():
                if key in ("expr", "definition") and isinstance(item, str):
                    found.append(item)
                walk(item)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(json.loads(DASHBOARD.read_text()))
    return found


def test_dashboard_queries_name_only_exported_series(notes: httpx.Client) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] >= 39 and dashboard["uid"] == "embedsvc"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["collection"]["definition"] == "label_values(embedsvc_collection_documents, collection)"

    notes.post("/v1/collections/notes/search", json={"query": "sleep", "k": 2})
    notes.post("/v1/embed", json={"texts": ["a text"]})
    notes.get("/v1/collections/nowhere")
    exported = {name for name, _ in scrape(notes)}

    queries = dashboard_queries()
    assert len(queries) >= 15
    named = {name for query in queries for name in re.findall(r"\b(?:embedsvc|process)_\w+", query)}
    assert {"embedsvc_http_requests_total", "embedsvc_http_request_seconds_bucket", "embedsvc_search_total",
            "embedsvc_encode_seconds_bucket", "embedsvc_encode_batch_size_bucket",
            "embedsvc_collection_last_compaction_timestamp_seconds", "process_resident_memory_bytes"} <= named
    assert named - exported == set()
