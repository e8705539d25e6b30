"""`index build` end to end on small inputs: resume, skip, bad lines, lexical only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from embedsvc.collection import open_store
from embedsvc.settings import Settings
from indexing.job import BuildError, BuildJob, BuildOptions
from tests.conftest import write_jsonl


def docs(n: int, start: int = 0) -> list[dict]:
    topics = ["vitamin D and bone health", "protein folding in cells", "heart disease risk",
              "malaria parasites", "sleep and memory"]
    return [{"_id": f"d{i}", "title": topics[i % 5], "text": f"Study {i} about {topics[i % 5]}."}
            for i in range(start, start + n)]


def build(settings: Settings, path: Path, name: str = "c", **options) -> object:
    return BuildJob(settings, name, path, BuildOptions(chunk_size=8, **options)).run()


def vectors_of(settings: Settings, name: str) -> np.ndarray:
    """The stored vectors of every passage, in document id order."""
    from embedsvc.search.dense import DenseIndex

    paths, store = open_store(settings.collections_dir, name)
    index = DenseIndex.load(paths.version_dir(store.get_meta("current_version")), mmap=False)
    ids = [r[0] for r in store.conn.execute(
        "SELECT p.id FROM passages p JOIN documents d ON d.rowid = p.doc ORDER BY d.id, p.ord")]
    return np.stack([index.shards[0].reconstruct(vector_id) for vector_id in ids])


def test_build_then_rerun_is_up_to_date(settings: Settings, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", docs(20))
    report = build(settings, path)
    assert (report.status, report.documents, report.version) == ("built", 20, 1)
    manifest = report.manifest
    assert manifest["model_id"] == "all-MiniLM-L6-v2" and manifest["dim"] == 384
    assert manifest["count"] == 20 and len(manifest["weights_sha256"]) == 64
    again = build(settings, path)
    assert again.status == "up_to_date"
    assert not (settings.collections_dir / "c" / "builds").exists()


def test_crash_mid_build_resumes_from_chunk_files(settings: Settings, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", docs(30))
    seen = []

    def crash_after_two_chunks(n: int) -> None:
        seen.append(n)
        if len(seen) == 2:
            raise KeyboardInterrupt  # what a Ctrl-C between chunks looks like

    with pytest.raises(KeyboardInterrupt):
        BuildJob(settings, "c", path, BuildOptions(chunk_size=8),
                 progress=crash_after_two_chunks).run()
    _, store = open_store(settings.collections_dir, "c")
    assert store.get_meta("current_version") is None
    assert store.count_documents() >= 16  # documents are committed before their vectors
    resumed = build(settings, path)
    assert resumed.chunks_reused == 2 and resumed.documents == 30
    other = settings.model_copy(update={"home": tmp_path / "other"})
    assert build(other, path).chunks_reused == 0
    np.testing.assert_allclose(vectors_of(settings, "c"), vectors_of(other, "c"), atol=1e-6)


def test_bad_lines_fail_with_line_numbers_or_are_skipped(settings: Settings, tmp_path: Path) -> None:
    rows = docs(5)
    lines = [json.dumps(r) for r in rows] + ["{broken", json.dumps(rows[0]),
                                             json.dumps({"_id": "empty", "text": ""})]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(BuildError, match=r"line 6: invalid JSON.*--on-error skip"):
        build(settings, path, lexical_only=True)
    report = build(settings, path, lexical_only=True, on_error="skip")
    assert [(i.line, i.message.split(" (")[0]) for i in report.issues] == [
        (6, "invalid JSON"), (7, "duplicate _id 'd0'"), (8, "document 'empty' has no text")]
    assert report.documents == 5


def test_duplicates_across_chunks_are_found(settings: Settings, tmp_path: Path) -> None:
    rows = docs(12) + [docs(1)[0]]
    path = write_jsonl(tmp_path / "dup.jsonl", rows)
    with pytest.raises(BuildError, match="line 13: duplicate _id 'd0' \\(first on line 1\\)"):
        build(settings, path, lexical_only=True)


def test_lexical_only_needs_no_model_and_rebuild_drops_removed_docs(
        settings: Settings, tmp_path: Path) -> None:
    bad_model = settings.model_copy(update={"default_model": str(tmp_path / "no-model")})
    report = build(bad_model, write_jsonl(tmp_path / "a.jsonl", docs(10)), lexical_only=True)
    assert report.version is None and report.documents == 10
    build(bad_model, write_jsonl(tmp_path / "b.jsonl", docs(4, start=8)), lexical_only=True)
    _, store = open_store(settings.collections_dir, "c")
    assert store.count_documents() == 4 and store.document("d0") is None


def test_empty_input_and_unknown_model_are_clear(settings: Settings, tmp_path: Path) -> None:
    from embedsvc.encoders import ModelError

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(BuildError, match="no usable document"):
        build(settings, empty)
    with pytest.raises(ModelError, match="unknown model"):
        build(settings, write_jsonl(tmp_path / "a.jsonl", docs(2)), model="no/such-model")
