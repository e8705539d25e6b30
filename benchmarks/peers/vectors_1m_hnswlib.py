"""hnswlib for ``vectors_1m.py``: one HNSW graph over the raw vectors, inner product.

Built with M=16 and ef_construction=200 (hnswlib's recommended starting point, and the
graph Chroma builds here too), vectors added in batches from the memory-mapped ``.npy``
with hnswlib's default threads (every core), saved with ``save_index``; the search
process loads it with ``load_index`` and sweeps ``ef`` upward from k.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import hnswlib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from vectors_1m_common import K, batches, grow, load_vectors, main  # noqa: E402

M, EF_CONSTRUCTION, EF_MAX = 16, 200, 4096
BATCH = 50_000


class HnswlibSearch:
    def __init__(self, index: hnswlib.Index):
        self.index = index
        self.settings = [grow(K, EF_MAX)]  # ef
        self.info = {"M": M, "ef_construction": EF_CONSTRUCTION}

    def set(self, ef: int) -> None:
        self.index.set_ef(ef)

    def one(self, query: np.ndarray) -> np.ndarray:
        return self.index.knn_query(query[None, :], k=K)[0][0]

    def batch(self, queries: np.ndarray) -> np.ndarray:
        return self.index.knn_query(queries, k=K)[0]


def build(data: Path, out: Path, opts: dict[str, Any]) -> dict[str, Any]:
    vectors = load_vectors(data)
    index = hnswlib.Index(space="ip", dim=vectors.shape[1])
    index.init_index(max_elements=len(vectors), M=M, ef_construction=EF_CONSTRUCTION,
                     random_seed=opts.get("seed", 0))
    for start, block in batches(vectors, BATCH):
        index.add_items(block, np.arange(start, start + len(block)))
    index.save_index(str(out / "hnswlib.bin"))
    return {"layout": f"HNSW M={M}, ef_construction={EF_CONSTRUCTION}, space=ip"}


def open_index(out: Path, opts: dict[str, Any]) -> HnswlibSearch:
    index = hnswlib.Index(space="ip", dim=opts["dim"])
    index.load_index(str(out / "hnswlib.bin"))
    return HnswlibSearch(index)


if __name__ == "__main__":
    main(build, open_index)
