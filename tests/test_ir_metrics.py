"""Retrieval metrics against values worked out by hand."""

from __future__ import annotations

import math

import pytest

from embedsvc.ir_metrics import evaluate, map_at_k, mrr_at_k, ndcg_at_k, recall_at_k


def test_ndcg_by_hand() -> None:
    judged = {"a": 1, "b": 1}
    # relevant at ranks 2 and 3: (1/log2(3) + 1/log2(4)) / (1 + 1/log2(3))
    expected = (1 / math.log2(3) + 0.5) / (1 + 1 / math.log2(3))
    assert ndcg_at_k(["x", "a", "b"], judged, 10) == pytest.approx(expected)
    assert ndcg_at_k(["a", "b"], judged, 10) == pytest.approx(1.0)
    assert ndcg_at_k(["x"] * 10 + ["a"], judged, 10) == 0.0


def test_mrr_recall_map() -> None:
    judged = {"a": 1, "b": 1, "c": 0}
    assert mrr_at_k(["c", "x", "b"], judged, 10) == pytest.approx(1 / 3)
    assert recall_at_k(["a", "x"], judged, 100) == 0.5
    assert map_at_k(["a", "x", "b"], judged, 100) == pytest.approx((1 + 2 / 3) / 2)


def test_evaluate_scores_missing_queries_as_zero_and_skips_unjudged() -> None:
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}, "q3": {"c": 0}}
    metrics = evaluate({"q1": ["a"]}, qrels)
    assert metrics["nDCG@10"] == pytest.approx(0.5)
    with pytest.raises(ValueError):
        evaluate({}, {"q": {"a": 0}})
