"""Evaluate a served collection on BEIR judgments, through the same searcher the API uses."""

from __future__ import annotations

from pathlib import Path

from embedsvc.ir_metrics import RANKING_DEPTH, SearchFn, evaluate, load_qrels, load_queries
from embedsvc.search.searcher import Searcher


def ranked_ids(searcher: Searcher, mode: str) -> SearchFn:
    """The searcher as evaluation and mining use it: texts in, document ids out.

    A fallback raises instead of being returned, so a degraded ranking can never pass for
    the mode asked for (unless that mode is ``auto``).
    """
    def search(texts: list[str], k: int) -> list[list[str]]:
        results = searcher.search_many(texts, k, mode)
        for result in results:
            if mode != "auto" and result.mode != mode:
                raise RuntimeError(f"asked for {mode} but got {result.mode} ({result.fallback})")
        return [[hit.id for hit in result.hits] for result in results]

    return search


def evaluate_collection(searcher: Searcher, beir_dir: Path, split: str = "test",
                        mode: str = "dense", batch: int = 64) -> dict[str, float]:
    """nDCG@10, MRR@10, MAP@100 and Recall@100 of ``mode`` on the split's judged queries.

    Returns:
        The metrics and ``queries`` (how many were judged). A fallback raises instead of
        being scored, so a degraded run can never pass for a dense one.
    """
    qrels = load_qrels(beir_dir, split)
    queries = load_queries(beir_dir, set(qrels))
    missing = set(qrels) - set(queries)
    if missing:
        raise ValueError(f"{len(missing)} judged queries are not in queries.jsonl, e.g. "
                         f"{sorted(missing)[:3]}")
    ids = sorted(queries)
    search = ranked_ids(searcher, mode)
    run: dict[str, list[str]] = {}
    for start in range(0, len(ids), batch):
        part = ids[start : start + batch]
        run.update(zip(part, search([queries[q] for q in part], RANKING_DEPTH), strict=True))
    metrics = evaluate(run, qrels)
    metrics["queries"] = float(len(ids))
    return metrics
