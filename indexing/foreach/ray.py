"""A Ray cluster (or a local Ray) running the same chunk function as the other executors.

Each worker is a Ray actor that keeps the model loaded between chunks; chunks are sent to
the actors in turn and their results collected in order. ``address`` joins an existing
cluster (``ray://host:10001`` or ``auto``); without it a local Ray is started for the job.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from indexing.foreach.ordered import ordered_map

T = TypeVar("T")
R = TypeVar("R")


class RayUnavailable(RuntimeError):
    pass


class RayExecutor:
    name = "ray"

    def __init__(self, workers: int = 2, address: str | None = None):
        try:
            import ray
        except ImportError as exc:
            raise RayUnavailable("the ray executor needs Ray: pip install 'embedsvc[ray]'") from exc
        self._ray = ray
        self.workers = workers
        self._started_here = not ray.is_initialized()
        if self._started_here:
            if address:
                ray.init(address=address, log_to_driver=False)
            else:
                ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)

        @ray.remote(num_cpus=1)
        class _Worker:
            def run(self, fn: Callable[[Any], Any], item: Any) -> Any:
                return fn(item)

        self._actors = [_Worker.remote() for _ in range(workers)]

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        fn_ref = self._ray.put(fn)
        actors = itertools.cycle(self._actors)
        return ordered_map(lambda item: next(actors).run.remote(fn_ref, item), self._ray.get,
                           items, in_flight=2 * self.workers)

    def close(self) -> None:
        for actor in self._actors:
            self._ray.kill(actor)
        if self._started_here:
            self._ray.shutdown()
