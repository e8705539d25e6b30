"""txtai (its venv): ``Embeddings.index`` over (id, text) pairs, saved to a folder.

txtai's defaults otherwise (FAISS backend, an IVF layout sized by its ``cells()``
heuristic, ids kept in the index config, no content database), with the model read
through sentence-transformers (``method="sentence-transformers"``), as every peer here
does, so the text is cut at the model's 256 tokens. ``txtai_config`` writes the API's
configuration for serving the saved index.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from common import parser, read_corpus, read_queries, run_queries, setup_logging
from txtai import Embeddings

log = logging.getLogger("benchmarks.peers.txtai")


def config(model_dir: str) -> dict:
    return {"path": model_dir, "method": "sentence-transformers"}


def build(corpus: Path, model_dir: str, out: Path) -> None:
    embeddings = Embeddings(config(model_dir))
    embeddings.index((doc_id, text, None) for doc_id, text in read_corpus(corpus))
    embeddings.save(str(out / "index"))
    log.info("txtai: %d documents indexed (%s)", embeddings.count(),
             embeddings.config.get("faiss", {}) or embeddings.ann.config.get("backend"))


def api_config(out: Path, model_dir: str) -> Path:
    """The txtai API's configuration (JSON is YAML) serving the saved index read-only."""
    path = out / "api.yml"
    path.write_text(json.dumps({"path": str(out / "index"), "writable": False, "embeddings": config(model_dir)}))
    return path


def main() -> None:
    setup_logging()
    args = parser(__doc__).parse_args()
    if args.command == "index":
        build(args.corpus, args.model, args.out)
        api_config(args.out, args.model)
        return
    embeddings = Embeddings()
    embeddings.load(str(args.out / "index"))

    def search(text: str, k: int) -> list[str]:
        return [str(doc_id) for doc_id, _ in embeddings.search(text, k)]

    run_queries(search, read_queries(args.queries), args.result,
                {"layout": embeddings.config.get("ann") or embeddings.config.get("backend")})


if __name__ == "__main__":
    main()
