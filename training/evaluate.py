"""Evaluating a model on its own: exact search over a BEIR corpus, scored with ir_metrics.

A trained model is judged here before it can be promoted, with no index in the way: every
query is compared with every document (cosine similarity on normalised vectors), so the
figures measure the model and nothing else, and they are comparable with the published BEIR /
MTEB numbers. The same exact searcher doubles as the search used for hard-negative mining.
Plots of the metrics of each version and of the training loss are written beside the model.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from embedsvc.encoders import load_sentence_transformer
from embedsvc.ir_metrics import METRICS, RANKING_DEPTH, SearchFn, evaluate, load_qrels, load_queries
from training.pairs import load_corpus

log = logging.getLogger(__name__)

PLOT_FILE = "training.png"


@dataclass(frozen=True)
class EvalResult:
    """Metrics of one model on one BEIR split, with what they were measured on."""

    metrics: dict[str, float]
    dataset: str
    split: str
    queries: int
    documents: int
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready form for model cards."""
        return {
            "metrics": self.metrics,
            "dataset": self.dataset,
            "split": self.split,
            "queries": self.queries,
            "documents": self.documents,
            "seconds": round(self.seconds, 2),
        }


class ExactSearcher:
    """Brute-force cosine search over a corpus embedded once.

    Memory is ``documents x dim`` floats (SciFact: 5k x 384, 8 MB); it is meant for
    evaluation and mining on corpora that fit, not as a serving index.

    Args:
        model: a loaded SentenceTransformer.
        corpus: doc id to text.
        batch_size: texts per encoding batch.
    """

    def __init__(self, model: Any, corpus: Mapping[str, str], batch_size: int = 64) -> None:
        self.model = model
        self.batch_size = batch_size
        self.doc_ids = list(corpus)
        # (documents, dim), unit length
        self.doc_vectors = model.encode_document(
            [corpus[d] for d in self.doc_ids],
            batch_size=batch_size,
            convert_to_tensor=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )

    def __call__(self, queries: list[str], k: int) -> list[list[str]]:
        """Rank the corpus for each query.

        Args:
            queries: query texts.
            k: results per query.

        Returns:
            For each query, the ids of the ``k`` most similar documents, best first.
        """
        import torch

        if not queries:
            return []
        # (queries, dim)
        q = self.model.encode_query(
            queries,
            batch_size=self.batch_size,
            convert_to_tensor=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        scores = q @ self.doc_vectors.T  # (queries, documents)
        top = torch.topk(scores, k=min(k, len(self.doc_ids)), dim=1).indices.tolist()
        return [[self.doc_ids[i] for i in row] for row in top]


def evaluate_search(
    search: SearchFn, queries: Mapping[str, str], qrels: Mapping[str, Mapping[str, int]]
) -> dict[str, float]:
    """Score any search function on judged queries (a model, or a served collection).

    Args:
        search: ``search(queries, k)`` returning ranked doc ids.
        queries: query id to text, for the judged queries.
        qrels: query id to ``{doc_id: grade}``.

    Returns:
        nDCG@10, MRR@10, MAP@100 and Recall@100.
    """
    ids = [q for q in qrels if q in queries]
    ranked = search([queries[q] for q in ids], RANKING_DEPTH)
    return evaluate(dict(zip(ids, ranked, strict=True)), qrels)


@dataclass(frozen=True)
class EvalSet:
    """A BEIR split read once: what :func:`evaluate_loaded` scores models on."""

    beir_dir: Path
    split: str
    qrels: dict[str, dict[str, int]]
    queries: dict[str, str]
    corpus: dict[str, str]

    @classmethod
    def load(cls, beir_dir: Path, split: str = "test") -> EvalSet:
        qrels = load_qrels(beir_dir, split)
        return cls(beir_dir, split, qrels, load_queries(beir_dir, set(qrels)), load_corpus(beir_dir))


def evaluate_loaded(model: Any, data: EvalSet, batch_size: int = 64) -> EvalResult:
    """Score a loaded model on ``data`` with exact search (e.g. each round's weights)."""
    started = time.time()
    metrics = evaluate_search(ExactSearcher(model, data.corpus, batch_size), data.queries, data.qrels)
    return EvalResult(metrics=metrics, dataset=str(data.beir_dir), split=data.split,
                      queries=len(data.queries), documents=len(data.corpus),
                      seconds=time.time() - started)


def evaluate_model(
    model_path: Path | str,
    beir_dir: Path,
    split: str = "test",
    max_seq_length: int | None = None,
    batch_size: int = 64,
    device: str = "cpu",
) -> EvalResult:
    """Evaluate a model folder on a BEIR split with exact search.

    Args:
        model_path: a sentence-transformers model folder.
        beir_dir: BEIR folder (corpus, queries.jsonl, qrels/<split>.tsv).
        split: the qrels split to score.
        max_seq_length: truncate texts to this many tokens (the model's own limit if None).
        batch_size: texts per encoding batch.
        device: torch device.

    Returns:
        The metrics and what they were measured on.
    """
    started = time.time()
    data = EvalSet.load(beir_dir, split)
    result = evaluate_loaded(load_sentence_transformer(model_path, device, max_seq_length), data, batch_size)
    result = replace(result, seconds=time.time() - started)  # loading included, as always
    log.info("%s on %s/%s: %s", model_path, beir_dir.name, split, format_metrics(result.metrics))
    return result


def format_metrics(metrics: Mapping[str, float]) -> str:
    """``nDCG@10=0.6451 MRR@10=...`` for logs."""
    return " ".join(f"{k}={v:.4f}" for k, v in metrics.items())


def read_loss_log(path: Path) -> list[dict[str, Any]]:
    """The rows of a ``loss.jsonl`` (step, epoch, loss, learning_rate, ...); [] if absent."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def plot_training(
    out_path: Path,
    versions: Sequence[tuple[str, Mapping[str, float]]],
    loss_rows: Sequence[Mapping[str, Any]],
    title: str = "",
) -> Path:
    """Draw metrics per model version (left) and the training loss (right) into a PNG.

    Args:
        out_path: the PNG to write.
        versions: (label, metrics) in order, e.g. the base model then each version.
        loss_rows: rows of the loss log of the model being plotted.
        title: figure title.

    Returns:
        ``out_path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from embedsvc.files import write_atomic_with

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    labels = [label for label, _ in versions]
    for name in METRICS:
        left.plot(labels, [m.get(name, float("nan")) for _, m in versions], marker="o", label=name)
    left.set_title("retrieval metrics per model version")
    left.set_ylabel("score")
    left.grid(alpha=0.3)
    left.legend()
    left.tick_params(axis="x", labelrotation=30)
    if loss_rows:
        right.plot([r["step"] for r in loss_rows], [r["loss"] for r in loss_rows])
    else:
        right.text(0.5, 0.5, "no loss log", ha="center", va="center", transform=right.transAxes)
    right.set_title("training loss (MultipleNegativesRankingLoss)")
    right.set_xlabel("step")
    right.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    write_atomic_with(out_path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
    return out_path
