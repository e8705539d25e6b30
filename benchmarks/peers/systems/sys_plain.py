"""The plain baseline: sentence-transformers encodes, a FAISS IndexFlatIP searches.

The simplest correct script anyone would write (project venv): encode the whole corpus
with the model's defaults (batch 32, truncation at its 256 tokens), unit vectors, exact
inner-product search. ``naive_server.py`` serves the index this writes.
"""

from __future__ import annotations

import json
import logging

import faiss
import numpy as np
from common import TIMED_K, parser, read_corpus, read_queries, run_queries, setup_logging
from sentence_transformers import SentenceTransformer

log = logging.getLogger("benchmarks.peers.plain")


def build(corpus, model_dir: str, out) -> None:
    model = SentenceTransformer(model_dir, device="cpu")
    ids, texts = zip(*read_corpus(corpus), strict=True)
    vectors = model.encode(list(texts), normalize_embeddings=True, convert_to_numpy=True)
    index = faiss.IndexFlatIP(vectors.shape[1])  # (docs, dim) unit rows: inner product = cosine
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    out.mkdir(parents=True, exist_ok=True)
    faiss.write_index(index, str(out / "index.faiss"))
    (out / "ids.json").write_text(json.dumps(list(ids)))
    log.info("plain: %d documents indexed", len(ids))


def open_searcher(model_dir: str, out):
    """(model, index, ids) and a search function over them."""
    model = SentenceTransformer(model_dir, device="cpu")
    index = faiss.read_index(str(out / "index.faiss"))
    ids = json.loads((out / "ids.json").read_text())

    def search(text: str, k: int = TIMED_K) -> list[str]:
        vector = model.encode([text], normalize_embeddings=True, convert_to_numpy=True)
        _, rows = index.search(np.ascontiguousarray(vector, dtype=np.float32), k)
        return [ids[r] for r in rows[0] if r >= 0]

    return search


def main() -> None:
    setup_logging()
    args = parser(__doc__).parse_args()
    if args.command == "index":
        build(args.corpus, args.model, args.out)
    else:
        run_queries(open_searcher(args.model, args.out), read_queries(args.queries), args.result)


if __name__ == "__main__":
    main()
