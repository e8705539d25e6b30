"""Which client holds which training pairs, for federated fine-tuning.

Real silos come as one folder (or JSONL file) per client (``--partition folders``). To study
federated training on one dataset, the pairs are split into simulated silos instead:

- ``iid``: a seeded shuffle cut into equal parts: every client sees the same distribution;
- ``by-query``: all pairs of a query stay on one client (a hospital keeps its own cases);
- ``dirichlet:ALPHA``: topic skew, the usual non-IID benchmark split. The queries are grouped
  into topics (k-means of their embeddings by the base model), and each topic's pairs are
  dealt to the clients in proportions drawn from Dirichlet(ALPHA): at ALPHA 0.1 a client
  holds a few topics, at 100 it is close to iid.

Every client must hold at least one batch; a split that leaves one short is drawn again
(seeded), and refused with what to change when that does not help.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.pairs import Pair, PairsError, load_pairs, write_pairs_jsonl

DEFAULT_CLIENTS = 5
TOPICS = 10  # k-means clusters the dirichlet split skews over
REDRAWS = 100  # dirichlet draws tried before a too-small client is an error
SCHEMES = ("iid", "by-query", "dirichlet:ALPHA", "folders")


class PartitionError(PairsError):
    """The pairs cannot be split as asked; the message says what to change."""


@dataclass(frozen=True)
class Partition:
    """A parsed ``--partition``: the scheme, and ALPHA for ``dirichlet``."""

    scheme: str
    alpha: float | None = None


def parse_partition(spec: str) -> Partition:
    """``iid``, ``by-query``, ``folders`` or ``dirichlet:ALPHA`` (ALPHA > 0)."""
    scheme, _, rest = spec.partition(":")
    if scheme == "dirichlet":
        try:
            alpha = float(rest)
        except ValueError:
            alpha = math.nan
        if not alpha > 0 or math.isinf(alpha):
            raise ValueError(f"dirichlet needs a positive ALPHA, as in dirichlet:0.5 (got {spec!r})")
        return Partition("dirichlet", alpha)
    if rest or scheme not in ("iid", "by-query", "folders"):
        raise ValueError(f"unknown partition {spec!r}: use one of {', '.join(SCHEMES)}")
    return Partition(scheme)


def load_client_folders(data: Path, split: str) -> list[list[Pair]]:
    """One client per BEIR folder or JSONL file directly under ``data``, in name order."""
    if not data.is_dir():
        raise PartitionError(f"--partition folders needs DATA to be a folder of client folders; "
                             f"{data} is not a folder")
    members = sorted(p for p in data.iterdir()
                     if (p.is_dir() or p.suffix == ".jsonl") and not p.name.startswith("."))
    if len(members) < 2:
        raise PartitionError(f"{data} holds {len(members)} client folders or .jsonl files; "
                             "federated training needs at least 2")
    return [load_pairs(member, split) for member in members]


def split_pairs(pairs: Sequence[Pair], partition: Partition, clients: int, seed: int,
                min_size: int, labels: Sequence[int] | None = None) -> list[list[int]]:
    """Row numbers of each client's pairs.

    Args:
        pairs: all training pairs.
        partition: iid, by-query or dirichlet (``folders`` needs no split).
        clients: how many clients.
        seed: seeds the shuffle and the Dirichlet draws.
        min_size: the fewest pairs a client may hold (one batch).
        labels: each pair's topic, for dirichlet (see :func:`topic_labels`).

    Raises:
        PartitionError: a client would hold fewer than ``min_size`` pairs.
    """
    import numpy as np

    if clients < 2:
        raise PartitionError("federated training needs at least 2 clients (--clients)")
    if clients * min_size > len(pairs):
        raise PartitionError(f"{len(pairs)} pairs cannot give {clients} clients a batch of {min_size} "
                             "each: lower --clients or --batch-size")
    rng = np.random.default_rng(seed)
    if partition.scheme == "iid":
        return [part.tolist() for part in np.array_split(rng.permutation(len(pairs)), clients)]
    if partition.scheme == "by-query":
        return _by_query(pairs, clients, rng, min_size)
    if partition.scheme == "dirichlet" and labels is not None and partition.alpha is not None:
        return _dirichlet(np.asarray(labels), clients, partition.alpha, rng, min_size)
    raise PartitionError(f"cannot split pairs by {partition.scheme!r} here")


def _by_query(pairs: Sequence[Pair], clients: int, rng: Any, min_size: int) -> list[list[int]]:
    """Shuffled queries, each dealt whole to the client holding the fewest pairs so far."""
    groups: dict[str, list[int]] = {}
    for row, pair in enumerate(pairs):
        groups.setdefault(pair.query_id or pair.query, []).append(row)
    parts: list[list[int]] = [[] for _ in range(clients)]
    for key in rng.permutation(sorted(groups)):
        min(parts, key=len).extend(groups[str(key)])
    _check_sizes(parts, min_size, "by-query")
    return parts


def _dirichlet(labels: Any, clients: int, alpha: float, rng: Any, min_size: int) -> list[list[int]]:
    """Each topic's rows cut in Dirichlet(alpha) proportions; redrawn while a client is short."""
    import numpy as np

    for _ in range(REDRAWS):
        parts: list[list[int]] = [[] for _ in range(clients)]
        for topic in np.unique(labels):
            rows = rng.permutation(np.flatnonzero(labels == topic))
            cuts = (np.cumsum(rng.dirichlet([alpha] * clients)) * len(rows)).astype(int)[:-1]
            for part, chunk in zip(parts, np.split(rows, cuts), strict=True):
                part.extend(chunk.tolist())
        if min(map(len, parts)) >= min_size:
            return [sorted(part) for part in parts]
    _check_sizes(parts, min_size, f"dirichlet:{alpha:g}")
    return parts


def _check_sizes(parts: list[list[int]], min_size: int, scheme: str) -> None:
    smallest = min(range(len(parts)), key=lambda i: len(parts[i]))
    if len(parts[smallest]) < min_size:
        raise PartitionError(
            f"--partition {scheme} left client {smallest} with {len(parts[smallest])} pairs, fewer "
            f"than one batch ({min_size}): lower --clients or --batch-size, or raise ALPHA")


def topic_labels(model: Any, pairs: Sequence[Pair], seed: int, topics: int = TOPICS) -> list[int]:
    """Each pair's topic: the k-means cluster of its query's embedding by ``model``."""
    import faiss
    import numpy as np

    queries = sorted({p.query for p in pairs})
    vectors = np.asarray(model.encode(queries, normalize_embeddings=True), dtype="float32")
    kmeans = faiss.Kmeans(vectors.shape[1], min(topics, len(queries)), niter=20, seed=seed,
                          spherical=True)
    kmeans.train(vectors)
    _, assigned = kmeans.index.search(vectors, 1)
    topic = dict(zip(queries, assigned[:, 0].tolist(), strict=True))
    return [topic[p.query] for p in pairs]


def client_file(folder: Path, client: int) -> Path:
    """Where client ``client``'s pairs live in a run folder's clients folder."""
    return folder / f"client-{client:03d}.jsonl"


def write_clients(parts: Sequence[Sequence[Pair]], folder: Path) -> list[Path]:
    """Write each client's pairs to its own file (the simulated silo it reads from)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for client, part in enumerate(parts):
        path = client_file(folder, client)
        write_pairs_jsonl(part, path)
        paths.append(path)
    return paths
