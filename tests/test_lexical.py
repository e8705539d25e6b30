"""BM25 over FTS5: stemming, stop words, and hostile query strings."""

from __future__ import annotations

from pathlib import Path

import pytest

from embedsvc.search.lexical import match_expression, search_lexical
from embedsvc.store import NewDocument, Store, create_schema


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
