"""A running server facing trouble: index files damaged under it, readiness while loading
and stopping, and SIGTERM with a request in flight."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

import faiss
import httpx
import numpy as np
import pytest

from embedsvc.client import Client
from embedsvc.settings import Settings
from indexing.job import BuildJob, BuildOptions
from tests.conftest import RunningServer, make_settings, wait_for, write_jsonl
from tests.test_processes import ServerProcess


@pytest.fixture
def built(tmp_path: Path, bundled_model: Path, mini_rows: list[dict]):
    """A home with a flat dense index of 40 documents; returns (settings, shard path)."""
    def make(**overrides) -> tuple[Settings, Path]:
        settings = make_settings(tmp_path / "home", bundled_model, **overrides)
        BuildJob(settings, "c", write_jsonl(tmp_path / "docs.jsonl", mini_rows[:40]),
                 BuildOptions(index="flat")).run()
        folder = settings.collections_dir / "c" / "versions" / "0001"
        return settings, folder / json.loads((folder / "manifest.json").read_text())["shards"][0]["file"]
    return make


def overwrite_vectors(shard: Path, value: float) -> bytes:
    """Write ``value`` over every stored vector of a flat shard, in place (the server has the
    file memory-mapped); returns the original bytes."""
    original = shard.read_bytes()
    outer = faiss.read_index(str(shard))  # an IDMap2 around a flat index: keep it alive
    codes = faiss.vector_to_array(faiss.downcast_index(outer.index).codes).tobytes()
    start = original.find(codes[:256])
    assert start > 0
    with open(shard, "r+b") as fh:
        fh.seek(start)
        fh.write(np.full(len(codes) // 4, value, np.float32).tobytes())
    return original


def damage_count(url: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith('embedsvc_index_damaged_total{collection="c"}'):
            return float(line.split()[-1])
    return 0.0


def test_impossible_scores_drop_the_damaged_index(built, caplog):
    settings, shard = built(verify_interval_seconds=0)  # no background check: scores alone
    with RunningServer(settings) as server, Client(server.url, retries=0) as client:
        damaged = damage_count(server.url)  # the registry is the test process's: count from here
        before = client.search("c", "vitamin D deficiency", k=5, mode="auto")
        assert before.mode == "hybrid" and before.fallback is None
        overwrite_vectors(shard, 1000.0)
        after = client.search("c", "vitamin D deficiency", k=5, mode="auto")
        assert after.mode == "lexical" and after.fallback == "index_unavailable"
        assert all(abs(hit.score) < 100 for hit in after.hits)
        assert damage_count(server.url) == damaged + 1
        with pytest.raises(Exception, match="cannot be loaded"):
            client.search("c", "vitamin D deficiency", mode="dense")
        ready = httpx.get(f"{server.url}/readyz").json()
        assert ready["indexes"]["c"] == "failed" and ready["status"] == "degraded"
    assert any("damaged" in r.getMessage() and "impossible" in r.getMessage() for r in caplog.records)


def test_background_check_finds_damage_and_lets_the_restored_files_back(built):
    settings, shard = built(verify_interval_seconds=0.2)
    with RunningServer(settings) as server, Client(server.url) as client:
        assert client.search("c", "vitamin D", mode="dense").fallback is None
        damaged = damage_count(server.url)
        original = overwrite_vectors(shard, 0.0)  # plausible scores: only the checksum tells
        wait_for(lambda: client.search("c", "vitamin D").fallback == "index_unavailable", timeout=30)
        assert damage_count(server.url) == damaged + 1
        shard.write_bytes(original)  # restored: the check loads the version again
        wait_for(lambda: client.search("c", "vitamin D").fallback is None, timeout=30)
        assert client.search("c", "vitamin D", mode="dense").index_version == 1


def test_readyz_waits_for_models_and_indexes(built):
    settings, _ = built()
    with RunningServer(settings) as server:
        def ready() -> dict:
            answer = httpx.get(f"{server.url}/readyz")
            body = answer.json()
            assert (answer.status_code == 200) == (body["status"] == "ready")
            return body if body["status"] == "ready" else {}

        body = wait_for(ready, timeout=120)
        assert body["indexes"] == {"c": "ready"}
        assert set(body["models"].values()) == {"ready"} and settings.default_model in body["models"]


def test_sigterm_drains_then_finishes_the_request_in_flight(built, tmp_path: Path):
    settings, _ = built(shutdown_timeout_seconds=60, shutdown_drain_seconds=2)
    texts = [f"sentence number {i} about vitamin D and bone health " * 40 for i in range(256)]
    log = tmp_path / "server.log"
    with ServerProcess(settings, log=log) as server:
        wait_for(lambda: httpx.get(f"{server.url}/readyz").status_code == 200, timeout=120)
        answer: dict = {}

        def slow_embed() -> None:
            answer["response"] = httpx.post(f"{server.url}/v1/embed", json={"texts": texts}, timeout=120)

        thread = threading.Thread(target=slow_embed)
        thread.start()
        wait_for(lambda: in_progress(server.url) >= 2, timeout=30, interval=0.01)  # it and this scrape
        os.kill(server.process.pid, signal.SIGTERM)
        draining = wait_for(lambda: stopping(server.url), timeout=10, interval=0.01)
        assert draining.status_code == 503 and draining.json()["status"] == "stopping"
        thread.join(timeout=120)
        assert answer["response"].status_code == 200
        assert len(answer["response"].json()["vectors"]) == 256
        assert server.process.wait(timeout=60) in (0, -signal.SIGTERM)
    said = log.read_text()
    assert "shutting down: /readyz answers 503" in said
    assert "stopped: databases closed" in said and "Traceback" not in said


def stopping(url: str) -> httpx.Response | None:
    answer = httpx.get(f"{url}/readyz")
    return answer if answer.json()["status"] == "stopping" else None


def in_progress(url: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith("embedsvc_http_requests_in_progress "):
            return float(line.split()[-1])
    return 0.0



def test_a_damaged_index_with_fresh_vectors_says_so(built):
    """Fresh vectors alone would be a partial dense answer: the fallback is said instead."""
    settings, shard = built(verify_interval_seconds=0)
    with RunningServer(settings) as server, Client(server.url, retries=0) as client:
        client.upsert("c", [{"id": "fresh", "text": "Penguins huddle together in the Antarctic winter."}])
        wait_for(lambda: client.get_collection("c").fresh_vectors > 0 and not client.get_collection("c").pending)
        assert client.search("c", "penguins in the cold", mode="dense").hits[0].id == "fresh"
        overwrite_vectors(shard, 1000.0)
        after = client.search("c", "penguins in the cold")
        assert (after.mode, after.fallback) == ("lexical", "index_unavailable")
        assert after.hits[0].id == "fresh"  # still found, lexically
        again = client.search("c", "penguins in the cold", mode="auto")
        assert again.fallback == "index_unavailable"
