"""Encoder backends on SciFact: speed, agreement with torch fp32, retrieval quality, padding.

Three measurements, one run:

1. speed: the passages of the first ``--speed-docs`` documents embedded by every backend,
   alternating backends, ``--reps`` times; median passages/s and the ratio to torch fp32.
2. quality: the whole corpus cut into passages (``--long-texts split``, as a default build)
   and embedded once per backend; nDCG@10 of exact search on the 300 test queries, every
   combination of the backend that embedded the documents and the one that embedded the
   queries (the off-diagonal says whether two backends' vectors may share an index), and
   the mean cosine of each backend's passage vectors to torch fp32's.
3. padding: the share of padding tokens when a build's chunks (``--chunk-size`` documents)
   are batched the way sentence-transformers does (by characters) and by token count.

    python benchmarks/backends.py [--speed-docs 192] [--reps 3] [--docs N]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from embedsvc.backends import BACKENDS  # noqa: E402
from embedsvc.encoders import DEFAULT_MODEL, Encoder, load_encoder  # noqa: E402
from embedsvc.ir_metrics import RANKING_DEPTH, evaluate, load_qrels, load_queries  # noqa: E402
from embedsvc.passages import split_passages  # noqa: E402
from training.pairs import load_corpus  # noqa: E402

SCIFACT = REPO / "data" / "scifact"
log = logging.getLogger("backends")


def passages_of(encoder: Encoder, texts: list[str]) -> tuple[list[int], list[list[int]]]:
    """(document index of each passage, each passage's token ids), as a default build cuts."""
    _, ids = split_passages(encoder.tokenizer, texts, encoder.max_tokens)
    owner = [d for d, doc in enumerate(ids) for _ in doc]
    return owner, [w for doc in ids for w in doc]


def speed(encoders: dict[str, Encoder], windows: list[list[int]], reps: int) -> dict[str, list[float]]:
    rates: dict[str, list[float]] = {b: [] for b in encoders}
    for _ in range(reps):
        for backend, encoder in encoders.items():
            started = time.perf_counter()
            encoder.encode_ids(windows)
            rates[backend].append(len(windows) / (time.perf_counter() - started))
    return rates


def rank(doc_vectors: np.ndarray, owner: np.ndarray, doc_ids: list[str],
         query_vectors: np.ndarray) -> list[list[str]]:
    """Exact search, each document scored by its best passage."""
    scores = query_vectors @ doc_vectors.T
    best = np.full((len(query_vectors), len(doc_ids)), -np.inf, dtype=np.float32)
    for q in range(len(query_vectors)):
        np.maximum.at(best[q], owner, scores[q])
    top = np.argsort(-best, axis=1)[:, :RANKING_DEPTH]
    return [[doc_ids[i] for i in row] for row in top]


def padding_share(encoder: Encoder, texts: list[str], chunk: int, batch: int) -> tuple[float, float]:
    """Padding tokens / all tokens, batching each chunk's passages by characters (as
    sentence-transformers' encode orders a call) and by token count (as ours does)."""
    by_chars = by_tokens = total = 0
    for at in range(0, len(texts), chunk):
        part = texts[at:at + chunk]
        spans, ids = split_passages(encoder.tokenizer, part, encoder.max_tokens)
        chars = [b - a for doc in spans for a, b in doc]
        lengths = [len(w) + encoder.special_tokens for doc in ids for w in doc]
        for order, counter in ((np.argsort([-c for c in chars], kind="stable"), "chars"),
                               (np.argsort([-n for n in lengths], kind="stable"), "tokens")):
            pad = 0
            for b in range(0, len(order), batch):
                rows = [lengths[i] for i in order[b:b + batch]]
                pad += max(rows) * len(rows) - sum(rows)
            if counter == "chars":
                by_chars += pad
            else:
                by_tokens += pad
        total += sum(lengths)
    return by_chars / (total + by_chars), by_tokens / (total + by_tokens)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--speed-docs", type=int, default=192)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--docs", type=int, default=None, help="corpus subset for quality")
    parser.add_argument("--chunk-size", type=int, default=512)
    parser.add_argument("--backends", default=",".join(BACKENDS))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    backends = args.backends.split(",")

    with tempfile.TemporaryDirectory(prefix="bench-backends-") as home:
        models = Path(home) / "models"
        encoders = {b: load_encoder(DEFAULT_MODEL, models, backend=b) for b in backends}
        corpus = load_corpus(SCIFACT)
        doc_ids = list(corpus)[:args.docs] if args.docs else list(corpus)
        texts = [corpus[d] for d in doc_ids]
        torch_encoder = encoders[backends[0]]

        _, windows = passages_of(torch_encoder, texts[:args.speed_docs])
        rates = speed(encoders, windows, args.reps)

        qrels = load_qrels(SCIFACT, "test")
        queries = load_queries(SCIFACT, set(qrels))
        query_ids = sorted(queries)
        owner, all_windows = passages_of(torch_encoder, texts)
        docs, qs, seconds = {}, {}, {}
        for backend, encoder in encoders.items():
            started = time.perf_counter()
            docs[backend] = encoder.encode_ids(all_windows)
            seconds[backend] = time.perf_counter() - started
            qs[backend] = encoder.encode([queries[q] for q in query_ids])
            log.info("%s: %d passages in %.1f s", backend, len(all_windows), seconds[backend])
        owners = np.asarray(owner)
        ndcg = {(d, q): evaluate(dict(zip(query_ids, rank(docs[d], owners, doc_ids, qs[q]),
                                          strict=True)), qrels)["nDCG@10"]
                for d in backends for q in backends}
        chars, tokens = padding_share(torch_encoder, texts, args.chunk_size, torch_encoder.batch_size)

    base = backends[0]
    print(f"\n### Speed: {len(windows)} passages of the first {args.speed_docs} SciFact documents, "
          f"{args.reps} alternating reps\n")
    print("| backend | passages/s median [min–max] | × torch | full corpus s | mean cos to torch "
          "| nDCG@10 |")
    print("|---|---|---|---|---|---|")
    for b in backends:
        median = statistics.median(rates[b])
        cos = float((docs[b] * docs[base]).sum(axis=1).mean())
        print(f"| {b} | {median:.1f} [{min(rates[b]):.1f}–{max(rates[b]):.1f}] | "
              f"{median / statistics.median(rates[base]):.2f} | {seconds[b]:.1f} | {cos:.4f} | "
              f"{ndcg[(b, b)]:.4f} |")
    print(f"\n### nDCG@10 by who embedded the documents (rows) and the queries (columns), "
          f"{len(doc_ids)} documents, {len(all_windows)} passages\n")
    print("| documents \\ queries | " + " | ".join(backends) + " |")
    print("|---" * (len(backends) + 1) + "|")
    for d in backends:
        print(f"| {d} | " + " | ".join(f"{ndcg[(d, q)]:.4f}" for q in backends) + " |")
    print(f"\n### Padding share of a build's batches ({args.chunk_size}-document chunks, "
          f"batch {torch_encoder.batch_size})\n")
    print(f"| batched by characters (sentence-transformers) | by tokens (embedsvc) |\n|---|---|\n"
          f"| {chars:.1%} | {tokens:.1%} |")


if __name__ == "__main__":
    main()
