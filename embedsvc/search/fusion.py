"""Reciprocal rank fusion: combine dense and lexical rankings without calibrating scores.

BM25 scores and cosine similarities live on different scales; RRF (Cormack et al., 2009)
only uses ranks, so it needs no tuning per corpus. ``k=60`` is the paper's constant.
"""

from __future__ import annotations

from collections.abc import Sequence


def rrf(rankings: Sequence[Sequence[int]], k: int = 60, limit: int | None = None,
        weights: Sequence[float] | None = None) -> list[tuple[int, float]]:
    """Fuse ranked id lists into (id, score) pairs, best first; ties broken by id.

    ``weights`` (one per ranking, default 1) scale each ranking's contributions: weighted RRF.
    """
    weights = weights or [1.0] * len(rankings)
    scores: dict[int, float] = {}
    for ranking, weight in zip(rankings, weights, strict=True):
        for rank, doc in enumerate(ranking):
            scores[doc] = scores.get(doc, 0.0) + weight / (k + rank + 1)
    fused = sorted(scores.items(), key=lambda item: (-item[1], item[0]))
    return fused[:limit] if limit is not None else fused
