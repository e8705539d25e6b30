"""Vectors made elsewhere, sent with documents or as a query: checked once, made unit length.

Every collection searches by cosine (unit vectors, inner product), so a vector is accepted
when it has the collection's dimension, only finite numbers and some length, and is stored
or searched normalised. The messages name the document (or the query) and both dimensions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from embedsvc.collection import CollectionError

MAX_DIMENSION = 8192  # no embedding model makes more; bounds what one request can ask for
METRICS = ("cosine",)


class VectorMismatch(CollectionError):
    """A vector does not fit the collection (HTTP 422); the message says how."""


def unit_vector(values: Sequence[float], dimension: int, what: str) -> np.ndarray:
    """``values`` as a unit float32 vector of ``dimension``, or :class:`VectorMismatch`."""
    vector = np.asarray(values, dtype=np.float64)
    if vector.ndim != 1 or len(vector) != dimension:
        raise VectorMismatch(f"{what}: the vector has {vector.size} dimensions, the collection "
                             f"holds {dimension}-dimensional vectors")
    if not np.all(np.isfinite(vector)):
        raise VectorMismatch(f"{what}: the vector holds NaN or Infinity; send finite numbers")
    norm = float(np.linalg.norm(vector))
    if norm == 0 or not np.isfinite(norm):
        raise VectorMismatch(f"{what}: a zero vector has no direction to compare by cosine")
    return (vector / norm).astype(np.float32)
