"""The naive server: FastAPI + sentence-transformers + FAISS, one uvicorn worker.

The simplest HTTP service over the plain baseline's index (``sys_plain.py``): one
synchronous route (FastAPI runs it in its thread pool), no batching, no caching.

    python naive_server.py --model DIR --out PLAIN_INDEX_DIR --port 8001

``POST /search {"query": "...", "k": 10}`` → ``{"ids": [...], "scores": [...]}``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import faiss
import numpy as np
import uvicorn
from common import TIMED_K, setup_logging
from fastapi import FastAPI
from pydantic import BaseModel
from sentence_transformers import SentenceTransformer


class Query(BaseModel):
    query: str
    k: int = TIMED_K


def create_app(model_dir: str, out: Path) -> FastAPI:
    model = SentenceTransformer(model_dir, device="cpu")
    index = faiss.read_index(str(out / "index.faiss"))
    ids = json.loads((out / "ids.json").read_text())
    app = FastAPI()

    @app.post("/search")
    def search(body: Query) -> dict:
        vector = model.encode([body.query], normalize_embeddings=True, convert_to_numpy=True)
        scores, rows = index.search(np.ascontiguousarray(vector, dtype=np.float32), body.k)
        return {"ids": [ids[r] for r in rows[0] if r >= 0], "scores": scores[0].tolist()}

    return app


def main() -> None:
    setup_logging()
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args()
    uvicorn.run(create_app(args.model, args.out), host=args.host, port=args.port, workers=1,
                log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
