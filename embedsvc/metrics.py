"""Prometheus metrics: what an operator watches to see a service running degraded.

Every metric lives in prometheus_client's default registry, so ``/metrics`` serves them
together with the process collector's ``process_*`` series (resident memory among them).
Per-collection gauges are read at scrape time from the live services (:func:`watch`):
describing a collection is a few SQLite counts, cheaper than keeping gauges up to date on
every write, and a collection deleted by another process simply stops being reported.
"""

from __future__ import annotations

import contextvars
import logging
import os
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

SEARCHES = Counter(
    "embedsvc_search_total", "Searches answered, by the mode used and the fallback taken.",
    ["collection", "mode", "fallback"],
)
SEARCH_SECONDS = Histogram(
    "embedsvc_search_seconds", "Time to answer a search, encoding included.", ["mode"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
EMBEDDED_TEXTS = Counter("embedsvc_embed_texts_total", "Texts embedded through /v1/embed.")

HTTP_REQUESTS = Counter(
    "embedsvc_http_requests_total", "HTTP requests answered, by route template, method and status.",
    ["route", "method", "status"],
)
HTTP_SECONDS = Histogram(
    "embedsvc_http_request_seconds", "Time from a request's arrival to the end of its response.",
    ["route", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
HTTP_IN_PROGRESS = Gauge(
    "embedsvc_http_requests_in_progress", "Requests being answered now (a scrape counts itself).",
    multiprocess_mode="livesum")
ENCODE_SECONDS = Histogram(
    "embedsvc_encode_seconds", "Time a model takes to encode one call's texts.", ["model"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
ENCODE_BATCH_SIZE = Histogram(
    "embedsvc_encode_batch_size", "Texts per encode call.", ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096),
)
QUERY_CACHE = Counter(
    "embedsvc_query_cache_total", "Query vectors looked up in the query cache, by result "
    "(hit, miss); none while EMBEDSVC_QUERY_CACHE_SIZE is 0.", ["result"],
)

INDEX_DAMAGE = Counter(
    "embedsvc_index_damaged_total", "Served index versions dropped because they were found "
    "damaged (files changed under the server, or impossible scores).", ["collection"],
)


def record_index_damage(collection: str) -> None:
    INDEX_DAMAGE.labels(collection).inc()


def record_search(collection: str, mode: str, fallback: str | None, seconds: float) -> None:
    SEARCHES.labels(collection, mode, fallback or "none").inc()
    SEARCH_SECONDS.labels(mode).observe(seconds)


def record_request(route: str, method: str, status: int, seconds: float) -> None:
    HTTP_REQUESTS.labels(route, method, str(status)).inc()
    HTTP_SECONDS.labels(route, method).observe(seconds)


def record_encode(model: str, texts: int, seconds: float) -> None:
    ENCODE_SECONDS.labels(model).observe(seconds)
    ENCODE_BATCH_SIZE.labels(model).observe(texts)


# --- per-collection gauges, read at scrape time ---------------------------------------------
class Describes(Protocol):
    """What the collector needs of :class:`embedsvc.service.Service`."""

    def collections(self) -> list[str]: ...

    def describe(self, name: str) -> dict[str, Any]: ...


_GAUGES = (
    ("embedsvc_collection_documents", "Documents a collection holds.", "documents"),
    ("embedsvc_collection_index_version", "Index version served (absent before the first build).",
     "index_version"),
    ("embedsvc_collection_fresh_vectors", "Vectors embedded since the served version, searched "
     "beside it until a compaction folds them in.", "fresh_vectors"),
    ("embedsvc_collection_deleted_vectors", "Vectors of the served version deleted or replaced "
     "since (tombstones).", "deleted_vectors"),
    ("embedsvc_collection_pending_documents", "Documents written but not embedded yet.", "pending"),
    ("embedsvc_collection_last_compaction_timestamp_seconds", "Unix time of the last compaction "
     "(absent if none).", "last_compaction"),
    ("embedsvc_drift_queries", "Recent dense queries in the drift window.", "drift.queries"),
    ("embedsvc_drift_mean_best_cosine", "Mean cosine of recent queries to their best hit.",
     "drift.mean_best_cosine"),
    ("embedsvc_drift_low_score_share", "Share of recent queries whose best hit scores below "
     "EMBEDSVC_DRIFT_LOW_SCORE.", "drift.low_score_share"),
    ("embedsvc_drift_centroid_distance", "1 - cosine of the mean recent query and the mean corpus "
     "vector.", "drift.centroid_distance"),
    ("embedsvc_drift_drifting", "1 when the collection is marked drifting.", "drift.drifting"),
)


def _field(info: dict[str, Any], key: str) -> float | None:
    """A number of a description, ``a.b`` reaching into a nested one (a flag counts as 0/1)."""
    value: Any = info
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return float(value) if isinstance(value, int | float) else None

_services: weakref.WeakSet[Describes] = weakref.WeakSet()
# The service of the app answering the current request: its scrape reports its own home only.
current_service: contextvars.ContextVar[Describes | None] = contextvars.ContextVar(
    "embedsvc_current_service", default=None)


class CollectionCollector(Collector):
    """Yields the per-collection gauges of the service answering the scrape (or, outside a
    request, of every live service, the first one reporting a name winning)."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        families = {name: GaugeMetricFamily(name, doc, labels=["collection"]) for name, doc, _ in _GAUGES}
        for name, info in _descriptions():
            for family, _, key in _GAUGES:
                value = _field(info, key)
                if value is not None:
                    families[family].add_metric([name], value)
        yield from families.values()
        yield from _ingest_families()

    def describe(self) -> list:
        return []  # nothing to check at registration: the series depend on the home folder


def _descriptions() -> Iterator[tuple[str, dict[str, Any]]]:
    return _each(lambda service, name: service.describe(name))


def _each(read: Callable[[Any, str], Any]) -> Iterator[tuple[str, Any]]:
    """(name, ``read(service, name)``) for each collection of the services in scope (the
    one answering the scrape, else every live one, the first reporting a name winning); a
    collection that cannot be read (deleted meanwhile, damaged) is skipped."""
    current = current_service.get()
    services = [current] if current is not None else list(_services)
    seen: set[str] = set()
    for service in services:
        try:
            names = service.collections()
        except Exception:  # noqa: BLE001 - a scrape must never fail
            log.exception("metrics: cannot list the collections")
            continue
        for name in names:
            if name in seen:
                continue
            try:
                value = read(service, name)
            except Exception as exc:  # noqa: BLE001 - deleted meanwhile, damaged: skipped
                log.debug("metrics: %s skipped: %s", name, exc)
                continue
            seen.add(name)
            yield name, value


# --- stream ingestion, read at scrape time -----------------------------------------------------
_INGEST_LABELS = ["collection", "stream", "group"]


def _ingest_families() -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
    """The progress of ``embedsvc ingest`` consumers. They run in their own processes and
    record it in the collection's SQLite (:mod:`embedsvc.ingest.progress`), read here like
    the collection gauges: a collection gone, or never ingested into, reports nothing."""
    from embedsvc.ingest.progress import read_progress

    entries = CounterMetricFamily("embedsvc_ingest_entries", "Stream entries written into the "
                                  "collection (at least once: redeliveries count).", labels=_INGEST_LABELS)
    dead = CounterMetricFamily("embedsvc_ingest_dead_lettered", "Malformed stream entries moved "
                               "to the dead-letter stream.", labels=_INGEST_LABELS)
    lag = GaugeMetricFamily("embedsvc_ingest_lag_entries", "Entries of the stream the group has "
                            "not read yet, as of the last update.", labels=_INGEST_LABELS)
    pending = GaugeMetricFamily("embedsvc_ingest_pending_entries", "Entries read by the group's "
                                "consumers and not acknowledged yet, as of the last update.",
                                labels=_INGEST_LABELS)
    updated = GaugeMetricFamily("embedsvc_ingest_updated_timestamp_seconds", "Unix time a consumer "
                                "last recorded progress (stale: none is running).", labels=_INGEST_LABELS)
    for name, found in _each(lambda service, name: read_progress(service.store(name))):
        for row in found:
            labels = [name, row.stream, row.group]
            entries.add_metric(labels, row.ingested)
            dead.add_metric(labels, row.dead_lettered)
            updated.add_metric(labels, row.updated_at)
            if row.lag is not None:
                lag.add_metric(labels, row.lag)
            if row.pending is not None:
                pending.add_metric(labels, row.pending)
    yield from (entries, dead, lag, pending, updated)


_collector = CollectionCollector()
REGISTRY.register(_collector)


def watch(service: Describes) -> None:
    """Report ``service``'s collections at scrape time, for as long as it lives."""
    _services.add(service)


def exposition(workers_dir: Path | None) -> bytes:
    """What a scrape gets. With ``serve --workers N`` (``workers_dir`` set) each worker
    writes its counters to that folder and any of them answers with all of them merged;
    ``process_*`` then describe the worker that answered."""
    if workers_dir is None:
        return generate_latest(REGISTRY)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(workers_dir))
    registry.register(ProcessCollector(registry=None))
    registry.register(_collector)
    return generate_latest(registry)


def worker_stopped(workers_dir: Path | None) -> None:
    """A worker's live gauges (requests in progress) leave the merged view when it exits."""
    if workers_dir is not None:
        mark_process_dead(os.getpid(), str(workers_dir))
