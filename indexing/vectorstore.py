"""The full-precision vectors kept beside every index version (its ``vectors/`` folder).

An index may be lossy (SQ8, PQ) and is laid out for one size and budget; these files are
what a compaction reads to train a new layout or to measure recall, so no document is ever
embedded twice. The store is a list of segments, each an ids file and a vectors file (the
chunk files of a build, or one segment per compaction), plus, per version, the rows of
each segment that are dead in that version (deleted or replaced documents).

Versions share segment files through hard links: a compaction links its parent's
segments, marks the rows its tombstones kill as dead and adds the fresh vectors as one new
segment, so it writes only what changed. Segment files are never modified once written,
and a link keeps a file alive when the version that wrote it is pruned. One exception: a
``.npy`` of unit vectors that ``index build --vectors`` read in place stays where the user
keeps it; the version refers to it with its checksum and uses it only while it matches.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from embedsvc.files import atomic_write, sha256_file

FOLDER = "vectors"


@dataclass(frozen=True)
class Segment:
    """One segment as a version sees it: its files and the rows dead in that version."""

    folder: Path  # the version folder
    number: int
    ids_file: str
    vectors_file: str
    dead_file: str | None = None
    # vectors a build read in place from the user's .npy: referred to, not copied (copying
    # 1.5GB beside training cost a --vectors build 15%); checked before any use
    source: dict[str, Any] | None = None

    @property
    def ids_path(self) -> Path:
        return self.folder / self.ids_file

    @property
    def vectors_path(self) -> Path:
        return Path(self.source["path"]) if self.source else self.folder / self.vectors_file

    def changed(self) -> str | None:
        """Why the vectors of an external segment can no longer be used, if they cannot."""
        if not self.source:
            return None
        path = self.vectors_path
        if not path.is_file() or path.stat().st_size != self.source["size"] \
                or sha256_file(path) != self.source["sha256"]:
            return (f"{path}, which holds the vectors this version was built from, is gone or "
                    "changed since")
        return None

    def dead_rows(self) -> np.ndarray:
        if self.dead_file is None:
            return np.empty(0, np.int64)
        return np.load(self.folder / self.dead_file, allow_pickle=False)

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of the live rows: memory-mapped, or a copy when some are dead."""
        ids = np.load(self.ids_path, mmap_mode="r", allow_pickle=False)
        vectors = np.load(self.vectors_path, mmap_mode="r", allow_pickle=False)
        dead = self.dead_rows()
        if not len(dead):
            return ids, vectors
        alive = np.ones(len(ids), dtype=bool)
        alive[dead] = False
        return ids[alive], vectors[alive]

    def describe(self) -> dict[str, Any]:
        return {"ids": self.ids_file, "vectors": self.vectors_file, "dead": self.dead_file,
                **({"source": self.source} if self.source else {})}


def segments(folder: Path, manifest: dict[str, Any]) -> list[Segment] | None:
    """The store of a version, or None for a version written before stores existed."""
    entries = manifest.get("store")
    if entries is None:
        return None
    return [Segment(folder, n, e["ids"], e["vectors"], e.get("dead"), e.get("source"))
            for n, e in enumerate(entries)]


def unusable(store: list[Segment]) -> str | None:
    """Why the store cannot be read (an input it refers to changed), or None."""
    return next((reason for reason in map(Segment.changed, store) if reason), None)


def link(source: Path, target: Path) -> None:
    """``target`` becomes another name of ``source`` (a copy where links are impossible)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def write_segment(folder: Path, name: str, ids: np.ndarray, vectors: np.ndarray) -> Segment:
    """A new segment in ``folder`` (a version being written)."""
    segment = Segment(folder, 0, f"{FOLDER}/{name}.ids.npy", f"{FOLDER}/{name}.vectors.npy")
    for path, array in ((segment.ids_path, np.ascontiguousarray(ids, dtype=np.int64)),
                        (segment.vectors_path, np.ascontiguousarray(vectors, dtype=np.float32))):
        with atomic_write(path) as fh:
            np.save(fh, array, allow_pickle=False)
    return segment


def adopt(folder: Path, name: str, vectors_path: Path, ids_path: Path | None = None,
          ids: np.ndarray | None = None, source: dict[str, Any] | None = None) -> Segment:
    """Files a build already wrote, linked into the version as segment ``name``.

    Args:
        folder: the version being written.
        name: the segment's name.
        vectors_path: the (n, dim) float32 ``.npy`` to keep.
        ids_path: its ids ``.npy``, linked too; or None with ``ids``.
        ids: (n,) ids written as a new file; rows whose id is -1 (not indexed) are dead.
        source: instead of linking ``vectors_path``, refer to it: a file the user owns,
            recorded with its ``sha256`` and ``size`` (see :attr:`Segment.source`).
    """
    segment = Segment(folder, 0, f"{FOLDER}/{name}.ids.npy", f"{FOLDER}/{name}.vectors.npy",
                      source={"path": str(vectors_path.resolve()), **source} if source else None)
    if source is None:
        link(vectors_path, segment.vectors_path)
    if ids is None:
        assert ids_path is not None
        link(ids_path, segment.ids_path)
        return segment
    with atomic_write(segment.ids_path) as fh:
        np.save(fh, np.ascontiguousarray(ids, dtype=np.int64), allow_pickle=False)
    dead = np.flatnonzero(ids < 0)
    return mark_dead(segment, dead) if len(dead) else segment


def mark_dead(segment: Segment, rows: np.ndarray) -> Segment:
    """The segment with ``rows`` dead too, its dead list written beside the version's files."""
    dead = np.union1d(segment.dead_rows(), rows).astype(np.int64)
    name = Path(segment.ids_file).name.replace(".ids.npy", ".dead.npy")
    dead_file = f"{FOLDER}/{name}"
    with atomic_write(segment.folder / dead_file) as fh:
        np.save(fh, dead, allow_pickle=False)
    return Segment(segment.folder, segment.number, segment.ids_file, segment.vectors_file, dead_file,
                   segment.source)


def carry_over(parent: Sequence[Segment], folder: Path, killed: np.ndarray) -> list[Segment]:
    """The parent version's segments, linked into ``folder``, with the ``killed`` ids dead.

    ``killed`` are ids live in the parent (its tombstones): each is live in exactly one
    parent segment, so marking every row with that id dead is exact.
    """
    out = []
    for segment in parent:
        ids_file, vectors_file = segment.ids_file, segment.vectors_file
        link(segment.ids_path, folder / ids_file)
        if not segment.source:
            link(segment.vectors_path, folder / vectors_file)
        linked = Segment(folder, segment.number, ids_file, vectors_file, source=segment.source)
        ids = np.load(segment.ids_path, mmap_mode="r", allow_pickle=False)
        dead = np.union1d(segment.dead_rows(), np.flatnonzero(np.isin(ids, killed)))
        out.append(mark_dead(linked, dead) if len(dead) else linked)
    return out
