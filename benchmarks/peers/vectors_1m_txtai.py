"""txtai for ``vectors_1m.py``: ``Embeddings`` over precomputed vectors, Faiss backend.

txtai indexes vectors made elsewhere through its ``external`` vectors method: with no
transform function, the rows it is given are the embeddings. ``Embeddings(method=
"external", backend="faiss", content=False)`` is fed ``(id, vector, None)`` rows streamed
from the memory-mapped ``.npy``, so the build is txtai's own (it spools the batches to a
temporary file, then builds its default Faiss layout: ``IVF{4·√n},Flat``, inner product)
and ``save`` writes it. Searches go through ``Embeddings.search`` / ``batchsearch`` with a
query vector, as an application would call it. txtai's default ``nprobe`` is
``cells / 16``; the sweep sets ``faiss.nprobe`` in the configuration (read at each search)
upward from 1 instead.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
from txtai import Embeddings

sys.path.insert(0, str(Path(__file__).resolve().parent))

from vectors_1m_common import K, as_rows, batches, grow, load_vectors, main  # noqa: E402

BATCH = 50_000


class TxtaiSearch:
    def __init__(self, embeddings: Embeddings):
        self.embeddings = embeddings
        components = embeddings.config["build"]["settings"]["components"]
        nlist = getattr(embeddings.ann.backend, "nlist", 1)
        self.settings = [grow(1, nlist)]  # nprobe
        self.info = {"components": components, "default_nprobe": embeddings.ann.nprobe()}

    def set(self, nprobe: int) -> None:
        self.embeddings.config.setdefault("faiss", {})["nprobe"] = nprobe

    def one(self, query: np.ndarray) -> np.ndarray:
        return as_rows(i for i, _ in self.embeddings.search(query, K))

    def batch(self, queries: np.ndarray) -> np.ndarray:
        return np.stack([as_rows(i for i, _ in hits)
                         for hits in self.embeddings.batchsearch(list(queries), K)])


def build(data: Path, out: Path, opts: dict[str, Any]) -> dict[str, Any]:
    vectors = load_vectors(data)

    def rows():
        for start, block in batches(vectors, BATCH):
            for i, vector in enumerate(block):
                yield start + i, vector, None

    embeddings = Embeddings(method="external", backend="faiss", content=False)
    embeddings.index(rows())
    embeddings.save(str(out / "txtai"))
    return {"layout": f"{embeddings.config['build']['settings']['components']} (txtai default), ip"}


def open_index(out: Path, opts: dict[str, Any]) -> TxtaiSearch:
    embeddings = Embeddings()
    embeddings.load(str(out / "txtai"))
    return TxtaiSearch(embeddings)


if __name__ == "__main__":
    main(build, open_index)
