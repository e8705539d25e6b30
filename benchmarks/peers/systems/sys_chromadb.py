"""Chroma (its venv): a PersistentClient collection filled with ``add(ids, documents)``.

Chroma embeds in the client library; its default embedding function downloads an ONNX
model, so every Chroma process here uses ``SentenceTransformerEmbeddingFunction`` with
the local model folder instead (same model, same 256-token cut as the other peers).
Collection settings are Chroma's defaults (HNSW, l2 on the model's unit vectors, which
ranks as cosine does). ``chroma run --path <out>/chroma`` serves the same folder.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

import chromadb  # noqa: E402
from chromadb.utils.embedding_functions import SentenceTransformerEmbeddingFunction  # noqa: E402
from common import COLLECTION, batches, parser, read_corpus, read_queries, run_queries, setup_logging  # noqa: E402

log = logging.getLogger("benchmarks.peers.chromadb")
# Documents per add() call: well under Chroma's max batch size, and what its docs show.
ADD_BATCH = 1000


def embedding_function(model_dir: str) -> SentenceTransformerEmbeddingFunction:
    return SentenceTransformerEmbeddingFunction(model_name=model_dir, device="cpu")


def build(corpus: Path, model_dir: str, out: Path) -> None:
    client = chromadb.PersistentClient(path=str(out / "chroma"))
    collection = client.create_collection(COLLECTION, embedding_function=embedding_function(model_dir))
    for batch in batches(read_corpus(corpus), ADD_BATCH):
        ids, texts = zip(*batch, strict=True)
        collection.add(ids=list(ids), documents=list(texts))
    log.info("chromadb: %d documents indexed", collection.count())


def searcher(collection):
    """Ranked ids of one query text (embedded here, in the client, as Chroma does)."""
    def search(text: str, k: int) -> list[str]:
        return collection.query(query_texts=[text], n_results=k, include=["distances"])["ids"][0]

    return search


def main() -> None:
    setup_logging()
    args = parser(__doc__).parse_args()
    if args.command == "index":
        build(args.corpus, args.model, args.out)
        return
    client = chromadb.PersistentClient(path=str(args.out / "chroma"))
    collection = client.get_collection(COLLECTION, embedding_function=embedding_function(args.model))
    run_queries(searcher(collection), read_queries(args.queries), args.result)


if __name__ == "__main__":
    main()
