"""Foreach executors: one chunk function, run in-process, in worker processes or on Ray.

Every executor has ``map(fn, items)`` (results in input order) and ``close()``; they
differ only in where ``fn`` runs, so their output is the same (a congruence test holds
them to it).
"""

from __future__ import annotations

from typing import Any, Protocol

EXECUTORS = ("local", "process", "ray")


class Executor(Protocol):
    name: str

    def map(self, fn: Any, items: Any) -> Any: ...

    def close(self) -> None: ...


def make_executor(name: str, workers: int = 2, ray_address: str | None = None) -> Executor:
    """The executor called ``name``; imports only the backend asked for."""
    if name == "local":
        from indexing.foreach.local import LocalExecutor

        return LocalExecutor()
    if name == "process":
        from indexing.foreach.process import ProcessExecutor

        return ProcessExecutor(workers)
    if name == "ray":
        from indexing.foreach.ray import RayExecutor

        return RayExecutor(workers, ray_address)
    raise ValueError(f"unknown executor '{name}': choose one of {', '.join(EXECUTORS)}")
