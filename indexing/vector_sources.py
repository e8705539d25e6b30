"""Embeddings made elsewhere (``--vectors``): checked in one pass, then indexed in place.

Two forms: a ``.npy`` matrix with an ids file beside it (``.txt``, one id a line, or
``.npy``), or a Parquet file with an ``id`` column and a vector column (a list of floats per
row). A ``.npy`` is never copied: :func:`check_npy` reads it once, block by block through a
memory map, and the index build then reads the rows straight from the file through
:class:`VectorRows`, dividing by the norms on the way only where rows are not unit length
already. Copying a million 384-d vectors into chunk files cost more than a quarter of the
whole build, for nothing: the file's sha256 already keys the build. A Parquet file is
converted once into such a ``.npy`` in the build's folder.

Every problem is reported with the file and the row: a wrong dimension, NaN or infinite
values, zero vectors, id and vector counts that differ.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from indexing.sources import InputIssue

# Rows whose norm is this close to 1 are used as they are; others are divided by it.
UNIT_TOLERANCE = 1e-4


class VectorSourceError(Exception):
    """The vectors cannot be indexed; the message names the file and what to change."""


@dataclass(frozen=True)
class VectorRows:
    """Rows ``[start, stop)`` of a checked ``.npy`` file: a chunk the build reads in place.

    ``ids`` are the vector ids, known once the documents are stored; ``keep`` lists the
    offsets of the rows to index when some were dropped (duplicate ids), None for all.
    """

    number: int
    vectors_path: Path
    ids_path: Path  # where the ids came from: named in messages
    start: int
    stop: int
    normalise: bool
    keep: np.ndarray | None = None
    ids: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))

    def rows(self) -> np.ndarray:
        """Row numbers (from 0) in the input of the rows this chunk indexes."""
        offsets = np.arange(self.stop - self.start) if self.keep is None else self.keep
        return self.start + offsets

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        """(vector ids, float32 unit vectors); a memory-mapped view unless rows need work."""
        rows = np.load(self.vectors_path, mmap_mode="r", allow_pickle=False)[self.start:self.stop]
        if self.keep is not None:
            rows = rows[self.keep]
        if self.normalise or rows.dtype != np.float32:
            rows = np.asarray(rows, dtype=np.float32)
            rows = rows / np.linalg.norm(rows, axis=1, keepdims=True)
        return self.ids, rows


@dataclass
class CheckedVectors:
    """A vectors input that passed every check: its ids and its rows, chunk by chunk."""

    ids: list[str]
    chunks: list[VectorRows]


def usable_rows(checked: CheckedVectors) -> tuple[list[VectorRows], list[InputIssue]]:
    """The chunks without rows whose id is empty or repeats an earlier one, and those issues."""
    ids = checked.ids
    if len(set(ids)) == len(ids) and "" not in ids:
        return checked.chunks, []
    first: dict[str, int] = {}
    issues = []
    for row, doc_id in enumerate(ids, start=1):
        if doc_id and doc_id not in first:
            first[doc_id] = row
        else:
            issues.append(InputIssue(row, f"duplicate id '{doc_id}' (first on line {first[doc_id]})"
                                     if doc_id else "empty id"))
    dropped = np.array([issue.line - 1 for issue in issues])
    chunks = []
    for chunk in checked.chunks:
        gone = dropped[(dropped >= chunk.start) & (dropped < chunk.stop)] - chunk.start
        keep = np.setdiff1d(np.arange(chunk.stop - chunk.start), gone) if len(gone) else None
        if keep is None or len(keep):
            chunks.append(replace(chunk, keep=keep))
    return chunks, issues


def default_ids_path(vectors: Path) -> Path:
    for suffix in (".ids.txt", ".ids.npy"):
        candidate = vectors.with_name(vectors.name.removesuffix(".npy") + suffix)
        if candidate.exists():
            return candidate
    return vectors.with_name(vectors.name.removesuffix(".npy") + ".ids.txt")


def check_shape(block: np.ndarray, dim: int, source: Path) -> None:
    if block.ndim != 2 or block.shape[1] != dim:
        got = block.shape[1] if block.ndim == 2 else block.shape
        raise VectorSourceError(f"{source}: vectors have dimension {got}, the model makes {dim}-d "
                                "vectors; embed with the same model or pass --model")
    if block.dtype.kind not in "fiu":
        raise VectorSourceError(f"{source}: vectors are {block.dtype}, not numbers")


def check_rows(block: np.ndarray, dim: int, source: Path, first_row: int) -> bool:
    """Validate a block of rows; True when they must be normalised (not unit length)."""
    check_shape(block, dim, source)
    if not len(block):
        return False
    squares = np.einsum("ij,ij->i", block, block, dtype=np.float64)
    if not np.isfinite(squares).all():
        row = first_row + int(np.argmin(np.isfinite(squares)))
        raise VectorSourceError(f"{source}: row {row} holds NaN or infinite values; fix or drop it")
    if (squares == 0).any():
        row = first_row + int(np.argmax(squares == 0))
        raise VectorSourceError(f"{source}: row {row} is a zero vector, which has no direction")
    return bool(np.abs(np.sqrt(squares) - 1).max() > UNIT_TOLERANCE)


def _read_ids(path: Path) -> list[str]:
    if path.suffix == ".npy":
        return [str(x) for x in np.load(path, allow_pickle=False).tolist()]
    return path.read_text(encoding="utf-8").splitlines()


def _open_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise VectorSourceError(f"{path}: not a readable .npy file ({exc})") from exc


def check_npy(vectors: Path, ids_path: Path | None, dim: int, chunk_rows: int) -> CheckedVectors:
    """Check a ``.npy`` input and its ids in one pass; the file is read, never copied."""
    ids_path = ids_path or default_ids_path(vectors)
    if not ids_path.exists():
        raise VectorSourceError(f"{vectors}: no ids file; pass --ids PATH (one id a line)")
    matrix = _open_npy(vectors)
    check_shape(matrix, dim, vectors)  # before reading anything
    rows = len(matrix)
    del matrix
    ids = _read_ids(ids_path)
    if len(ids) != rows:
        raise VectorSourceError(f"{ids_path} holds {len(ids)} ids for {rows} vectors in "
                                f"{vectors}: they must pair up one to one")
    chunks = []
    for number, start in enumerate(range(0, rows, chunk_rows)):
        stop = min(start + chunk_rows, rows)
        # A fresh map per block: pages of blocks already read leave the process's RSS.
        block = _open_npy(vectors)[start:stop]
        chunks.append(VectorRows(number, vectors, ids_path, start, stop,
                                 check_rows(block, dim, vectors, start)))
        del block
    return CheckedVectors(ids, chunks)


def convert_parquet(path: Path, dim: int, chunk_rows: int, out: Path,
                    column: str = "vector") -> CheckedVectors:
    """Check a Parquet input and write its rows, normalised, into the ``.npy`` file ``out``."""
    import pyarrow.parquet as pq

    file = pq.ParquetFile(path)
    names = file.schema_arrow.names
    if "id" not in names or column not in names:
        raise VectorSourceError(f"{path}: needs columns 'id' and '{column}', has {names}")
    out.parent.mkdir(parents=True, exist_ok=True)
    matrix = np.lib.format.open_memmap(out, mode="w+", dtype=np.float32,
                                       shape=(file.metadata.num_rows, dim))
    all_ids: list[str] = []
    for batch in file.iter_batches(batch_size=chunk_rows, columns=["id", column]):
        row = len(all_ids)
        ids = [str(x) for x in batch.column("id").to_pylist()]
        values = batch.column(column).to_pylist()
        if any(v is None for v in values) or any(i == "None" for i in ids):
            raise VectorSourceError(f"{path}: a row near {row} has no id or no vector")
        lengths = {len(v) for v in values}
        if len(lengths) != 1:
            raise VectorSourceError(f"{path}: rows from {row} have vectors of sizes {sorted(lengths)}")
        block = np.asarray(values, dtype=np.float32)
        check_rows(block, dim, path, row)
        matrix[row:row + len(ids)] = block / np.linalg.norm(block, axis=1, keepdims=True)
        all_ids.extend(ids)
    matrix.flush()
    del matrix
    chunks = [VectorRows(number, out, path, start, min(start + chunk_rows, len(all_ids)), False)
              for number, start in enumerate(range(0, len(all_ids), chunk_rows))]
    return CheckedVectors(all_ids, chunks)


def vector_count(path: Path) -> int:
    if path.suffix == ".npy":
        return int(_open_npy(path).shape[0])
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows


def check_vectors_input(path: Path) -> None:
    """Refuse a missing file or an unknown format before anything else is done."""
    if not path.is_file():
        raise VectorSourceError(f"{path} does not exist")
    if path.suffix not in (".npy", ".parquet"):
        raise VectorSourceError(f"{path}: use a .npy matrix with an ids file, or Parquet (id, vector)")
