"""`index build --vectors`: embeddings made elsewhere, and every way they can be wrong."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from embedsvc.cli import app
from embedsvc.collection import open_store
from embedsvc.settings import Settings
from indexing.job import BuildJob, BuildOptions

runner = CliRunner()


def unit(rng: np.random.Generator, n: int, dim: int = 384) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def write_npy(folder: Path, vectors: np.ndarray, ids: list[str]) -> Path:
    np.save(folder / "vecs.npy", vectors)
    (folder / "vecs.ids.txt").write_text("\n".join(ids) + "\n")
    return folder / "vecs.npy"


def cli(settings: Settings, *args: str):
    return runner.invoke(app, ["--home", str(settings.home), "index", "build", "v", *args])


def test_npy_and_parquet_build_the_same_index(settings: Settings, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    vectors, ids = unit(rng, 300), [f"id{i}" for i in range(300)]
    npy = write_npy(tmp_path, vectors, ids)
    result = cli(settings, "--vectors", str(npy), "--chunk-size", "64")
    assert result.exit_code == 0, result.output
    pq.write_table(pa.table({"id": ids, "vector": vectors.tolist()}), tmp_path / "v.parquet")
    other = settings.model_copy(update={"home": tmp_path / "h2"})
    BuildJob(other, "v", None, BuildOptions(vectors=tmp_path / "v.parquet", chunk_size=64)).run()
    from embedsvc.search.dense import DenseIndex

    for s in (settings, other):
        paths, store = open_store(s.collections_dir, "v")
        index = DenseIndex.load(paths.version_dir(store.get_meta("current_version")))
        _, found = index.search(vectors[:5], 1)
        assert [store.documents_by_rowid([int(f[0]) >> 16])[int(f[0]) >> 16].id
                for f in found] == ids[:5]


@pytest.mark.parametrize("problem, message", [
    ("dim", "dimension 128, the model makes 384"),
    ("nan", "row 7 holds NaN"),
    ("count", "holds 299 ids for 300 vectors"),
    ("zero", "row 3 is a zero vector"),
    ("dup", "duplicate id 'id0' (first on line 1)"),
])
def test_bad_vectors_are_refused_and_the_served_version_kept(
        settings: Settings, tmp_path: Path, problem: str, message: str) -> None:
    rng = np.random.default_rng(1)
    good = write_npy(tmp_path, unit(rng, 100), [f"id{i}" for i in range(100)])
    assert cli(settings, "--vectors", str(good)).exit_code == 0
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    vectors, ids = unit(rng, 300), [f"id{i}" for i in range(300)]
    if problem == "dim":
        vectors = unit(rng, 300, dim=128)
    elif problem == "nan":
        vectors[7, 3] = np.nan
    elif problem == "count":
        ids = ids[:-1]
    elif problem == "zero":
        vectors[3] = 0
    elif problem == "dup":
        ids[200] = "id0"
    result = cli(settings, "--vectors", str(write_npy(bad_dir, vectors, ids)))
    assert result.exit_code == 1 and message in result.output
    _, store = open_store(settings.collections_dir, "v")
    assert store.get_meta("current_version") == 1


def test_missing_ids_file_and_unknown_format(settings: Settings, tmp_path: Path) -> None:
    np.save(tmp_path / "lonely.npy", np.ones((3, 384), dtype=np.float32))
    result = cli(settings, "--vectors", str(tmp_path / "lonely.npy"))
    assert result.exit_code == 1 and "--ids" in result.output
    (tmp_path / "v.csv").write_text("x")
    result = cli(settings, "--vectors", str(tmp_path / "v.csv"))
    assert result.exit_code == 1 and "Parquet" in result.output
    both = cli(settings, "--vectors", str(tmp_path / "lonely.npy"), "--input", str(tmp_path))
    assert both.exit_code == 1 and "either" in both.output


def search_ids(settings: Settings, queries: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Top-1 document id and score of each query in collection ``v``."""
    from embedsvc.search.dense import DenseIndex

    paths, store = open_store(settings.collections_dir, "v")
    index = DenseIndex.load(paths.version_dir(store.get_meta("current_version")))
    scores, found = index.search(queries, 1)
    rows = store.documents_by_rowid(int(f) >> 16 for f in found[:, 0])
    return [rows[int(f) >> 16].id for f in found[:, 0]], scores[:, 0]


@pytest.mark.parametrize("dtype, extremes", [
    (np.float64, (1e-200, 1e200)),
    (np.float32, (1e-24, 1e21)),  # squared in float32 these would under- and overflow
])
def test_vectors_of_any_length_and_float_type_are_normalised(
        settings: Settings, tmp_path: Path, dtype: type, extremes: tuple[float, float]) -> None:
    rng = np.random.default_rng(2)
    vectors = unit(rng, 200)
    scales = rng.uniform(0.1, 10, (200, 1))
    scales[:2, 0] = extremes
    scaled = (vectors.astype(np.float64) * scales).astype(dtype)
    ids = [f"id{i}" for i in range(200)]
    result = cli(settings, "--vectors", str(write_npy(tmp_path, scaled, ids)))
    assert result.exit_code == 0, result.output
    found, scores = search_ids(settings, vectors[:20])
    assert found == ids[:20]
    np.testing.assert_allclose(scores, 1.0, atol=1e-5)  # cosine, as if they were unit vectors


def test_duplicate_ids_are_skipped_on_request_and_the_first_one_kept(settings: Settings,
                                                                      tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    vectors, ids = unit(rng, 300), [f"id{i}" for i in range(300)]
    ids[150] = "id3"
    ids[299] = ""
    npy = write_npy(tmp_path, vectors, ids)
    result = cli(settings, "--vectors", str(npy), "--chunk-size", "64", "--on-error", "skip")
    assert result.exit_code == 0, result.output
    info = runner.invoke(app, ["--home", str(settings.home), "index", "info", "v", "--json"])
    assert '"documents": 298' in info.output and '"count": 298' in info.output
    found, scores = search_ids(settings, vectors[[3, 150, 151]])
    assert found[0] == "id3" and found[2] == "id151"  # rows after a dropped one still map right
    assert scores[1] < 0.9  # the second "id3" row was not indexed


def test_a_vectors_build_never_loads_the_model(settings: Settings, tmp_path: Path) -> None:
    from embedsvc import encoders

    rng = np.random.default_rng(4)
    npy = write_npy(tmp_path, unit(rng, 50), [f"id{i}" for i in range(50)])
    assert cli(settings, "--vectors", str(npy)).exit_code == 0
    assert not [key for key in encoders._by_name if key[0] == str(settings.models_dir)]


def test_rerun_is_a_no_op_until_the_vectors_change(settings: Settings, tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    vectors, ids = unit(rng, 120), [f"id{i}" for i in range(120)]
    npy = write_npy(tmp_path, vectors, ids)
    assert cli(settings, "--vectors", str(npy)).exit_code == 0
    again = cli(settings, "--vectors", str(npy))
    assert again.exit_code == 0 and "up to date" in again.output
    vectors[7] = unit(rng, 1)[0]
    write_npy(tmp_path, vectors, ids)
    assert cli(settings, "--vectors", str(npy)).exit_code == 0
    found, scores = search_ids(settings, vectors[[7]])
    assert found == ["id7"] and scores[0] > 0.999


def test_a_build_that_dies_after_storing_the_ids_is_finished_by_a_rerun(
        settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import indexing.build

    rng = np.random.default_rng(6)
    vectors, ids = unit(rng, 200), [f"id{i}" for i in range(200)]
    npy = write_npy(tmp_path, vectors, ids)
    with monkeypatch.context() as patch:
        def crash(*args: object, **kwargs: object) -> None:
            raise RuntimeError("killed while training")

        patch.setattr(indexing.build, "train_index", crash)
        assert cli(settings, "--vectors", str(npy), "--chunk-size", "64").exit_code == 1
    _, store = open_store(settings.collections_dir, "v")
    assert store.get_meta("current_version") is None  # nothing half-built is served
    assert cli(settings, "--vectors", str(npy), "--chunk-size", "64").exit_code == 0
    check = runner.invoke(app, ["--home", str(settings.home), "index", "check", "v"])
    assert check.exit_code == 0, check.output
    found, _ = search_ids(settings, vectors[::50])
    assert found == ids[::50] and store.count_documents() == 200


def test_a_failed_rebuild_keeps_every_served_document(
        settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import indexing.build

    rng = np.random.default_rng(7)
    served, ids = unit(rng, 100), [f"id{i}" for i in range(100)]
    assert cli(settings, "--vectors", str(write_npy(tmp_path, served, ids))).exit_code == 0
    other = tmp_path / "other"
    other.mkdir()
    npy = write_npy(other, unit(rng, 40), [f"new{i}" for i in range(40)])

    def crash(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk full while writing the index")

    monkeypatch.setattr(indexing.build, "build_index", crash)
    assert cli(settings, "--vectors", str(npy)).exit_code == 1
    _, store = open_store(settings.collections_dir, "v")
    assert store.get_meta("current_version") == 1
    assert all(store.document(i) is not None for i in ids)  # version 1 keeps its documents
    found, _ = search_ids(settings, served[::25])
    assert found == ids[::25]


def test_parquet_columns_become_metadata_that_filters_see(settings: Settings, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from embedsvc.search.filters import compile_filter
    from embedsvc.service import local_searcher

    rng = np.random.default_rng(1)
    vectors, ids = unit(rng, 200), [f"id{i}" for i in range(200)]
    table = pa.table({"id": ids, "vector": vectors.tolist(), "bucket": [i % 10 for i in range(200)],
                      "source": ["a" if i < 100 else "b" for i in range(200)]})
    pq.write_table(table, tmp_path / "v.parquet")
    assert cli(settings, "--vectors", str(tmp_path / "v.parquet")).exit_code == 0
    _, store = open_store(settings.collections_dir, "v")
    assert store.document("id13").metadata == {"bucket": 3, "source": "a"}
    searcher = local_searcher(settings, "v")
    view = searcher.view()
    only = compile_filter({"bucket": 3, "source": "b"})
    hits = searcher.search("ignored", 50, "dense", where=only)  # no text: the vector path
    assert hits.mode == "dense"
    found = {h.id for h in hits.hits}
    assert found == {f"id{i}" for i in range(100, 200) if i % 10 == 3} and view.index.count == 200
    bad = tmp_path / "bad.parquet"
    pq.write_table(table.set_column(2, "bucket", pa.array([float("nan")] * 200)), bad)
    result = cli(settings, "--vectors", str(bad))
    assert result.exit_code == 1 and "row 0 has a metadata value JSON cannot hold" in result.output
