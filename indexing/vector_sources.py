"""Embeddings made elsewhere (``--vectors``), read as a stream of chunks like text inputs.

Two forms: a ``.npy`` matrix (memory-mapped, never read whole) with an ids file beside it
(``.txt``, one id a line, or ``.npy``), or a Parquet file with an ``id`` column and a vector
column (a list of floats per row). Every problem is reported with the file and the row:
a wrong dimension, NaN or infinite values, zero vectors, id and vector counts that differ.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class VectorSourceError(Exception):
    """The vectors cannot be indexed; the message names the file and what to change."""


@dataclass
class VectorChunk:
    number: int
    ids: list[str]
    vectors: np.ndarray  # (n, dim) float32, unit-normalised


def _read_ids(path: Path) -> list[str]:
    if path.suffix == ".npy":
        return [str(x) for x in np.load(path, allow_pickle=False).tolist()]
    return [line.rstrip("\n") for line in path.read_text(encoding="utf-8").splitlines()]


def default_ids_path(vectors: Path) -> Path:
    for suffix in (".ids.txt", ".ids.npy"):
        candidate = vectors.with_name(vectors.name.removesuffix(".npy") + suffix)
        if candidate.exists():
            return candidate
    return vectors.with_name(vectors.name.removesuffix(".npy") + ".ids.txt")


def check_vectors(block: np.ndarray, dim: int, source: Path, first_row: int) -> np.ndarray:
    """Validate a block of rows and return it as unit-normalised float32."""
    if block.ndim != 2 or block.shape[1] != dim:
        got = block.shape[1] if block.ndim == 2 else block.shape
        raise VectorSourceError(f"{source}: vectors have dimension {got}, the model makes {dim}-d "
                                "vectors; embed with the same model or pass --model")
    block = np.asarray(block, dtype=np.float32)
    bad = ~np.isfinite(block).all(axis=1)
    if bad.any():
        row = first_row + int(np.argmax(bad))
        raise VectorSourceError(f"{source}: row {row} holds NaN or infinite values; fix or drop it")
    norms = np.linalg.norm(block, axis=1, keepdims=True)
    if (norms == 0).any():
        row = first_row + int(np.argmax(norms[:, 0] == 0))
        raise VectorSourceError(f"{source}: row {row} is a zero vector, which has no direction")
    return block / norms


def read_npy(vectors: Path, ids_path: Path | None, dim: int, chunk_rows: int) -> Iterator[VectorChunk]:
    ids_path = ids_path or default_ids_path(vectors)
    if not ids_path.exists():
        raise VectorSourceError(f"{vectors}: no ids file; pass --ids PATH (one id a line)")
    rows = vector_count(vectors)
    ids = _read_ids(ids_path)
    if len(ids) != rows:
        raise VectorSourceError(f"{ids_path} holds {len(ids)} ids for {rows} vectors in "
                                f"{vectors}: they must pair up one to one")
    for number, start in enumerate(range(0, rows, chunk_rows)):
        # A fresh map per block: pages of blocks already read leave the process's RSS.
        matrix = np.load(vectors, mmap_mode="r", allow_pickle=False)
        block = check_vectors(matrix[start : start + chunk_rows], dim, vectors, start)
        del matrix
        yield VectorChunk(number, ids[start : start + chunk_rows], block)


def read_parquet_vectors(path: Path, dim: int, chunk_rows: int,
                         column: str = "vector") -> Iterator[VectorChunk]:
    import pyarrow.parquet as pq

    file = pq.ParquetFile(path)
    names = file.schema_arrow.names
    if "id" not in names or column not in names:
        raise VectorSourceError(f"{path}: needs columns 'id' and '{column}', has {names}")
    row = 0
    for number, batch in enumerate(file.iter_batches(batch_size=chunk_rows, columns=["id", column])):
        ids = [str(x) for x in batch.column("id").to_pylist()]
        values = batch.column(column).to_pylist()
        if any(v is None for v in values) or any(i == "None" for i in ids):
            raise VectorSourceError(f"{path}: a row near {row} has no id or no vector")
        lengths = {len(v) for v in values}
        if len(lengths) != 1:
            raise VectorSourceError(f"{path}: rows from {row} have vectors of sizes {sorted(lengths)}")
        block = check_vectors(np.asarray(values, dtype=np.float32), dim, path, row)
        yield VectorChunk(number, ids, block)
        row += len(ids)


def read_vectors(path: Path, ids_path: Path | None, dim: int, chunk_rows: int) -> Iterator[VectorChunk]:
    if not path.is_file():
        raise VectorSourceError(f"{path} does not exist")
    if path.suffix == ".npy":
        return read_npy(path, ids_path, dim, chunk_rows)
    if path.suffix == ".parquet":
        return read_parquet_vectors(path, dim, chunk_rows)
    raise VectorSourceError(f"{path}: use a .npy matrix with an ids file, or Parquet (id, vector)")


def vector_count(path: Path) -> int:
    if path.suffix == ".npy":
        try:
            return int(np.load(path, mmap_mode="r", allow_pickle=False).shape[0])
        except (ValueError, OSError) as exc:
            raise VectorSourceError(f"{path}: not a readable .npy file ({exc})") from exc
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows
