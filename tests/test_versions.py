"""Index versions: atomic switch under load, pruning, resume after SIGKILL, shards, layouts."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from embedsvc.cli import app
from embedsvc.client import Client
from embedsvc.collection import open_store
from embedsvc.settings import Settings
from indexing.job import BuildJob, BuildOptions
from tests.conftest import RunningServer, wait_for, write_jsonl
from tests.test_build_job import vectors_of

runner = CliRunner()


def cli(settings: Settings, *args: str):
    return runner.invoke(app, ["--home", str(settings.home), *args])


def test_switch_under_continuous_queries(settings: Settings, tmp_path: Path,
                                         mini_rows: list[dict]) -> None:
    first = write_jsonl(tmp_path / "v1.jsonl", mini_rows[:40])
    second = write_jsonl(tmp_path / "v2.jsonl", mini_rows[:40] + [
        {"_id": "new", "title": "Zebra migration", "text": "Zebras migrate across the Serengeti."}])
    BuildJob(settings, "c", first, BuildOptions(keep_versions=1)).run()
    errors, versions, stop = [], set(), threading.Event()

    with RunningServer(settings) as server, Client(server.url) as client:
        def query_forever() -> None:
            while not stop.is_set():
                try:
                    result = client.search("c", "zebra migration", k=3, mode="dense")
                    versions.add(result.index_version)
                except Exception as exc:  # noqa: BLE001 - any failed request is the finding
                    errors.append(exc)

        workers = [threading.Thread(target=query_forever) for _ in range(2)]
        for worker in workers:
            worker.start()
        wait_for(lambda: 1 in versions)
        BuildJob(settings, "c", second, BuildOptions(keep_versions=1)).run()
        wait_for(lambda: 2 in versions)
        stop.set()
        for worker in workers:
            worker.join()
        assert client.search("c", "zebra migration", k=1, mode="dense").hits[0].id == "new"
    assert errors == []
    assert sorted(p.name for p in (settings.collections_dir / "c" / "versions").iterdir()) == ["0002"]


def test_sigkill_mid_build_then_resume_equals_uninterrupted(
        settings: Settings, tmp_path: Path, mini_rows: list[dict]) -> None:
    corpus = write_jsonl(tmp_path / "docs.jsonl", mini_rows[:64])
    command = [sys.executable, "-m", "embedsvc", "--home", str(settings.home), "index", "build",
               "c", "--input", str(corpus), "--chunk-size", "8"]
    build = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db = settings.collections_dir / "c" / "collection.db"

    def chunks_done() -> int:
        if not db.exists():
            return 0
        try:
            with sqlite3.connect(db) as conn:
                return conn.execute("SELECT count(*) FROM build_chunks").fetchone()[0]
        except sqlite3.OperationalError:
            return 0

    wait_for(lambda: chunks_done() >= 2 or build.poll() is not None, timeout=120)
    os.kill(build.pid, signal.SIGKILL)
    build.wait()
    assert chunks_done() < 8, "the build finished before it could be killed"
    _, store = open_store(settings.collections_dir, "c")
    assert store.get_meta("current_version") is None  # nothing half-built is served
    resumed = BuildJob(settings, "c", corpus, BuildOptions(chunk_size=8)).run()
    assert resumed.chunks_reused >= 2 and resumed.documents == 64
    fresh = settings.model_copy(update={"home": tmp_path / "fresh"})
    BuildJob(fresh, "c", corpus, BuildOptions(chunk_size=8)).run()
    np.testing.assert_allclose(vectors_of(settings, "c"), vectors_of(fresh, "c"), atol=1e-6)


def test_torn_chunk_file_is_never_taken_as_done(settings: Settings, tmp_path: Path,
                                                mini_rows: list[dict]) -> None:
    corpus = write_jsonl(tmp_path / "docs.jsonl", mini_rows[:16])
    calls = []

    def crash_after_first(n: int) -> None:
        calls.append(n)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        BuildJob(settings, "c", corpus, BuildOptions(chunk_size=8), progress=crash_after_first).run()
    [chunk_file] = (settings.collections_dir / "c" / "builds").glob("*/chunk-*.vectors.npy")
    chunk_file.write_bytes(chunk_file.read_bytes()[:-100])  # a torn write
    report = BuildJob(settings, "c", corpus, BuildOptions(chunk_size=8)).run()
    assert report.chunks_reused == 0 and report.documents == 16


def test_shards_answer_like_one_index(settings: Settings, tmp_path: Path,
                                      mini_rows: list[dict]) -> None:
    corpus = write_jsonl(tmp_path / "docs.jsonl", mini_rows[:60])
    assert cli(settings, "index", "build", "one", "--input", str(corpus)).exit_code == 0
    result = cli(settings, "index", "build", "three", "--input", str(corpus), "--shards", "3",
                 "--index", "flat")
    assert result.exit_code == 0, result.output
    from tests.test_api import local_search

    info = cli(settings, "index", "info", "three", "--json")
    assert '"shards"' in info.stdout and len(__import__("json").loads(info.stdout)["manifest"]["shards"]) == 3
    for query in ("vitamin D", "cancer cells", "malaria", "bone density", "heart"):
        one = [(h.id, round(h.score, 5)) for h in local_search(settings, "one", query, 10)]
        three = [(h.id, round(h.score, 5)) for h in local_search(settings, "three", query, 10)]
        assert one == three


def test_layout_choices_and_refusals(settings: Settings, tmp_path: Path,
                                     mini_rows: list[dict]) -> None:
    corpus = write_jsonl(tmp_path / "docs.jsonl", mini_rows[:60])
    ok = cli(settings, "index", "build", "h", "--input", str(corpus), "--index", "hnsw")
    assert ok.exit_code == 0, ok.output
    info = cli(settings, "index", "info", "h")
    assert "HNSW" in info.stdout and "recall_at_10" in info.stdout
    # a value the options model refuses is a usage error (2); a layout that cannot be built, 1
    for args, message, code in ((["--index", "IVF8,Bogus"], "IVF8,Bogus", 1),
                                (["--memory-budget", "10KB"], "--memory-budget", 1),
                                (["--memory-budget", "lots"], "lots", 2)):
        refused = cli(settings, "index", "build", "h", "--input", str(corpus), *args)
        assert refused.exit_code == code and message in refused.output, refused.output
    _, store = open_store(settings.collections_dir, "h")
    assert store.get_meta("current_version") == 1
    assert cli(settings, "index", "check", "h").exit_code == 0


def test_check_and_server_refuse_a_damaged_version(settings: Settings, tmp_path: Path,
                                                   mini_rows: list[dict]) -> None:
    corpus = write_jsonl(tmp_path / "docs.jsonl", mini_rows[:20])
    BuildJob(settings, "c", corpus, BuildOptions()).run()
    [shard] = (settings.collections_dir / "c" / "versions" / "0001").glob("shard-*.faiss")
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    checked = cli(settings, "index", "check", "c")
    assert checked.exit_code == 1 and "checksum" in checked.output
    with RunningServer(settings) as server, Client(server.url) as client:
        result = client.search("c", mini_rows[0]["title"], k=3)
        assert (result.mode, result.fallback) == ("lexical", "index_unavailable")
        assert result.hits[0].id == mini_rows[0]["_id"]
