"""BM25 over SQLite FTS5: the search that works before any model or index exists.

User text never reaches FTS5's query syntax as is (quotes, ``NEAR``, ``*``, column
filters would be interpreted or raise): it is cut into word tokens, stop words are
dropped (Lucene's English list, as Anserini's BM25 uses), and each token is quoted and
OR-ed, which gives the bag-of-words BM25 ranking the published baselines use.
"""

from __future__ import annotations

import re

from embedsvc.search.filters import CompiledFilter
from embedsvc.store import Store

# Lucene's EnglishAnalyzer default stop set.
STOPWORDS = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such that the their "
    "then there these they this to was will with".split()
)
_TOKEN = re.compile(r"\w+", re.UNICODE)
# bm25() column weights for (title, text).
WEIGHTS = (1.0, 1.0)


def match_expression(query: str, max_terms: int = 64) -> str | None:
    """An FTS5 MATCH string for free text, or None when no searchable term remains."""
    terms: list[str] = []
    for token in _TOKEN.findall(query.lower()):
        if token not in STOPWORDS and token not in terms:
            terms.append(token)
    if not terms:
        return None
    return " OR ".join(f'"{t}"' for t in terms[:max_terms])


def search_lexical(store: Store, query: str, k: int,
                   where: CompiledFilter | None = None) -> list[tuple[int, float]]:
    """Top ``k`` (rowid, bm25 score) for free text, among the documents ``where`` matches;
    empty when nothing can match."""
    match = match_expression(query)
    if match is None:
        return []
    return store.bm25(match, k, WEIGHTS, (where.sql, list(where.params)) if where else None)
