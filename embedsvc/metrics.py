"""Prometheus metrics: what an operator watches to see a service running degraded."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

SEARCHES = Counter(
    "embedsvc_search_total", "Searches answered, by the mode used and the fallback taken.",
    ["collection", "mode", "fallback"],
)
SEARCH_SECONDS = Histogram(
    "embedsvc_search_seconds", "Time to answer a search, encoding included.", ["mode"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
EMBEDDED_TEXTS = Counter("embedsvc_embed_texts_total", "Texts embedded through /v1/embed.")


def record_search(collection: str, mode: str, fallback: str | None, seconds: float) -> None:
    SEARCHES.labels(collection, mode, fallback or "none").inc()
    SEARCH_SECONDS.labels(mode).observe(seconds)
