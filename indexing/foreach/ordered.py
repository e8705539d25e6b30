"""Ordered, bounded mapping: the shared core of the parallel executors.

Results come back in input order whatever finishes first, so chunk files and ids never
depend on scheduling; and at most ``in_flight`` items are submitted ahead of the one being
waited for, so memory is bounded by chunk size × in-flight, never by the corpus.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def ordered_map(submit: Callable[[T], Any], wait: Callable[[Any], R], items: Iterable[T],
                in_flight: int) -> Iterator[R]:
    """Submit ``items`` with at most ``in_flight`` pending; yield ``wait(handle)`` in order."""
    pending: deque[Any] = deque()
    for item in items:
        pending.append(submit(item))
        if len(pending) >= in_flight:
            yield wait(pending.popleft())
    while pending:
        yield wait(pending.popleft())
