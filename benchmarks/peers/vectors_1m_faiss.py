"""Raw FAISS for ``vectors_1m.py``: embedsvc's layout and search parameters, nothing else.

The build is ``benchmarks/vectors_build.py``'s plain FAISS script (``phase_plain``: the
``.npy`` loaded whole, ``index_factory`` with the manifest's factory string, trained on a
seeded sample of the manifest's ``train_size``, one ``add``, ``write_index``); the search
reads the written index and sets the parameters with ``ParameterSpace``, as a user of
FAISS would. :func:`param_grid` is shared with the embedsvc side, so both sweep the same
settings.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import faiss
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))  # benchmarks/, for vectors_build

from vectors_1m_common import K, grow, main, recall_at_k, time_single  # noqa: E402

EF_SEARCH_MAX = 4096


def param_grid(start: str, index: faiss.Index) -> list[str]:
    """FAISS parameter strings from ``start`` upward: its first parameter (``nprobe`` or
    ``efSearch``) grows, the others stay; ``[""]`` for an exact layout.

    Args:
        start: e.g. ``"nprobe=4"`` (the manifest's ``search_params``), or ``""``.
        index: the index the parameters are for (for ``nprobe``'s ceiling, its nlist).
    """
    if not start:
        return [""]
    first, *rest = start.split(",")
    name, value = first.split("=")
    if name.endswith("nprobe"):
        top = faiss.extract_index_ivf(index).nlist
    else:
        top = min(EF_SEARCH_MAX, max(index.ntotal, int(value)))
    return [",".join([f"{name}={v}", *rest]) for v in grow(int(value), max(top, int(value)))]


class FaissSearch:
    """A plain FAISS index searched directly."""

    def __init__(self, index: faiss.Index, start: str):
        self.index = index
        self.start = self.current = start
        self.settings = [param_grid(start, index)]
        self.info = {"ntotal": index.ntotal}

    def set(self, setting: str) -> None:
        self.current = setting
        if setting:
            faiss.ParameterSpace().set_index_parameters(self.index, setting)

    def one(self, query: np.ndarray) -> np.ndarray:
        return self.index.search(query[None, :], K)[1][0]

    def batch(self, queries: np.ndarray) -> np.ndarray:
        return self.index.search(queries, K)[1]

    def extra(self, queries: np.ndarray, truth: np.ndarray, rounds: int) -> dict[str, Any]:
        """Single queries at exactly the setting the sweep started from (embedsvc's), best
        of ``rounds``, where the sweep ended elsewhere (otherwise its figure is that one)."""
        if self.current == self.start:
            return {"same_setting": self.start}
        self.set(self.start)
        best = float("inf")
        for _ in range(rounds):
            seconds, found = time_single(self, queries)
            best = min(best, seconds)
        return {"same_setting": self.start, "same_setting_qps": len(queries) / best,
                "same_setting_recall": recall_at_k(found, truth)}


def build(data: Path, out: Path, opts: dict[str, Any]) -> dict[str, Any]:
    """vectors_build's plain script, run in ``out`` (which gets a link to the vectors)."""
    from vectors_build import phase_plain

    link = out / "vectors.npy"
    link.symlink_to(data / "vectors.npy")
    try:
        info = phase_plain(out, opts["layout"], opts["train_size"], opts["seed"])
    finally:
        link.unlink()
    return {**info, "layout": opts["layout"], "faiss": faiss.__version__,
            "threads": faiss.omp_get_max_threads()}


def open_index(out: Path, opts: dict[str, Any]) -> FaissSearch:
    return FaissSearch(faiss.read_index(str(out / "plain.faiss")), opts.get("start") or "")


if __name__ == "__main__":
    main(build, open_index)
