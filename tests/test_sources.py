"""Reading corpora: formats, line-numbered issues, fixed-size chunks."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from indexing.sources import (
    InputIssue,
    Record,
    SourceError,
    chunked,
    count_items,
    read_documents,
)


def items(path: Path) -> list:
    return list(read_documents(path))


def test_jsonl_keeps_extra_fields_as_metadata(tmp_path: Path) -> None:
    path = tmp_path / "docs.jsonl"
    path.write_text(json.dumps({"_id": 7, "title": "T", "text": "body", "year": 2020}) + "\n")
    [record] = items(path)
    assert record == Record(1, "7", "T", "body", {"year": 2020})


def test_gzip_and_beir_folder(tmp_path: Path) -> None:
    folder = tmp_path / "beir"
    folder.mkdir()
    with gzip.open(folder / "corpus.jsonl.gz", "wt") as fh:
        fh.write('{"_id": "a", "text": "x"}\n{"_id": "b", "title": "only a title"}\n')
    assert [r.id for r in items(folder)] == ["a", "b"]
    assert count_items(folder) == 2


def test_bad_lines_become_issues_with_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "docs.jsonl"
    path.write_text('{"_id": "a", "text": "ok"}\n{not json\n\n{"text": "no id"}\n'
                    '{"_id": "c", "text": "  "}\n[1, 2]\n')
    got = items(path)
    assert isinstance(got[0], Record)
    issues = [(i.line, i.message.split(" (")[0]) for i in got[1:]]
    assert issues == [(2, "invalid JSON"), (4, "missing '_id'"),
                      (5, "document 'c' has no text"), (6, "expected a JSON object, got list")]


def test_non_utf8_is_reported_not_raised(tmp_path: Path) -> None:
    path = tmp_path / "docs.jsonl"
    path.write_bytes(b'{"_id": "a", "text": "ok"}\n{"_id": "b", "text": "\xff\xfe"}\n')
    got = items(path)
    assert isinstance(got[-1], InputIssue) and "not UTF-8" in got[-1].message


def test_csv_and_parquet(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    csv_path = tmp_path / "docs.csv"
    csv_path.write_text('_id,title,text,lang\n1,"A, title","multi\nline",en\n2,,text two,fr\n')
    assert [(r.id, r.text, r.metadata) for r in items(csv_path)] == [
        ("1", "multi\nline", {"lang": "en"}), ("2", "text two", {"lang": "fr"})]
    pq.write_table(pa.table({"_id": ["x", "y"], "text": ["one", "two"]}), tmp_path / "d.parquet")
    assert [r.id for r in items(tmp_path / "d.parquet")] == ["x", "y"]


def test_unknown_inputs_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        read_documents(tmp_path / "missing.jsonl")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(SourceError, match="unknown format"):
        read_documents(tmp_path / "notes.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="corpus.jsonl"):
        read_documents(tmp_path / "empty")
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("title,text\na,b\n")
    with pytest.raises(SourceError, match="_id"):
        list(read_documents(bad_csv))


def test_chunks_have_stable_numbers_and_bounded_size(tmp_path: Path) -> None:
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"_id": i, "text": f"t{i}"}) + "\n" for i in range(10)))
    chunks = list(chunked(read_documents(path), 4))
    assert [c.number for c in chunks] == [0, 1, 2]
    assert [len(c.records) for c in chunks] == [4, 4, 2]
    assert [r.id for r in chunks[1].records] == ["4", "5", "6", "7"]
