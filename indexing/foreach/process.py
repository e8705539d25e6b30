"""Worker processes on this machine, each holding its own copy of the model.

Workers are started with ``spawn`` (forking a process that already runs torch threads can
deadlock) and split the machine's cores between them, so two workers on two cores do not
fight over the same ones. The chunk function loads the model on first use and keeps it.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import TypeVar

from indexing.foreach.ordered import ordered_map

T = TypeVar("T")
R = TypeVar("R")


def _limit_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


class ProcessExecutor:
    name = "process"

    def __init__(self, workers: int = 2):
        if workers < 1:
            raise ValueError("--workers must be at least 1")
        self.workers = workers
        threads = max(1, (os.cpu_count() or 1) // workers)
        self._pool = ProcessPoolExecutor(
            max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
            initializer=_limit_threads, initargs=(threads,),
        )

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        def wait(future: Future) -> R:
            return future.result()

        return ordered_map(lambda item: self._pool.submit(fn, item), wait, items,
                           in_flight=2 * self.workers)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
