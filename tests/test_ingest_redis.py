"""``embedsvc ingest --from redis://…`` against a real ``redis-server``, through the CLI as a
user runs it: a consumer killed with SIGKILL in the middle of 10,000 entries and restarted
stores every entry exactly once; malformed entries land in the dead-letter stream with their
reason while the rest are stored; entries left by a dead consumer are claimed; a running
server's ``/metrics`` shows the progress and lag; bad input is one line and an exit code.

The collection has no model (lexical only), so nothing is embedded: a write is its SQLite
transaction, and 10,000 documents take seconds on two cores.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from embedsvc.cli import app
from embedsvc.collection import create_collection
from embedsvc.settings import Settings
from tests.conftest import REPO, RunningServer, free_port, wait_for

STREAM = "events"
GROUP = "embedsvc-docs"  # the default group of collection 'docs'


class RedisServer:
    """A real ``redis-server`` on a free loopback port, its files in a temp folder."""

    def __init__(self, folder: Path):
        executable = shutil.which("redis-server")
        if executable is None:  # `make test` installs it: missing is a broken setup, not a skip
            pytest.fail("redis-server is not installed (apt-get install redis-server)")
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log = folder / "redis.log"
        self.process = subprocess.Popen(
            [executable, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(folder),
             "--save", "", "--appendonly", "no", "--logfile", str(self.log)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.client = redis.Redis(port=self.port, socket_timeout=10)
        wait_for(self._up, timeout=30)

    def _up(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"redis-server exited: {self.log.read_text()[-2000:]}")
        try:
            return bool(self.client.ping())
        except redis.ConnectionError:
            return False

    def url(self, stream: str = STREAM) -> str:
        return f"redis://127.0.0.1:{self.port}/{stream}"

    def close(self) -> None:
        self.client.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A home with 'docs', a live collection without a model (nothing to embed)."""
    create_collection(tmp_path / "home" / "collections", "docs", None)
    return tmp_path / "home"


def push(client: redis.Redis, docs: list[dict | bytes], stream: str = STREAM) -> list[bytes]:
    """XADD each document as the entry's 'doc' field (bytes as they are); their ids."""
    ids: list[bytes] = []
    for start in range(0, len(docs), 1000):
        pipe = client.pipeline(transaction=False)
        for doc in docs[start:start + 1000]:
            pipe.xadd(stream, {"doc": doc if isinstance(doc, bytes) else json.dumps(doc)})
        ids += pipe.execute()
    return ids


def ingest_command(home: Path, url: str, *options: str) -> list[str]:
    return [sys.executable, "-m", "embedsvc", "--home", str(home), "ingest", "docs", "--from", url,
            *options]


def child_env(**settings: str) -> dict[str, str]:
    return {**os.environ, "COLUMNS": "200", **settings}


def run_ingest(home: Path, url: str, *options: str, **settings: str) -> subprocess.CompletedProcess:
    return subprocess.run(ingest_command(home, url, *options), capture_output=True, text=True,
                          timeout=300, cwd=REPO, env=child_env(**settings))


def query(home: Path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(home / "collections" / "docs" / "collection.db")
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def documents(home: Path) -> list[tuple[str, str]]:
    """(id, text) of every document stored, sorted: an id stored twice would show twice."""
    return sorted(query(home, "SELECT id, text FROM documents"))


def count_documents(home: Path) -> int:
    return query(home, "SELECT count(*) FROM documents")[0][0]


def group_state(client: redis.Redis, stream: str = STREAM) -> tuple[int, int]:
    """(lag, pending) of the collection's group."""
    (info,) = [g for g in client.xinfo_groups(stream) if g["name"] == GROUP.encode()]
    return info["lag"], info["pending"]


# --- at least once, exactly once in the collection ---------------------------------------------
def test_a_consumer_killed_mid_stream_restarts_without_losing_or_repeating(
        redis_server: RedisServer, home: Path, tmp_path: Path) -> None:
    sent = {f"doc-{i:05d}": f"entry {i} of the stream, about topic {i % 97}" for i in range(10_000)}
    push(redis_server.client, [{"id": i, "text": t} for i, t in sent.items()])
    url = redis_server.url()
    with (tmp_path / "killed.log").open("w") as log:
        killed = subprocess.Popen(ingest_command(home, url, "--batch", "50", "--consumer", "c1"),
                                  stdout=log, stderr=log, cwd=REPO, env=child_env(),
                                  start_new_session=True)
        try:
            wait_for(lambda: killed.poll() is not None or count_documents(home) >= 2000,
                     timeout=120, interval=0.005)
            assert killed.poll() is None, (tmp_path / "killed.log").read_text()
        finally:
            if killed.poll() is None:
                os.killpg(killed.pid, signal.SIGKILL)
            killed.wait()
    partial = count_documents(home)
    lag, _ = group_state(redis_server.client)
    assert 0 < partial < len(sent) and lag > 0, f"the kill missed the middle: {partial} stored, lag {lag}"

    again = run_ingest(home, url, "--consumer", "c1", "--stop-when-idle", "1")
    assert again.returncode == 0, again.stderr
    assert documents(home) == sorted(sent.items())  # every id once, with its text as sent
    assert group_state(redis_server.client) == (0, 0)
    assert redis_server.client.xpending(STREAM, GROUP)["pending"] == 0
    assert "lag 0, pending 0" in again.stdout


# --- malformed entries ---------------------------------------------------------------------------
MALFORMED: list[tuple[dict | bytes, str]] = [
    (b"{not json", "not valid JSON"),
    (b"\xff\xfe", "not UTF-8"),
    (b'["a", "list"]', "a JSON object is needed"),
    ({"text": "no id"}, "doc.id: Field required"),
    ({"id": "t1"}, "doc.text: Field required"),
    ({"id": 5, "text": "a number as id"}, "doc.id: Input should be a valid string"),
    ({"id": "u1", "text": "x", "colour": "red"}, "doc.colour: Extra inputs are not permitted"),
    ({"id": "e1", "text": "   "}, "has no text"),
    ({"id": "big", "text": "x" * 5000}, "EMBEDSVC_MAX_DOCUMENT_BYTES"),
    (b'{"id": "nan", "text": "x", "metadata": {"v": NaN}}', "NaN"),
    (b'{"id": "s1", "text": "\\ud800"}', "not valid Unicode"),
    ({"id": "a\u0000b", "text": "x"}, "NUL"),
    ({"id": "v1", "text": "x", "vector": [1.0, 0.0]}, "doc.vector"),
]


def test_malformed_entries_go_to_the_dead_letter_stream_and_the_rest_are_stored(
        redis_server: RedisServer, home: Path) -> None:
    client = redis_server.client
    good = [{"id": f"g{i}", "text": f"good document {i}", "metadata": {"n": i}} for i in range(20)]
    sent = push(client, [*good[:10], *[doc for doc, _ in MALFORMED], *good[10:],
                         {"id": "dup", "text": "first"}, {"id": "dup", "text": "second"}])
    flat = client.xadd(STREAM, {"id": "flat", "text": "fields instead of doc"})
    done = run_ingest(home, redis_server.url(), "--stop-when-idle", "1",
                      EMBEDSVC_MAX_DOCUMENT_BYTES="2048")
    assert done.returncode == 0, done.stderr

    expected = {d["id"]: d["text"] for d in good} | {"dup": "second"}  # in one batch: last wins
    assert documents(home) == sorted(expected.items())
    dead = client.xrange(f"{STREAM}:dead")
    reasons = {fields[b"source_id"]: fields[b"reason"].decode() for _, fields in dead}
    malformed_ids = sent[10:10 + len(MALFORMED)]
    assert set(reasons) == {*malformed_ids, flat}
    for entry_id, (doc, phrase) in zip(malformed_ids, MALFORMED, strict=True):
        assert phrase in reasons[entry_id], (doc, reasons[entry_id])
    assert "no 'doc' field" in reasons[flat]
    kept = {fields[b"source_id"]: fields for _, fields in dead}
    assert kept[malformed_ids[0]][b"doc"] == b"{not json"  # the entry as sent, to fix and replay
    assert kept[flat][b"id"] == b"flat" and kept[flat][b"source_stream"] == STREAM.encode()
    assert group_state(client) == (0, 0)
    assert f"{len(MALFORMED) + 1} dead-lettered" in done.stdout
    assert "moved to events:dead" in done.stderr and "Traceback" not in done.stderr


def test_entries_left_pending_by_a_dead_consumer_are_claimed(
        redis_server: RedisServer, home: Path) -> None:
    client = redis_server.client
    sent = {f"p{i}": f"pending text {i}" for i in range(30)}
    push(client, [{"id": i, "text": t} for i, t in sent.items()])
    client.xgroup_create(STREAM, GROUP, id="0")
    client.xreadgroup(GROUP, "ghost", {STREAM: ">"}, count=30)  # read, never acknowledged
    assert group_state(client) == (0, 30)

    done = run_ingest(home, redis_server.url(), "--consumer", "alive", "--claim-min-idle", "0.2",
                      "--stop-when-idle", "1")
    assert done.returncode == 0, done.stderr
    assert documents(home) == sorted(sent.items())
    assert group_state(client) == (0, 0)


# --- /metrics of a running server, and a clean stop on SIGTERM -----------------------------------
def ingest_samples(server: RunningServer) -> dict[str, float]:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    return {sample.name: sample.value for family in text_string_to_metric_families(text)
            for sample in family.samples if sample.name.startswith("embedsvc_ingest_")
            and sample.labels == {"collection": "docs", "stream": STREAM, "group": GROUP}}


def test_metrics_show_ingest_progress_and_lag_and_sigterm_stops_cleanly(
        redis_server: RedisServer, home: Path, tmp_path: Path) -> None:
    client = redis_server.client
    push(client, [{"id": f"m{i}", "text": f"metric text {i}"} for i in range(300)] + [b"oops"] * 2)
    url = redis_server.url()
    with RunningServer(Settings(home=home, preload_models=False)) as server:
        assert ingest_samples(server) == {}  # nothing ingested yet: no series
        first = run_ingest(home, url, "--batch", "50", "--stop-after", "200")
        assert first.returncode == 0, first.stderr
        samples = ingest_samples(server)
        assert samples["embedsvc_ingest_entries_total"] == 200
        assert samples["embedsvc_ingest_dead_lettered_total"] == 0
        assert samples["embedsvc_ingest_lag_entries"] == 102
        assert samples["embedsvc_ingest_pending_entries"] == 0
        assert samples["embedsvc_ingest_updated_timestamp_seconds"] > 0

        with (tmp_path / "second.log").open("w") as log:
            second = subprocess.Popen(ingest_command(home, url), stdout=log, stderr=log, cwd=REPO,
                                      env=child_env())
            try:
                wait_for(lambda: second.poll() is not None or ingest_samples(server).get(
                    "embedsvc_ingest_entries_total") == 300, timeout=120)
                samples = ingest_samples(server)
                assert samples["embedsvc_ingest_dead_lettered_total"] == 2
                assert samples["embedsvc_ingest_lag_entries"] == 0
                second.send_signal(signal.SIGTERM)
                assert second.wait(timeout=60) == 0, (tmp_path / "second.log").read_text()
            finally:
                if second.poll() is None:
                    second.kill()
                    second.wait()
        assert "stopping (SIGTERM)" in (tmp_path / "second.log").read_text()
        assert ingest_samples(server)["embedsvc_ingest_pending_entries"] == 0
    assert count_documents(home) == 300


# --- bad input ---------------------------------------------------------------------------------
def test_bad_input_is_one_line_and_an_exit_code(redis_server: RedisServer, home: Path) -> None:
    runner = CliRunner()

    def ingest(*args: str):
        return runner.invoke(app, ["--home", str(home), "ingest", *args])

    cases = [
        (("docs", "--from", "http://127.0.0.1/events"), "not a Redis URL"),
        (("docs", "--from", f"redis://127.0.0.1:{redis_server.port}"), "stream name"),
        (("docs", "--from", "redis://127.0.0.1:99999/events"), "port"),
        (("nope", "--from", redis_server.url()), "collection 'nope' does not exist"),
        (("docs", "--from", f"redis://127.0.0.1:{free_port()}/events"), "cannot reach Redis"),
    ]
    for args, message in cases:
        result = ingest(*args)
        assert result.exit_code == 1, (args, result.output)
        assert message in result.output and "Traceback" not in result.output, (args, result.output)
        assert result.output.count("error:") == 1
    assert redis_server.client.exists(STREAM) == 0  # an unknown collection made no stream
    usage = ingest("docs", "--from", redis_server.url(), "--batch", "0")
    assert usage.exit_code == 2 and "--batch" in usage.output
