"""Retrieval metrics on BEIR-style judgments, computed as pytrec_eval / BEIR do.

``run`` maps a query id to its ranked document ids (best first); ``qrels`` maps a query
id to ``{doc_id: grade}``. Queries without a positive judgment are left out, as in BEIR.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

Run = Mapping[str, Sequence[str]]
Qrels = Mapping[str, Mapping[str, int]]


def ndcg_at_k(ranked: Sequence[str], judged: Mapping[str, int], k: int) -> float:
    """nDCG@k with linear gains (the trec_eval definition BEIR and MTEB report)."""
    dcg = sum(judged.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked[:k]))
    ideal = sorted((g for g in judged.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def mrr_at_k(ranked: Sequence[str], judged: Mapping[str, int], k: int) -> float:
    for i, d in enumerate(ranked[:k]):
        if judged.get(d, 0) > 0:
            return 1.0 / (i + 1)
    return 0.0


def recall_at_k(ranked: Sequence[str], judged: Mapping[str, int], k: int) -> float:
    relevant = {d for d, g in judged.items() if g > 0}
    if not relevant:
        return 0.0
    return len(relevant.intersection(ranked[:k])) / len(relevant)


def map_at_k(ranked: Sequence[str], judged: Mapping[str, int], k: int) -> float:
    relevant = {d for d, g in judged.items() if g > 0}
    hits, total = 0, 0.0
    for i, d in enumerate(ranked[:k]):
        if d in relevant:
            hits += 1
            total += hits / (i + 1)
    return total / len(relevant) if relevant else 0.0


METRICS = {
    "nDCG@10": (ndcg_at_k, 10),
    "MRR@10": (mrr_at_k, 10),
    "MAP@100": (map_at_k, 100),
    "Recall@100": (recall_at_k, 100),
}
# How deep a ranking must go for every metric above.
RANKING_DEPTH = max(k for _, k in METRICS.values())
# A search as evaluation and mining see it: query texts and a depth in, ranked ids out.
SearchFn = Callable[[list[str], int], list[list[str]]]


def evaluate(run: Run, qrels: Qrels) -> dict[str, float]:
    """Mean of each metric over the judged queries; a query missing from ``run`` scores 0."""
    judged = {q: j for q, j in qrels.items() if any(g > 0 for g in j.values())}
    if not judged:
        raise ValueError("no query has a positive judgment")
    return {
        name: sum(fn(run.get(q, ()), j, k) for q, j in judged.items()) / len(judged)
        for name, (fn, k) in METRICS.items()
    }


def load_qrels(beir_dir: Path, split: str) -> dict[str, dict[str, int]]:
    """Read ``qrels/<split>.tsv`` (query-id, corpus-id, score; a header line)."""
    path = beir_dir / "qrels" / f"{split}.tsv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {beir_dir} a BEIR folder with that split?")
    qrels: dict[str, dict[str, int]] = {}
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            qrels.setdefault(row["query-id"], {})[row["corpus-id"]] = int(row["score"])
    return qrels


def load_queries(beir_dir: Path, ids: set[str] | None = None) -> dict[str, str]:
    """Read ``queries.jsonl``; keep only ``ids`` when given."""
    queries: dict[str, str] = {}
    with open(beir_dir / "queries.jsonl", encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            if ids is None or row["_id"] in ids:
                queries[row["_id"]] = row["text"]
    return queries
