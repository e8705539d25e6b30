"""Embeddings made elsewhere (``--vectors``): checked in one pass, then indexed in place.

Two forms: a ``.npy`` matrix with an ids file beside it (``.txt``, one id a line, or
``.npy``), or a Parquet file with an ``id`` column and a vector column (a list of floats per
row). A ``.npy`` of unit float32 rows (what sentence-transformers and most embedding APIs
write) is never copied: :func:`check_npy` reads it once, block by block through a memory
map, and the index build then reads the rows straight from the file through
:class:`VectorRows`. Copying a million 384-d vectors into chunk files took 5.3s of an 81.5s
build, for nothing: the file's sha256 already keys the build. Any other input (rows not of
unit length, another dtype, Parquet) is written once, normalised, into a float32 ``.npy`` in
the build's folder and indexed from there.

Every problem is reported with the file and the row: a wrong dimension, NaN or infinite
values, zero vectors, id and vector counts that differ.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from indexing.sources import InputIssue

# Rows whose norm is this close to 1 are used as they are.
UNIT_TOLERANCE = 1e-4


class VectorSourceError(Exception):
    """The vectors cannot be indexed; the message names the file and what to change."""


@dataclass(frozen=True)
class VectorRows:
    """Rows ``[start, stop)`` of a ``.npy`` file of unit float32 rows: a chunk read in place.

    ``ids`` are the vector ids, known once the documents are stored; ``keep`` lists the
    offsets of the rows to index when some were dropped (duplicate ids), None for all.
    """

    number: int
    vectors_path: Path
    ids_path: Path  # where the ids came from: named in messages
    start: int
    stop: int
    keep: np.ndarray | None = None
    ids: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))

    def rows(self) -> np.ndarray:
        """Row numbers (from 0) in the input of the rows this chunk indexes."""
        offsets = np.arange(self.stop - self.start) if self.keep is None else self.keep
        return self.start + offsets

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        """(vector ids, vectors): a memory-mapped view, or a copy when rows were dropped."""
        rows = np.load(self.vectors_path, mmap_mode="r", allow_pickle=False)[self.start:self.stop]
        return self.ids, rows if self.keep is None else rows[self.keep]


@dataclass
class CheckedVectors:
    """A vectors input that passed every check: its ids and its rows, chunk by chunk."""

    ids: list[str]
    chunks: list[VectorRows]
    unit_float32: bool  # every row already a unit float32 vector: index the file as it is
    metadata: list[str] | None = None  # per row, JSON of its other columns (Parquet)


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
    """Validate a block of rows; True when they need work (normalising, or another dtype)."""
    check_shape(block, dim, source)
    if not len(block):
        return False
    squares = np.einsum("ij,ij->i", block, block, dtype=np.float64)
    if not np.isfinite(squares).all():  # NaN or inf, or float64 values too large to square
        bad = ~np.isfinite(block).all(axis=1)
        if bad.any():
            row = first_row + int(np.argmax(bad))
            raise VectorSourceError(f"{source}: row {row} holds NaN or infinite values; "
                                    "fix or drop it")
    if (squares == 0).any():  # zero, or float64 values too small to square
        zero = ~block.any(axis=1)
        if zero.any():
            row = first_row + int(np.argmax(zero))
            raise VectorSourceError(f"{source}: row {row} is a zero vector, which has no direction")
    unit = np.isfinite(squares) & (np.abs(np.sqrt(squares) - 1) <= UNIT_TOLERANCE)
    return block.dtype != np.float32 or not unit.all()


def unit_rows(block: np.ndarray) -> np.ndarray:
    """Rows of any length and numeric dtype as float32 unit vectors.

    Each row is first divided by its largest magnitude, in float64, so that neither 1e-30
    nor 1e30 (float32) nor 1e200 (float64) under- or overflows on the way.
    """
    x = np.asarray(block, dtype=np.float64)
    x = x / np.abs(x).max(axis=1, keepdims=True)
    return (x / np.sqrt(np.einsum("ij,ij->i", x, x))[:, None]).astype(np.float32)


def _read_ids(path: Path) -> list[str]:
    if path.suffix == ".npy":
        return [str(x) for x in np.load(path, allow_pickle=False).tolist()]
    return path.read_text(encoding="utf-8").splitlines()


def _open_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise VectorSourceError(f"{path}: not a readable .npy file ({exc})") from exc


def read_npy_ids(vectors: Path, ids_path: Path | None, dim: int) -> tuple[list[str], Path]:
    """The ids of a ``.npy`` input and their file, after the checks that read no row."""
    ids_path = ids_path or default_ids_path(vectors)
    if not ids_path.exists():
        raise VectorSourceError(f"{vectors}: no ids file; pass --ids PATH (one id a line)")
    matrix = _open_npy(vectors)
    check_shape(matrix, dim, vectors)
    ids = _read_ids(ids_path)
    if len(ids) != len(matrix):
        raise VectorSourceError(f"{ids_path} holds {len(ids)} ids for {len(matrix)} vectors in "
                                f"{vectors}: they must pair up one to one")
    return ids, ids_path


def check_npy(vectors: Path, ids_path: Path, ids: list[str], dim: int,
              chunk_rows: int) -> CheckedVectors:
    """Check every row of a ``.npy`` input, block by block; the file is read, never copied."""
    chunks, needs_work = [], False
    for number, start in enumerate(range(0, len(ids), chunk_rows)):
        stop = min(start + chunk_rows, len(ids))
        # A fresh map per block: pages of blocks already read leave the process's RSS.
        block = _open_npy(vectors)[start:stop]
        needs_work |= check_rows(block, dim, vectors, start)
        chunks.append(VectorRows(number, vectors, ids_path, start, stop))
        del block
    return CheckedVectors(ids, chunks, unit_float32=not needs_work)


def as_unit_float32(checked: CheckedVectors, out: Path) -> CheckedVectors:
    """The input itself when its rows are unit float32 already; else a normalised copy in ``out``.

    Normalising once here, rather than on every read, keeps the build's six passes over
    the rows (validation, sample, add, exact neighbours...) as cheap as for unit input.
    """
    if checked.unit_float32:
        return checked
    source = checked.chunks[0].vectors_path
    dim = _open_npy(source).shape[1]
    out.parent.mkdir(parents=True, exist_ok=True)
    matrix = np.lib.format.open_memmap(out, mode="w+", dtype=np.float32,
                                       shape=(len(checked.ids), dim))
    for chunk in checked.chunks:
        matrix[chunk.start:chunk.stop] = unit_rows(_open_npy(source)[chunk.start:chunk.stop])
    matrix.flush()
    del matrix
    return CheckedVectors(checked.ids, [replace(c, vectors_path=out) for c in checked.chunks],
                          unit_float32=True, metadata=checked.metadata)


def convert_parquet(path: Path, dim: int, chunk_rows: int, out: Path,
                    column: str = "vector") -> CheckedVectors:
    """Check a Parquet input and write its rows, normalised, into the ``.npy`` file ``out``.

    Columns other than ``id`` and ``column`` become each document's metadata (what search
    filters see), so vectors made elsewhere arrive with what describes them.
    """
    import pyarrow.parquet as pq

    file = pq.ParquetFile(path)
    names = file.schema_arrow.names
    if "id" not in names or column not in names:
        raise VectorSourceError(f"{path}: needs columns 'id' and '{column}', has {names}")
    extra = [n for n in names if n not in ("id", column)]
    out.parent.mkdir(parents=True, exist_ok=True)
    matrix = np.lib.format.open_memmap(out, mode="w+", dtype=np.float32,
                                       shape=(file.metadata.num_rows, dim))
    all_ids: list[str] = []
    metadata: list[str] = []
    for batch in file.iter_batches(batch_size=chunk_rows):
        row = len(all_ids)
        ids = [str(x) for x in batch.column("id").to_pylist()]
        values = batch.column(column).to_pylist()
        if any(v is None for v in values) or any(i == "None" for i in ids):
            raise VectorSourceError(f"{path}: a row near {row} has no id or no vector")
        lengths = {len(v) for v in values}
        if len(lengths) != 1:
            raise VectorSourceError(f"{path}: rows from {row} have vectors of sizes {sorted(lengths)}")
        block = np.asarray(values, dtype=np.float64)
        check_rows(block, dim, path, row)
        matrix[row:row + len(ids)] = unit_rows(block)
        all_ids.extend(ids)
        if extra:
            metadata.extend(_metadata_json(path, row, batch.select(extra).to_pylist()))
    matrix.flush()
    del matrix
    chunks = [VectorRows(number, out, path, start, min(start + chunk_rows, len(all_ids)))
              for number, start in enumerate(range(0, len(all_ids), chunk_rows))]
    return CheckedVectors(all_ids, chunks, unit_float32=True, metadata=metadata or None)


def _metadata_json(path: Path, first_row: int, rows: list[dict]) -> list[str]:
    out = []
    for offset, row in enumerate(rows):
        try:
            out.append(json.dumps({k: v for k, v in row.items() if v is not None},
                                  allow_nan=False, default=str))
        except ValueError as exc:
            raise VectorSourceError(f"{path}: row {first_row + offset} has a metadata value "
                                    f"JSON cannot hold ({exc}); fix or drop it") from exc
    return out


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
