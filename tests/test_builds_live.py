"""Builds and live writes on one collection: a failed or killed build changes nothing that
is served, documents written through the API survive rebuilds and win over older input, a
damaged version is repaired by building again, and a huge input line is refused."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest
from typer.testing import CliRunner

from embedsvc.cli import app
from embedsvc.collection import open_store
from embedsvc.live.writes import DocumentIn, upsert_documents
from embedsvc.service import Service, local_searcher
from embedsvc.settings import Settings
from indexing.check import check_collection
from indexing.errors import BuildError
from indexing.job import BuildJob, BuildOptions
from indexing.sources import read_jsonl
from tests.conftest import wait_for, write_jsonl
from tests.test_build_job import docs
from tests.test_compaction import write

runner = CliRunner()


def build(settings: Settings, path: Path, **options) -> object:
    return BuildJob(settings, "c", path, BuildOptions(chunk_size=10, **options)).run()


def served_state(settings: Settings) -> dict:
    """What users of the collection see: documents, answers in each mode, the version."""
    paths, store = open_store(settings.collections_dir, "c")
    searcher = local_searcher(settings, "c")
    answers = {mode: [(h.id, round(h.score, 5)) for h in searcher.search(
        "vitamin D and bone health", 8, mode).hits] for mode in ("dense", "lexical", "hybrid")}
    rows = store.conn.execute("SELECT id, title, text FROM documents ORDER BY id").fetchall()
    return {"documents": rows, "answers": answers, "version": store.get_meta("current_version"),
            "problems": check_collection(paths, store, settings.models_dir)}


def test_a_failed_rebuild_changes_nothing_served(settings: Settings, tmp_path: Path) -> None:
    build(settings, write_jsonl(tmp_path / "a.jsonl", docs(40)))
    before = served_state(settings)
    lines = [json.dumps(d) for d in docs(30, start=100)] + ["{broken"]
    (tmp_path / "b.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(BuildError, match="line 31: invalid JSON"):
        build(settings, tmp_path / "b.jsonl")
    assert served_state(settings) == before and before["problems"] == []
    _, store = open_store(settings.collections_dir, "c")
    assert store.document("d100") is None  # read before the bad line, never served


def test_a_killed_rebuild_changes_nothing_served(settings: Settings, tmp_path: Path,
                                                 mini_rows: list[dict]) -> None:
    build(settings, write_jsonl(tmp_path / "a.jsonl", docs(20)))
    before = served_state(settings)
    corpus = write_jsonl(tmp_path / "b.jsonl", mini_rows[:60])
    command = [sys.executable, "-m", "embedsvc", "--home", str(settings.home), "index", "build",
               "c", "--input", str(corpus), "--chunk-size", "8"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db = settings.collections_dir / "c" / "collection.db"

    def staged() -> int:
        with sqlite3.connect(db, timeout=30) as conn:
            return conn.execute("SELECT count(*) FROM staged_passages").fetchone()[0]

    wait_for(lambda: staged() >= 16 or process.poll() is not None, timeout=180)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert served_state(settings) == before
    assert runner.invoke(app, command[3:]).exit_code == 0  # the same command finishes it
    after = served_state(settings)
    assert after["version"] == 2 and len(after["documents"]) == 60 and after["problems"] == []


def test_a_killed_first_build_says_it_is_incomplete(settings: Settings, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "a.jsonl", docs(30))

    def stop_after_two_chunks(n: int, seen: list = []) -> None:  # noqa: B006 - a counter
        seen.append(n)
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        BuildJob(settings, "c", path, BuildOptions(chunk_size=10),
                 progress=stop_after_two_chunks).run()
    info = Service(settings).describe("c")
    assert info["complete"] is False and info["documents"] == 20  # BM25 answers meanwhile
    paths, store = open_store(settings.collections_dir, "c")
    assert any("did not finish" in p for p in check_collection(paths, store, settings.models_dir))
    build(settings, path)
    assert Service(settings).describe("c")["complete"] is True
    assert check_collection(paths, store, settings.models_dir) == []


def test_api_documents_survive_a_rebuild(settings: Settings, tmp_path: Path) -> None:
    build(settings, write_jsonl(tmp_path / "a.jsonl", docs(20)))
    write(settings, "c", [("api-1", "Penguins huddle against the Antarctic cold."),
                          ("api-2", "Volcanoes erupt molten basalt.")])
    build(settings, write_jsonl(tmp_path / "b.jsonl", docs(18, start=5)))  # d0-d4 go, d20-d22 come
    _, store = open_store(settings.collections_dir, "c")
    assert store.document("d0") is None and store.document("d22") is not None
    searcher = local_searcher(settings, "c")
    assert searcher.search("penguins in the cold", 1, "dense").hits[0].id == "api-1"
    assert searcher.search("volcanic eruption", 1, "dense").hits[0].id == "api-2"
    info = Service(settings).describe("c")
    assert (info["documents"], info["fresh_vectors"], info["indexed_vectors"]) == (20, 2, 18)
    assert check_collection(*open_store(settings.collections_dir, "c"), settings.models_dir) == []


def test_the_later_of_an_api_write_and_a_rebuild_wins(settings: Settings, tmp_path: Path) -> None:
    build(settings, write_jsonl(tmp_path / "a.jsonl", docs(20)))
    _, store = open_store(settings.collections_dir, "c")
    written: list[int] = []

    def write_meanwhile(n: int) -> None:
        if not written:  # the build has read d0-d9, not yet d10-d19
            written.append(n)
            write(settings, "c", [("d0", "Giraffes eat acacia leaves."), ("api", "Tides and moons."),
                                  ("d15", "Written through the API before the build read it.")])

    BuildJob(settings, "c", write_jsonl(tmp_path / "b.jsonl", docs(20) + docs(1, start=50)),
             BuildOptions(chunk_size=10), progress=write_meanwhile).run()
    assert store.document("d0").text == "Giraffes eat acacia leaves."  # written after the read
    assert store.document("d15").text.startswith("Study 15 about")  # read after the write
    assert store.document("api") is not None and store.document("d50") is not None
    searcher = local_searcher(settings, "c")
    assert searcher.search("giraffes feeding on leaves", 1, "dense").hits[0].id == "d0"
    topic = [h.id for h in searcher.search("vitamin D and bone health", 5, "dense").hits]
    assert "d0" not in topic  # the build's vector of the old d0 is a tombstone
    assert check_collection(*open_store(settings.collections_dir, "c"), settings.models_dir) == []


def test_a_damaged_version_is_repaired_by_building_again(settings: Settings, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "a.jsonl", docs(20))
    build(settings, path)
    shard = settings.collections_dir / "c" / "versions" / "0001" / "shard-0000.faiss"
    shard.write_bytes(shard.read_bytes()[:-100])
    check = runner.invoke(app, ["--home", str(settings.home), "index", "check", "c"])
    assert check.exit_code == 1 and "checksum" in check.output
    assert build(settings, path).status == "built"
    check = runner.invoke(app, ["--home", str(settings.home), "index", "check", "c"])
    assert check.exit_code == 0, check.output


def test_a_huge_line_is_refused_without_being_held(settings: Settings, tmp_path: Path) -> None:
    small = settings.model_copy(update={"max_document_bytes": 100_000})
    rows = docs(4)
    path = tmp_path / "huge.jsonl"
    with path.open("w") as fh:
        fh.write(json.dumps(rows[0]) + "\n" + json.dumps(rows[1]) + "\n")
        fh.write(json.dumps({"_id": "huge", "text": "word " * 4_000_000}) + "\n")  # 20MB
        fh.write(json.dumps(rows[2]) + "\n")
    with pytest.raises(BuildError, match=r"line 3: document of over 100000 bytes \(EMBEDSVC_MAX"):
        BuildJob(small, "c", path, BuildOptions(lexical_only=True)).run()
    report = BuildJob(small, "c", path, BuildOptions(lexical_only=True, on_error="skip")).run()
    assert report.documents == 3 and [i.line for i in report.issues] == [3]
    tracemalloc.start()
    items = list(read_jsonl(path, max_bytes=100_000))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(items) == 4 and peak < 8_000_000  # the 20MB line was never held whole


def test_documents_from_an_upsert_and_a_first_build_share_the_collection(
        settings: Settings, tmp_path: Path) -> None:
    from embedsvc.collection import create_collection

    create_collection(settings.collections_dir, "c", "all-MiniLM-L6-v2")
    _, store = open_store(settings.collections_dir, "c")
    upsert_documents(store, [DocumentIn("api", "Penguins huddle.")], embed=True)
    report = build(settings, write_jsonl(tmp_path / "a.jsonl", docs(10)))
    assert report.version == 1 and store.document("api") is not None
    assert store.conn.execute("SELECT count(*) FROM pending").fetchone()[0] == 1  # still to embed


def test_a_first_build_and_api_writes_made_while_it_runs(settings: Settings, tmp_path: Path) -> None:
    from embedsvc.collection import create_collection
    from embedsvc.live.writes import delete_documents

    create_collection(settings.collections_dir, "c", "all-MiniLM-L6-v2")
    written: list[int] = []

    def write_meanwhile(n: int) -> None:
        if not written:  # the build has written d0-d9 (served: a first build), not d10-d19
            written.append(n)
            write(settings, "c", [("d3", "Giraffes eat acacia leaves."),
                                  ("d15", "Written through the API before the build reached it.")])
            delete_documents(open_store(settings.collections_dir, "c")[1], ["d4"])

    BuildJob(settings, "c", write_jsonl(tmp_path / "a.jsonl", docs(20)), BuildOptions(chunk_size=10),
             progress=write_meanwhile).run()
    _, store = open_store(settings.collections_dir, "c")
    assert store.document("d3").text == "Giraffes eat acacia leaves." and store.document("d4") is None
    assert store.document("d15").text.startswith("Study 15")  # the build wrote it later
    searcher = local_searcher(settings, "c")
    assert searcher.search("giraffes feeding on leaves", 1, "dense").hits[0].id == "d3"
    everything = {h.id for h in searcher.search("study", 30, "dense").hits}
    assert everything == {f"d{i}" for i in range(20)} - {"d4"}  # d15 too: no stale tombstone
    assert check_collection(*open_store(settings.collections_dir, "c"), settings.models_dir) == []


def test_rebuilding_an_earlier_input_again_brings_its_documents_back(
        settings: Settings, tmp_path: Path) -> None:
    first, second = write_jsonl(tmp_path / "a.jsonl", docs(6)), write_jsonl(tmp_path / "b.jsonl",
                                                                            docs(4, start=10))
    for path, expected in ((first, 6), (second, 4), (first, 6)):
        build(settings, path, lexical_only=True)
        assert open_store(settings.collections_dir, "c")[1].count_documents() == expected


def test_a_candidate_superseded_by_another_build_cannot_be_deployed(
        settings: Settings, tmp_path: Path) -> None:
    from indexing.versions import switch_version

    build(settings, write_jsonl(tmp_path / "a.jsonl", docs(10)))
    candidate = build(settings, write_jsonl(tmp_path / "b.jsonl", docs(12)), switch=False)
    build(settings, write_jsonl(tmp_path / "c.jsonl", docs(8)))  # served after the candidate
    _, store = open_store(settings.collections_dir, "c")
    with pytest.raises(BuildError, match="build it again"):
        switch_version(store, candidate.version, "all-MiniLM-L6-v2",
                       build=candidate.manifest["build_id"])
    assert store.count_documents() == 8 and store.get_meta("current_version") == 3
