"""The server as separate processes: acknowledged writes survive a SIGKILL, and with
``serve --workers 2`` every worker sees every write and a leader killed in the middle of a
compaction is replaced without losing a write or switching half a version."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest

from embedsvc.client import Client, EmbedsvcError
from embedsvc.collection import create_collection, open_store
from embedsvc.settings import Settings, environment_of
from indexing.check import check_collection
from indexing.job import BuildJob, BuildOptions
from tests.conftest import free_port, make_settings, wait_for


class ServerProcess:
    """``embedsvc serve`` in a child process (killable), on a free loopback port."""

    def __init__(self, settings: Settings, workers: int = 1, log: Path | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "embedsvc", "--home", str(settings.home), "serve",
                   "--port", str(self.port), "--workers", str(workers)]
        env = {**os.environ, **environment_of(settings), "COLUMNS": "200"}
        output = log.open("w") if log is not None else subprocess.DEVNULL
        self.process = subprocess.Popen(command, env=env, stdout=output, stderr=output,
                                        start_new_session=True)
        wait_for(self._up, timeout=120, interval=0.2)

    def _up(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"the server exited with {self.process.returncode}")
        try:
            return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process.poll() is None:
            self.kill()


def fresh_client(url: str) -> Client:
    """A client that opens a new connection per request, so requests reach any worker."""
    transport = httpx.HTTPTransport(limits=httpx.Limits(max_keepalive_connections=0))
    return Client(url, timeout=60, transport=transport)


def retried(call, attempts: int = 50):
    """A call through a server whose workers may be restarting."""
    for attempt in range(attempts):
        try:
            return call()
        except EmbedsvcError:
            if attempt == attempts - 1:
                raise
            threading.Event().wait(0.2)


@pytest.fixture
def proc_settings(tmp_path: Path, bundled_model: Path) -> Settings:
    return make_settings(tmp_path / "home", bundled_model, lease_seconds=2)


def test_acknowledged_writes_survive_a_sigkill(proc_settings: Settings) -> None:
    create_collection(proc_settings.collections_dir, "c", "all-MiniLM-L6-v2")
    acked: list[str] = []
    stop = threading.Event()
    with ServerProcess(proc_settings) as server:
        def write_forever() -> None:
            with Client(server.url, timeout=10) as client:
                for batch in range(10_000):
                    docs = [{"id": f"b{batch}-{i}", "text": f"token{batch}x{i} about nothing"}
                            for i in range(20)]
                    try:
                        client.upsert("c", docs)
                    except EmbedsvcError:
                        return  # the server died mid-request: not acknowledged
                    acked.extend(d["id"] for d in docs)
                    if stop.is_set():
                        return

        writer = threading.Thread(target=write_forever)
        writer.start()
        wait_for(lambda: len(acked) >= 400, timeout=120)
        server.kill()
        stop.set()
        writer.join()
    with ServerProcess(proc_settings) as server, Client(server.url, timeout=60) as client:
        stored = client.get_collection("c").documents
        assert stored >= len(acked)
        for doc_id in acked[::7] + acked[-20:]:
            batch, i = doc_id[1:].split("-")
            hits = client.search("c", f"token{batch}x{i}", mode="lexical", k=1).hits
            assert hits and hits[0].id == doc_id
        wait_for(lambda: client.get_collection("c").pending == 0, timeout=300)
        assert client.get_collection("c").fresh_vectors == stored  # the embedder caught up


def vectors_collection(settings: Settings, tmp_path: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n, 384)).astype(np.float32)
    np.save(tmp_path / "v.npy", vectors / np.linalg.norm(vectors, axis=1, keepdims=True))
    (tmp_path / "v.ids.txt").write_text("".join(f"v{i}\n" for i in range(n)))
    BuildJob(settings, "c", None, BuildOptions(vectors=tmp_path / "v.npy")).run()


def job_state(settings: Settings, job_id: str) -> tuple[str, str | None]:
    with sqlite3.connect(settings.collections_dir / "c" / "collection.db", timeout=30) as conn:
        return conn.execute("SELECT state, holder FROM jobs WHERE id = ?", (job_id,)).fetchone()


def leader_pid(settings: Settings) -> int:
    with sqlite3.connect(settings.collections_dir / "c" / "collection.db", timeout=30) as conn:
        holder = conn.execute("SELECT holder FROM lease").fetchone()[0]
    return int(holder.split(":")[-2])


def test_workers_share_writes_and_survive_a_leader_killed_mid_compaction(
        proc_settings: Settings, tmp_path: Path) -> None:
    vectors_collection(proc_settings, tmp_path, 60_000)
    with ServerProcess(proc_settings, workers=2) as server, fresh_client(server.url) as client:
        for n in range(20):  # each request may reach either worker: each sees every write
            retried(lambda n=n: client.upsert("c", [{"id": f"w{n}", "text": f"marker{n} text"}]))
            assert retried(lambda n=n: client.search("c", f"marker{n}", mode="lexical").hits)[0].id == f"w{n}"
        deleted = [f"v{i}" for i in range(0, 60_000, 8)]  # 12.5%: the index is rewritten
        for start in range(0, len(deleted), 1000):
            retried(lambda s=start: client.delete("c", ids=deleted[s:s + 1000]))
        first_leader = wait_for(lambda: leader_pid(proc_settings), timeout=30)
        job = retried(lambda: client.compact("c"))
        wait_for(lambda: job_state(proc_settings, job.id)[0] != "queued", timeout=60, interval=0.002)
        state, holder = job_state(proc_settings, job.id)
        assert (state, holder.split(":")[-2]) == ("running", str(first_leader))
        os.kill(first_leader, signal.SIGKILL)  # rewriting 60k vectors takes ~0.3s
        written = []
        for n in range(20, 40):  # writes go on through the surviving worker
            retried(lambda n=n: client.upsert("c", [{"id": f"w{n}", "text": f"marker{n} text"}]))
            written.append(f"w{n}")
        done = wait_for(lambda: (j := retried(lambda: client.job(job.id))).finished and j, timeout=120)
        assert done.state == "done", done.error
        assert done.attempts == 2  # run again from the start by the new leader
        assert wait_for(lambda: leader_pid(proc_settings) != first_leader, timeout=30)
        info = retried(lambda: client.get_collection("c"))
        assert info.index_version == 2 and info.documents == 60_000 - len(deleted) + 40
        for doc_id in written + ["w0"]:
            assert retried(lambda d=doc_id: client.get_document("c", d)).id == doc_id
    paths, store = open_store(proc_settings.collections_dir, "c")
    assert check_collection(paths, store, proc_settings.models_dir) == []
    assert not [p for p in paths.versions.iterdir() if p.name.startswith(".")]  # no half version


def test_metrics_of_all_workers_are_merged(tmp_path: Path, bundled_model: Path):
    """With ``--workers 2`` a scrape reaching either worker counts every worker's requests."""
    settings = make_settings(tmp_path / "home", bundled_model, preload_models=False)
    with ServerProcess(settings, workers=2) as server:
        fresh = httpx.Client(base_url=server.url, transport=httpx.HTTPTransport(
            limits=httpx.Limits(max_keepalive_connections=0)))
        assert {fresh.get("/v1/collections/nope").status_code for _ in range(20)} == {404}

        def not_found_count(text: str) -> float:
            prefix = 'embedsvc_http_requests_total{method="GET",route="/v1/collections/{name}",status="404"}'
            return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(prefix))

        for _ in range(6):  # whichever worker answers the scrape, it reports all 20
            assert not_found_count(fresh.get("/metrics").text) == 20
        assert list((settings.home / "run").glob("metrics-*/*.db"))
