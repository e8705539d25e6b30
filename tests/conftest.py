"""Shared fixtures: the bundled model unpacked once, a small BEIR slice of SciFact, a built
collection, and a real uvicorn server on a free loopback port.

Heavy things are session-scoped and read-only; a test that changes a collection builds
its own in ``tmp_path``.
"""

from __future__ import annotations

import gzip
import json
import os
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from embedsvc.encoders import DEFAULT_MODEL, unpack_default_model
from embedsvc.settings import Settings

REPO = Path(__file__).resolve().parent.parent
SCIFACT = REPO / "data" / "scifact"


@pytest.fixture(scope="session")
def bundled_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default model unpacked once for the whole session."""
    return unpack_default_model(tmp_path_factory.mktemp("shared-models"))


def pytest_configure(config: pytest.Config) -> None:
    """Keep what libraries write outside the tests' folders in temp folders of the session:
    Hypothesis's cache (else ./.hypothesis) and Ray's sessions (else /tmp/ray, kept forever).
    Ray's folder is short on purpose: its socket paths must fit in 107 bytes."""
    from hypothesis.configuration import set_hypothesis_home_dir

    hypothesis = tempfile.TemporaryDirectory(prefix="embedsvc-hypothesis-")
    ray = tempfile.TemporaryDirectory(prefix="ray-")
    config.stash[_TEMP_HOMES] = [hypothesis, ray]
    set_hypothesis_home_dir(hypothesis.name)
    os.environ["RAY_TMPDIR"] = ray.name  # read by Ray, here and in every child process


def pytest_unconfigure(config: pytest.Config) -> None:
    for folder in config.stash.get(_TEMP_HOMES, []):
        folder.cleanup()


_TEMP_HOMES = pytest.StashKey[list[tempfile.TemporaryDirectory]]()


def make_settings(home: Path, bundled_model: Path, shared_export: bool = True,
                  **overrides) -> Settings:
    """Settings for a fresh home that reuses the session's unpacked model (a symlink) and,
    unless a test changes it, the session's ONNX export of it (made by the first test that
    needs it, as a first run makes it)."""
    link = home / "models" / "_bundled" / DEFAULT_MODEL
    if not link.exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(bundled_model, target_is_directory=True)
    exports = home / "models" / "_onnx"
    if shared_export and not exports.exists():
        shared = bundled_model.parent.parent / "_onnx"
        shared.mkdir(exist_ok=True)
        exports.symlink_to(shared, target_is_directory=True)
    return Settings(home=home, **overrides)


@pytest.fixture
def settings(tmp_path: Path, bundled_model: Path) -> Settings:
    return make_settings(tmp_path / "home", bundled_model)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def mini_beir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BEIR folder with 40 SciFact test queries, their relevant docs and filler docs."""
    folder = tmp_path_factory.mktemp("mini-beir")
    qrels_lines = (SCIFACT / "qrels" / "test.tsv").read_text().splitlines()
    judged: dict[str, list[str]] = {}
    for line in qrels_lines[1:]:
        qid, did, _ = line.split("\t")
        judged.setdefault(qid, []).append(did)
    chosen = sorted(judged, key=int)[:40]
    relevant = {d for q in chosen for d in judged[q]}
    docs, filler = [], 0
    with gzip.open(SCIFACT / "corpus.jsonl.gz", "rt", encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            if row["_id"] in relevant or filler < 160:
                filler += row["_id"] not in relevant
                docs.append(row)
    write_jsonl(folder / "corpus.jsonl", docs)
    queries = [json.loads(q) for q in (SCIFACT / "queries.jsonl").read_text().splitlines()]
    write_jsonl(folder / "queries.jsonl", [q for q in queries if q["_id"] in set(chosen)])
    (folder / "qrels").mkdir()
    keep = [ln for ln in qrels_lines[1:] if ln.split("\t")[0] in set(chosen)]
    (folder / "qrels" / "test.tsv").write_text("\n".join([qrels_lines[0], *keep]) + "\n")
    return folder


@pytest.fixture(scope="session")
def served_home(tmp_path_factory: pytest.TempPathFactory, bundled_model: Path,
                mini_beir: Path) -> Settings:
    """A home with 'mini' (dense + lexical) and 'lexonly' (no dense index) collections."""
    from indexing.job import BuildJob, BuildOptions

    settings = make_settings(tmp_path_factory.mktemp("served-home"), bundled_model,
                             chunk_size=64)
    BuildJob(settings, "mini", mini_beir, BuildOptions()).run()
    BuildJob(settings, "lexonly", mini_beir, BuildOptions(lexical_only=True)).run()
    return settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RunningServer:
    """The real uvicorn server, in a thread of the test process, on a free loopback port."""

    def __init__(self, settings: Settings):
        import uvicorn

        from embedsvc.api.app import create_app

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=self.port,
                                log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> RunningServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def wait_for(predicate, timeout: float = 60.0, interval: float = 0.05):
    """Poll ``predicate`` until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met before the deadline")
        time.sleep(interval)


@pytest.fixture(scope="session")
def server(served_home: Settings) -> Iterator[RunningServer]:
    with RunningServer(served_home) as running:
        yield running


@pytest.fixture(scope="session")
def mini_rows(mini_beir: Path) -> list[dict]:
    """The mini corpus as rows (SciFact abstracts)."""
    return [json.loads(line) for line in (mini_beir / "corpus.jsonl").read_text().splitlines()]
