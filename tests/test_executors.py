"""Congruence: the process pool and Ray produce what the in-process executor produces."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from embedsvc.settings import Settings
from indexing.foreach import make_executor
from indexing.foreach.ordered import ordered_map
from indexing.job import BuildJob, BuildOptions
from tests.conftest import make_settings, write_jsonl
from tests.test_build_job import vectors_of


def _square(x: int) -> int:
    return x * x


def test_ordered_map_keeps_order_and_bounds_in_flight() -> None:
    submitted, high_water = [], 0

    def submit(item: int) -> int:
        submitted.append(item)
        return item

    def wait(handle: int) -> int:
        nonlocal high_water
        high_water = max(high_water, len(submitted) - handle)
        return handle * 10

    assert list(ordered_map(submit, wait, range(20), in_flight=3)) == [i * 10 for i in range(20)]
    assert high_water <= 3


def test_process_executor_maps_in_order() -> None:
    executor = make_executor("process", workers=2)
    try:
        assert list(executor.map(_square, range(12))) == [i * i for i in range(12)]
    finally:
        executor.close()


def test_unknown_executor() -> None:
    with pytest.raises(ValueError, match="local, process, ray"):
        make_executor("threads")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, mini_rows: list[dict]) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("exec") / "docs.jsonl", mini_rows[:48])


@pytest.fixture(scope="module")
def local_build(tmp_path_factory: pytest.TempPathFactory, bundled_model: Path,
                corpus: Path) -> Settings:
    settings = make_settings(tmp_path_factory.mktemp("local"), bundled_model, chunk_size=8)
    BuildJob(settings, "c", corpus, BuildOptions()).run()
    return settings


@pytest.mark.parametrize("name", ["process", "ray"])
def test_parallel_executors_match_local(name: str, tmp_path: Path, bundled_model: Path,
                                        corpus: Path, local_build: Settings) -> None:
    settings = make_settings(tmp_path / "home", bundled_model, chunk_size=8)
    executor = make_executor(name, workers=2)
    try:
        report = BuildJob(settings, "c", corpus, BuildOptions(), executor=executor).run()
    finally:
        executor.close()
    assert report.documents == 48
    np.testing.assert_allclose(vectors_of(settings, "c"), vectors_of(local_build, "c"), atol=1e-5)
