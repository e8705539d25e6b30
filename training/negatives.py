"""Hard-negative mining: the top results of a search that are not judged relevant.

In-batch negatives are mostly easy (random documents); a document the current model ranks
high for a query but that is not one of its positives teaches the model far more. Mining takes
the search as a plain callable ``search(queries, k) -> ranked doc ids`` so it works against any
searcher (an exact search over a corpus with the base model, a served collection's index)
without importing the serving code.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace

from embedsvc.ir_metrics import SearchFn
from training.pairs import Pair, PairsError

log = logging.getLogger(__name__)



def positives_by_query(pairs: Sequence[Pair]) -> dict[str, set[str]]:
    """Every positive of each query, keyed by query text, as ids where known else as texts.

    A query with several positives appears in several pairs; none of its positives may become
    a negative of any of them.
    """
    positives: dict[str, set[str]] = {}
    for p in pairs:
        positives.setdefault(p.query, set()).add(p.positive_id or p.positive)
    return positives


def _pick_negatives(
    ranked: Sequence[str],
    positives: set[str],
    corpus: Mapping[str, str],
    num_negatives: int,
    skip_top: int,
) -> list[str]:
    chosen: list[str] = []
    for doc_id in list(ranked)[skip_top:]:
        text = corpus.get(doc_id)
        if text is None:
            raise PairsError(f"search returned id {doc_id!r}, which is not in the corpus given")
        if doc_id in positives or text in positives or doc_id in chosen:
            continue
        chosen.append(doc_id)
        if len(chosen) == num_negatives:
            break
    return chosen


def mine_hard_negatives(
    pairs: Sequence[Pair],
    search: SearchFn,
    corpus: Mapping[str, str],
    num_negatives: int = 1,
    skip_top: int = 0,
    batch_size: int = 256,
) -> list[Pair]:
    """Add ``num_negatives`` mined hard negatives to every pair.

    Each distinct query is searched once; the negatives are its highest-ranked results that are
    not among any of its positives (by id where the pair has ids, else by text).

    Args:
        pairs: the training pairs; negatives they already have are kept and the mined ones
            appended after them.
        search: ``search(queries, k)`` returning, for each query, doc ids best first.
        corpus: doc id to the text the model is trained on (the same ids ``search`` returns).
        num_negatives: negatives to add per pair.
        skip_top: ranks to skip before taking negatives (unjudged relevant documents cluster at
            the very top; skipping a few trades hardness for fewer false negatives).
        batch_size: queries per call to ``search``.

    Returns:
        New pairs, in the same order, each with ``num_negatives`` more negatives.

    Raises:
        PairsError: the search returns fewer usable results than needed for some query, or an
            id the corpus does not hold.
    """
    if num_negatives < 1:
        raise ValueError("num_negatives must be at least 1")
    positives = positives_by_query(pairs)
    queries = list(positives)
    depth = skip_top + num_negatives + max(len(p) for p in positives.values())
    mined: dict[str, list[str]] = {}
    for start in range(0, len(queries), batch_size):
        batch = queries[start : start + batch_size]
        for query, ranked in zip(batch, search(batch, depth), strict=True):
            chosen = _pick_negatives(ranked, positives[query], corpus, num_negatives, skip_top)
            if len(chosen) < num_negatives:
                raise PairsError(
                    f"search found only {len(chosen)} non-positive results of {num_negatives} "
                    f"wanted for query {query[:80]!r}: lower num_negatives or skip_top"
                )
            mined[query] = chosen
    log.info("mined %d hard negatives for each of %d queries", num_negatives, len(queries))
    return [
        replace(
            p,
            negatives=p.negatives + tuple(corpus[d] for d in mined[p.query]),
            negative_ids=p.negative_ids + tuple(mined[p.query]),
        )
        for p in pairs
    ]
