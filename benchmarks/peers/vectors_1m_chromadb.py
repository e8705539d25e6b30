"""Chroma for ``vectors_1m.py``: an in-process ``PersistentClient``, HNSW, inner product.

A collection with ``hnsw`` configuration ``space="ip"``, ``max_neighbors=16`` and
``ef_construction=200`` (the graph hnswlib builds here too; Chroma's own default
ef_construction is 100) and no embedding function; vectors are added in batches of
the client's maximum batch size, with string ids (Chroma's only kind) holding row numbers.

``ef_search`` is swept upward from k. Chroma stores it in the collection's configuration
(``collection.modify``), but an index already loaded in the process keeps the value it was
loaded with, so each setting is applied by modifying, stopping the client's system (which
frees the loaded index), dropping it from Chroma's cache and opening the collection again
(then one untimed query loads the index).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

import chromadb  # noqa: E402
import numpy as np  # noqa: E402
from chromadb.api.client import SharedSystemClient  # noqa: E402
from chromadb.config import Settings  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from vectors_1m_common import K, batches, grow, load_vectors, main  # noqa: E402

NAME = "bench"
M, EF_CONSTRUCTION, EF_MAX = 16, 200, 4096


def _client(out: Path) -> Any:
    return chromadb.PersistentClient(path=str(out), settings=Settings(anonymized_telemetry=False))


class ChromaSearch:
    def __init__(self, out: Path, dim: int):
        self.out = out
        self.probe = np.full(dim, dim ** -0.5, np.float32)  # an untimed query after each reopen
        self.client = _client(out)
        self.collection = self.client.get_collection(NAME)
        self.settings = [grow(K, EF_MAX)]  # ef_search
        self.info = {"configuration": {k: v for k, v in self.collection.configuration["hnsw"].items()
                                       if k != "ef_search"}}
        self.ef: int | None = None

    def set(self, ef: int) -> None:
        if ef == self.ef:
            return
        self.collection.modify(configuration={"hnsw": {"ef_search": ef}})
        # stopping the system frees the loaded index (clearing the cache alone keeps it)
        self.client._system.stop()
        SharedSystemClient.clear_system_cache()
        self.client = self.collection = None
        self.client = _client(self.out)
        self.collection = self.client.get_collection(NAME)
        got = self.collection.configuration["hnsw"]["ef_search"]
        if got != ef:
            raise RuntimeError(f"Chroma kept ef_search={got} after setting {ef}")
        self.ef = ef
        self.one(self.probe)  # loads the index

    def one(self, query: np.ndarray) -> np.ndarray:
        ids = self.collection.query(query_embeddings=query[None, :], n_results=K, include=[])["ids"][0]
        out = np.full(K, -1, np.int64)
        out[: len(ids)] = [int(i) for i in ids]
        return out

    def batch(self, queries: np.ndarray) -> np.ndarray:
        found = self.collection.query(query_embeddings=queries, n_results=K, include=[])["ids"]
        out = np.full((len(queries), K), -1, np.int64)
        for row, ids in zip(out, found, strict=True):
            row[: len(ids)] = [int(i) for i in ids]
        return out


def build(data: Path, out: Path, opts: dict[str, Any]) -> dict[str, Any]:
    vectors = load_vectors(data)
    client = _client(out)
    collection = client.create_collection(
        NAME, embedding_function=None,
        configuration={"hnsw": {"space": "ip", "max_neighbors": M, "ef_construction": EF_CONSTRUCTION}})
    size = client.get_max_batch_size()
    for start, block in batches(vectors, size):
        collection.add(ids=[str(i) for i in range(start, start + len(block))], embeddings=block)
    return {"layout": f"HNSW M={M}, ef_construction={EF_CONSTRUCTION}, space=ip",
            "batch_size": size}


def open_index(out: Path, opts: dict[str, Any]) -> ChromaSearch:
    return ChromaSearch(out, opts["dim"])


if __name__ == "__main__":
    main(build, open_index)
