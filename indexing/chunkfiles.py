"""Chunk files: the embedded vectors of one chunk of a build, spooled to disk.

A build embeds chunk after chunk and writes each result here before the index is
built, so memory is bounded by one chunk and a crashed build resumes from the files it
already has. One chunk is two ``.npy`` files (ids int64, vectors float32), written
atomically; a chunk counts as done only when its checksum is recorded by the caller
and matches the file (see :func:`verify_chunk`), so a half-written file is never used.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from embedsvc.files import atomic_write


class VectorChunk(Protocol):
    """What an index build reads: a chunk file, or rows of a ``--vectors`` input in place."""

    @property
    def number(self) -> int: ...

    @property
    def ids_path(self) -> Path: ...

    @property
    def vectors_path(self) -> Path: ...

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids (n,) int64, vectors (n, dim) float32 unit rows)."""
        ...


@dataclass(frozen=True)
class ChunkFile:
    """One chunk on disk, named by its chunk number."""

    folder: Path
    number: int

    @property
    def ids_path(self) -> Path:
        return self.folder / f"chunk-{self.number:08d}.ids.npy"

    @property
    def vectors_path(self) -> Path:
        return self.folder / f"chunk-{self.number:08d}.vectors.npy"

    def exists(self) -> bool:
        return self.ids_path.is_file() and self.vectors_path.is_file()

    def load(self, mmap: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(ids (n,), vectors (n, dim)); memory-mapped unless ``mmap`` is False."""
        mode = "r" if mmap else None
        ids = np.load(self.ids_path, mmap_mode=mode, allow_pickle=False)
        vectors = np.load(self.vectors_path, mmap_mode=mode, allow_pickle=False)
        return ids, vectors

    def checksum(self) -> str:
        digest = hashlib.sha256()
        for path in (self.ids_path, self.vectors_path):
            digest.update(path.read_bytes())
        return digest.hexdigest()


def write_chunk(folder: Path, number: int, ids: np.ndarray, vectors: np.ndarray) -> str:
    """Write one chunk atomically and return its checksum for the caller to record."""
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(ids) != len(vectors):
        raise ValueError(f"chunk {number}: {len(ids)} ids for vectors of shape {vectors.shape}")
    chunk = ChunkFile(folder, number)
    for path, array in ((chunk.ids_path, ids), (chunk.vectors_path, vectors)):
        with atomic_write(path) as fh:
            np.save(fh, array, allow_pickle=False)
    return chunk.checksum()


def verify_chunk(chunk: ChunkFile, expected: str | None) -> bool:
    """True when the chunk's files exist and match the checksum recorded when written."""
    return expected is not None and chunk.exists() and chunk.checksum() == expected
