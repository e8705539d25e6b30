"""Drift monitoring: a collection of one topic (SciFact's biomedical abstracts) queried first
on-topic, then off-topic, through the real server; the figures move and the flag is raised
in describe and /metrics."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest

from embedsvc.client import Client
from tests.conftest import RunningServer

WINDOW = 30
OFF_TOPIC = [template.format(thing) for thing in (
    "pizza oven", "football boots", "electric guitar", "sailing boat", "car tire", "chess opening",
    "wedding dress", "jazz concert tickets") for template in (
    "how to choose a good {}", "best {} for beginners", "{} tips and tricks", "where to buy a cheap {}")]


@pytest.fixture(scope="module")
def queries(mini_beir: Path) -> list[str]:
    rows = [json.loads(line) for line in (mini_beir / "queries.jsonl").read_text().splitlines()]
    return [row["text"] for row in rows][:WINDOW]


def gauge(text: str, name: str, collection: str) -> float:
    found = re.search(rf'^{name}{{collection="{collection}"}} (\S+)$', text, re.MULTILINE)
    assert found, f"{name} of {collection} not in /metrics"
    return float(found.group(1))


def test_off_topic_queries_move_the_figures_and_raise_the_flag(served_home, queries: list[str]) -> None:
    settings = served_home.model_copy(update={"drift_window": WINDOW, "drift_min_queries": 20})
    with RunningServer(settings) as server, Client(server.url) as client:
        assert client.get_collection("mini").drift is None  # no dense query yet
        client.search("mini", "vitamin D", mode="lexical")
        client.search("mini", "vitamin D", mode="dense", filter={"year": {"$gte": 0}})
        assert client.get_collection("mini").drift is None  # lexical and filtered ones are left out

        for query in queries:
            client.search("mini", query, mode="dense")
        on_topic = client.get_collection("mini").drift
        assert on_topic is not None and on_topic.queries == WINDOW
        assert on_topic.low_score_share < 0.3 and not on_topic.drifting
        assert on_topic.mean_best_cosine > 0.4

        for query in OFF_TOPIC[:WINDOW]:
            client.search("mini", query, mode="auto")  # hybrid: its dense side is recorded
        off_topic = client.get_collection("mini").drift
        assert off_topic.queries == WINDOW  # a window of the most recent: on-topic ones are out
        assert off_topic.low_score_share > 0.5 and off_topic.drifting
        assert off_topic.mean_best_cosine < on_topic.mean_best_cosine - 0.2
        assert off_topic.centroid_distance > on_topic.centroid_distance + 0.1

        text = httpx.get(f"{server.url}/metrics").text
        assert gauge(text, "embedsvc_drift_drifting", "mini") == 1.0
        assert gauge(text, "embedsvc_drift_low_score_share", "mini") == pytest.approx(off_topic.low_score_share)
        assert gauge(text, "embedsvc_drift_queries", "mini") == WINDOW


def test_a_window_of_zero_turns_drift_monitoring_off(served_home) -> None:
    settings = served_home.model_copy(update={"drift_window": 0})
    with RunningServer(settings) as server, Client(server.url) as client:
        client.search("mini", "protein kinase", mode="dense")
        assert client.get_collection("mini").drift is None
