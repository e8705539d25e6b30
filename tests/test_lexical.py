"""BM25 over FTS5: stemming, stop words, and hostile query strings."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from embedsvc.search.lexical import match_expression, search_lexical
from embedsvc.store import NewDocument, Store, create_schema
from indexing.versions import switch_version


@pytest.fixture
def store(tmp_path: Path) -> Store:
    create_schema(tmp_path / "c.db")
    store = Store(tmp_path / "c.db")
    docs = [("d1", "Running shoes", "Athletes run in shoes."),
            ("d2", "Vitamin D", "Deficiency of vitamin D is common in winter."),
            ("d3", "Cooking", "The pasta is boiled.")]
    store.upsert_documents([NewDocument(i, t, x, {}, n) for n, (i, t, x) in enumerate(docs, 1)],
                           "b1")
    return store


def ids(store: Store, query: str) -> list[str]:
    rows = store.documents_by_rowid(r for r, _ in search_lexical(store, query, 10))
    return [rows[r].id for r, _ in search_lexical(store, query, 10)]


def test_stemming_matches_other_word_forms(store: Store) -> None:
    assert ids(store, "runs")[0] == "d1"
    assert ids(store, "vitamin deficiencies") == ["d2"]


@pytest.mark.parametrize("query", ['"unbalanced', "NEAR(a b)", "title:vitamin", "a*", "-", "))(("
                                   , "' OR 1=1 --", "\x00", "vitamin AND", "😀"])
def test_hostile_queries_never_raise(store: Store, query: str) -> None:
    search_lexical(store, query, 5)


def test_stop_words_only_gives_no_terms() -> None:
    assert match_expression("the of and") is None
    assert match_expression('vitamin "d"') == '"vitamin" OR "d"'


def test_upsert_keeps_rowid_and_updates_fts(store: Store) -> None:
    before = store.rowids(["d3"])
    store.upsert_documents([NewDocument("d3", "Baking", "Bread is baked.", {}, 3)], "b2")
    assert store.rowids(["d3"]) == before
    assert ids(store, "bread") == ["d3"] and ids(store, "pasta") == []


def fts_rowids(store: Store) -> set[int]:
    return {r for (r,) in store.conn.execute("SELECT id FROM documents_fts_docsize")}


def test_only_documents_with_text_are_in_the_fts_index(store: Store) -> None:
    store.upsert_bare_documents(["v1", "v2"], [4, 5], "b1")
    store.upsert_documents([NewDocument("d1", "", "", {}, 1)], "b2")  # its text is gone
    store.upsert_documents([NewDocument("v1", "Vitamin C", "", {}, 4)], "b2")  # text arrives
    assert fts_rowids(store) == set(store.rowids(["d2", "d3", "v1"]))
    assert sorted(ids(store, "vitamin")) == ["d2", "v1"] and ids(store, "shoes") == []
    switch_version(store, None, None, build="b2")  # d2, d3 (text) and v2 (none) go
    assert fts_rowids(store) == set(store.rowids(["v1"]))
    assert ids(store, "vitamin") == ["v1"]


def test_a_schema_2_database_is_migrated(tmp_path: Path) -> None:
    import sqlite_utils

    # what schema 2 left: every document in the FTS index, text or not, and a build index
    path = tmp_path / "old.db"
    db = sqlite_utils.Database(path)
    db["documents"].create({"rowid": int, "id": str, "title": str, "text": str, "metadata": str,
                            "build": str, "line": int}, pk="rowid", not_null={"id"})
    db["documents"].create_index(["id"], unique=True)
    db["documents"].create_index(["build"])
    db["documents"].enable_fts(["title", "text"], fts_version="FTS5", tokenize="porter",
                               create_triggers=True)
    db["documents"].insert_all([
        {"id": "a", "title": "Vitamin D", "text": "sun", "build": "b", "line": 1},
        {"id": "v", "title": "", "text": "", "build": "b", "line": 2},
    ])
    db["meta"].insert({"key": "schema_version", "value": "2"}, pk="key")
    db.conn.close()
    with ThreadPoolExecutor(2) as pool:  # two processes opening it at once
        list(pool.map(create_schema, [path, path]))
    store = Store(path)
    assert fts_rowids(store) == set(store.rowids(["a"]))
    assert "idx_documents_build" not in {i.name for i in sqlite_utils.Database(path)["documents"].indexes}
    assert ids(store, "vitamin") == ["a"]
    switch_version(store, None, None, build="new")
    assert fts_rowids(store) == set() and ids(store, "vitamin") == []
