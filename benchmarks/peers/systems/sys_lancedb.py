"""LanceDB (its venv): a table whose schema carries the sentence-transformers embedding
function, filled with ``table.add(rows)``; LanceDB embeds the text column itself.

LanceDB's defaults otherwise: no ANN index (its docs advise one from about 100k rows;
below that a flat scan is exact and fast), l2 distance on the model's unit vectors.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lancedb
from common import COLLECTION, batches, parser, read_corpus, read_queries, run_queries, setup_logging
from lancedb.embeddings import get_registry
from lancedb.pydantic import LanceModel, Vector

log = logging.getLogger("benchmarks.peers.lancedb")
# Rows per add() call: each call embeds its rows and writes one fragment.
ADD_BATCH = 1000


def schema(model_dir: str) -> type[LanceModel]:
    func = get_registry().get("sentence-transformers").create(name=model_dir, device="cpu")

    class Doc(LanceModel):
        id: str
        text: str = func.SourceField()
        vector: Vector(func.ndims()) = func.VectorField()  # type: ignore[valid-type]

    return Doc


def build(corpus: Path, model_dir: str, out: Path) -> None:
    db = lancedb.connect(str(out / "lance"))
    table = db.create_table(COLLECTION, schema=schema(model_dir))
    for batch in batches(read_corpus(corpus), ADD_BATCH):
        table.add([{"id": doc_id, "text": text} for doc_id, text in batch])
    log.info("lancedb: %d documents indexed", table.count_rows())


def main() -> None:
    setup_logging()
    args = parser(__doc__).parse_args()
    if args.command == "index":
        build(args.corpus, args.model, args.out)
        return
    table = lancedb.connect(str(args.out / "lance")).open_table(COLLECTION)

    def search(text: str, k: int) -> list[str]:
        # The table's embedding function embeds the query text.
        return [row["id"] for row in table.search(text).limit(k).select(["id", "_distance"]).to_list()]

    run_queries(search, read_queries(args.queries), args.result)


if __name__ == "__main__":
    main()
