"""Index builds from chunk files: exact vs approximate congruence, shard merging, bad input.

Data is small, seeded and clustered (like real embeddings), so every test runs in seconds.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import faiss
import numpy as np
import pytest

from embedsvc.files import sha256_file
from indexing.build import (
    BuildError,
    _Corpus,
    build_index,
    exact_topk,
    recall_at_k,
    sample_rows,
    search_shards,
    train_index,
    validate_chunks,
    working_bytes,
)
from indexing.chunkfiles import ChunkFile, write_chunk
from indexing.layouts import LayoutError, choose_layout

DIM = 32


@pytest.fixture(autouse=True)
def _one_faiss_thread() -> Iterator[None]:
    """One OpenMP thread: on indexes this small threads only add synchronisation, and on a
    busy machine their spin-waits make a test take ten times longer."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def clustered(n: int, dim: int = DIM, clusters: int = 50, seed: int = 0,
              spread: float = 0.35) -> np.ndarray:
    """(n, dim) unit vectors scattered around ``clusters`` random centres."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    labels = rng.integers(0, clusters, n)
    x = centres[labels] + spread * rng.standard_normal((n, dim)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def write_chunks(folder: Path, vectors: np.ndarray, size: int,
                 ids: np.ndarray | None = None) -> list[ChunkFile]:
    ids = np.arange(len(vectors), dtype=np.int64) if ids is None else ids
    chunks = []
    for number, start in enumerate(range(0, len(vectors), size)):
        write_chunk(folder, number, ids[start:start + size], vectors[start:start + size])
        chunks.append(ChunkFile(folder, number))
    return chunks


def read_shards(out: Path, manifest: dict) -> list[faiss.Index]:
    indexes = [faiss.read_index(str(out / s["file"])) for s in manifest["shards"]]
    for ix in indexes:
        if manifest["search_params"]:
            faiss.ParameterSpace().set_index_parameters(ix, manifest["search_params"])
    return indexes


def test_flat_build_is_exact_and_keeps_ids(tmp_path: Path) -> None:
    x = clustered(3000)
    ids = np.arange(3000, dtype=np.int64) * 7 + 100_000  # ids are not row numbers
    chunks = write_chunks(tmp_path / "chunks", x, 1000, ids)
    seen: list[int] = []
    manifest = build_index(chunks, DIM, tmp_path / "out", index="flat", progress=seen.append)

    assert manifest["layout"] == "Flat" and manifest["kind"] == "flat"
    assert manifest["count"] == 3000 and manifest["recall_at_10"] == 1.0
    assert manifest["search_params"] == "" and manifest["metric"] == "ip"
    assert seen[-1] == 3000
    shard = manifest["shards"][0]
    assert shard["sha256"] == sha256_file(tmp_path / "out" / shard["file"])
    assert manifest["index_bytes"] == (tmp_path / "out" / shard["file"]).stat().st_size

    q = x[:20]
    scores, found = search_shards(read_shards(tmp_path / "out", manifest), q, 10)
    expect = np.argsort(-(q @ x.T), axis=1, kind="stable")[:, :10]
    assert np.array_equal(found, ids[expect])
    np.testing.assert_allclose(scores, np.take_along_axis(q @ x.T, expect, axis=1), rtol=1e-5)


def test_shard_merge_equals_single_index(tmp_path: Path) -> None:
    x = clustered(4000, seed=1)
    chunks = write_chunks(tmp_path / "chunks", x, 1500)
    single = build_index(chunks, DIM, tmp_path / "one", index="flat")
    split = build_index(chunks, DIM, tmp_path / "three", index="flat", shards=3)

    assert [s["file"] for s in split["shards"]] == [f"shard-000{i}.faiss" for i in range(3)]
    assert sum(s["count"] for s in split["shards"]) == 4000
    q = clustered(50, seed=2)
    one_scores, one_ids = search_shards(read_shards(tmp_path / "one", single), q, 10)
    shard_indexes = read_shards(tmp_path / "three", split)
    many_scores, many_ids = search_shards(shard_indexes, q, 10)
    assert np.array_equal(one_ids, many_ids)
    np.testing.assert_array_equal(one_scores, many_scores)
    # the order of the shards does not change the merged answer
    assert np.array_equal(search_shards(shard_indexes[::-1], q, 10)[1], one_ids)


def test_merge_breaks_ties_by_id_and_pads_missing() -> None:
    a, b = faiss.IndexIDMap2(faiss.IndexFlatIP(4)), faiss.IndexIDMap2(faiss.IndexFlatIP(4))
    v = np.eye(4, dtype=np.float32)[:1]
    a.add_with_ids(v, np.array([9]))
    b.add_with_ids(np.vstack([v, v]), np.array([3, 5]))
    scores, ids = search_shards([a, b], v, 5)
    assert ids.tolist() == [[3, 5, 9, -1, -1]]
    assert scores[0, :3].tolist() == [1.0, 1.0, 1.0] and np.isneginf(scores[0, 3:]).all()


def test_max_shard_bytes_splits(tmp_path: Path) -> None:
    x = clustered(2000, seed=3)
    chunks = write_chunks(tmp_path / "chunks", x, 1000)
    manifest = build_index(chunks, DIM, tmp_path / "out", index="flat",
                           max_shard_bytes=2000 * DIM * 4 // 3)
    assert len(manifest["shards"]) >= 3
    assert sum(s["count"] for s in manifest["shards"]) == 2000


def test_ivf_reaches_target_recall_against_exact(tmp_path: Path) -> None:
    data = clustered(20_200, seed=4)
    x, q = data[:20_000], data[20_000:]  # queries from the same distribution, not indexed
    chunks = write_chunks(tmp_path / "chunks", x, 5000)
    manifest = build_index(chunks, DIM, tmp_path / "out", index="ivf", target_recall=0.95)

    assert manifest["kind"] == "ivf" and manifest["layout"].startswith("IVF")
    assert manifest["search_params"].startswith("nprobe=")
    assert manifest["recall_at_10"] >= 0.95
    # measured independently on unseen queries, against brute force
    truth = np.argsort(-(q @ x.T), axis=1)[:, :10]
    _, found = search_shards(read_shards(tmp_path / "out", manifest), q, 10)
    assert recall_at_k(found, truth) >= 0.9


def test_ivfpq_and_hnsw_builds_tune_their_knob(tmp_path: Path) -> None:
    x = clustered(4000, seed=6)
    chunks = write_chunks(tmp_path / "chunks", x, 2000)
    pq = build_index(chunks, DIM, tmp_path / "pq", index="IVF32,PQ16x4", target_recall=0.35,
                     shards=2)
    assert pq["kind"] == "ivfpq" and pq["search_params"].startswith("nprobe=")
    assert pq["recall_at_10"] >= 0.35 and len(pq["shards"]) == 2
    hnsw = build_index(chunks, DIM, tmp_path / "hnsw", index="hnsw", target_recall=0.9)
    assert hnsw["kind"] == "hnsw" and hnsw["search_params"].startswith("efSearch=")
    assert hnsw["recall_at_10"] >= 0.9
    _, found = search_shards(read_shards(tmp_path / "hnsw", hnsw), x[:5], 1)
    assert found[:, 0].tolist() == [0, 1, 2, 3, 4]


def test_factory_string_and_unknown_string(tmp_path: Path) -> None:
    x = clustered(3000, seed=7)
    chunks = write_chunks(tmp_path / "chunks", x, 3000)
    manifest = build_index(chunks, DIM, tmp_path / "out", index="IVF16,SQ8")
    assert manifest["layout"] == "IVF16,SQ8" and manifest["search_params"].startswith("nprobe=")
    with pytest.raises(LayoutError, match="Bogus7"):
        build_index(chunks, DIM, tmp_path / "bad", index="Bogus7")
    assert not (tmp_path / "bad").exists()


def test_budget_too_small_names_the_knob(tmp_path: Path) -> None:
    chunks = write_chunks(tmp_path / "chunks", clustered(1000), 1000)
    with pytest.raises(LayoutError, match="--memory-budget"):
        build_index(chunks, DIM, tmp_path / "out", memory_budget=10_000)


def test_wrong_dim_names_the_file(tmp_path: Path) -> None:
    chunks = write_chunks(tmp_path / "chunks", clustered(100), 50)
    write_chunk(tmp_path / "chunks", 2, np.arange(100, 110), clustered(10, dim=DIM + 1))
    chunks.append(ChunkFile(tmp_path / "chunks", 2))
    with pytest.raises(BuildError, match=r"chunk-00000002\.vectors\.npy.*\(10, 33\)"):
        build_index(chunks, DIM, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_nan_names_file_and_row(tmp_path: Path) -> None:
    x = clustered(100)
    x[63, 5] = np.nan
    chunks = write_chunks(tmp_path / "chunks", x, 50)
    with pytest.raises(BuildError, match=r"chunk-00000001\.vectors\.npy: row 13 .*NaN"):
        build_index(chunks, DIM, tmp_path / "out")


def test_inf_is_rejected(tmp_path: Path) -> None:
    x = clustered(10)
    x[0, 0] = np.inf
    chunks = write_chunks(tmp_path / "chunks", x, 10)
    with pytest.raises(BuildError, match="chunk-00000000"):
        build_index(chunks, DIM, tmp_path / "out")


def test_count_mismatch_names_the_file(tmp_path: Path) -> None:
    chunks = write_chunks(tmp_path / "chunks", clustered(40), 20)
    np.save(chunks[1].ids_path, np.arange(20, 39, dtype=np.int64))  # one id short
    with pytest.raises(BuildError, match=r"chunk-00000001.*19 ids .* 20 vectors"):
        build_index(chunks, DIM, tmp_path / "out")


def test_duplicate_ids_are_rejected(tmp_path: Path) -> None:
    chunks = write_chunks(tmp_path / "chunks", clustered(40), 20,
                          ids=np.r_[np.arange(20), np.arange(19, 39)].astype(np.int64))
    with pytest.raises(BuildError, match="id 19 appears 2 times"):
        build_index(chunks, DIM, tmp_path / "out")


def test_sampler_is_seeded_spread_and_skips_excluded() -> None:
    a = sample_rows(100_000, 1000, seed=3)
    assert np.array_equal(a, sample_rows(100_000, 1000, seed=3))
    assert not np.array_equal(a, sample_rows(100_000, 1000, seed=4))
    assert len(np.unique(a)) == 1000 and np.all(np.diff(a) > 0)
    # spread over the whole range, not the first rows: every tenth holds about 100
    assert np.histogram(a, bins=10, range=(0, 100_000))[0].min() > 60
    held_out = sample_rows(100_000, 500, seed=5, exclude=a)
    assert not np.intersect1d(held_out, a).size


def test_sorted_input_still_trains_a_good_quantizer(tmp_path: Path) -> None:
    # rows sorted by cluster: the first rows hold only a few of the 40 clusters
    rng = np.random.default_rng(8)
    centres = rng.standard_normal((40, DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = np.repeat(centres, 300, axis=0) + 0.05 * rng.standard_normal((12_000, DIM))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    chunks = write_chunks(tmp_path / "chunks", x, 3000)
    manifest = build_index(chunks, DIM, tmp_path / "out", index="IVF64,Flat",
                           target_recall=0.9)
    assert manifest["train_size"] < 12_000 / 2  # a sample, not the whole input

    index = faiss.read_index(str(tmp_path / "out" / manifest["shards"][0]["file"]))
    quantizer = faiss.extract_index_ivf(index).quantizer
    centroids = quantizer.reconstruct_n(0, quantizer.ntotal)
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    # nearly every cluster has a centroid on it; trained on the first rows, most would not
    covered = ((centres @ centroids.T).max(axis=1) > 0.95).mean()
    assert covered >= 0.85
    assert manifest["recall_at_10"] >= 0.9


def test_exact_topk_streams_chunks(tmp_path: Path) -> None:
    x = clustered(1500, seed=9)
    ids = np.arange(1500, dtype=np.int64) + 10
    chunks = write_chunks(tmp_path / "chunks", x, 400, ids)
    corpus = _Corpus(chunks, DIM, *validate_chunks(chunks, DIM))
    q = x[:7]
    _, found = exact_topk(corpus, q, 10)
    expect = ids[np.argsort(-(q @ x.T), axis=1)[:, :10]]
    assert recall_at_k(found, expect) == 1.0


def test_same_seed_gives_identical_files(tmp_path: Path) -> None:
    x = clustered(6000, seed=10)
    chunks = write_chunks(tmp_path / "chunks", x, 2000)
    first = build_index(chunks, DIM, tmp_path / "a", index="ivf", shards=2, seed=3)
    again = build_index(chunks, DIM, tmp_path / "b", index="ivf", shards=2, seed=3)
    assert [s["sha256"] for s in first["shards"]] == [s["sha256"] for s in again["shards"]]
    assert first["search_params"] == again["search_params"]


def test_training_ahead_gives_the_same_index_and_must_match_the_chunks(tmp_path: Path) -> None:
    x = clustered(6000, seed=11)
    chunks = write_chunks(tmp_path / "chunks", x, 2000)
    direct = build_index(chunks, DIM, tmp_path / "a", index="ivf", shards=2, seed=3)
    trained = train_index(chunks, DIM, index="ivf", seed=3)
    ahead = build_index(chunks, DIM, tmp_path / "b", index="ivf", shards=2, seed=3,
                        trained=trained)
    assert [s["sha256"] for s in direct["shards"]] == [s["sha256"] for s in ahead["shards"]]
    assert ahead["phase_seconds"]["train"] == round(trained.seconds, 3)
    with pytest.raises(BuildError, match="trained for 6000 vectors, the chunks hold 4000"):
        build_index(chunks[:2], DIM, tmp_path / "c", index="ivf", trained=train_index(chunks, DIM))


def test_bad_shard_settings_fail_before_training(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import indexing.build

    def no_training(*args: object) -> None:
        raise AssertionError("trained before checking the shard settings")

    monkeypatch.setattr(indexing.build, "_choose_and_train", no_training)
    chunks = write_chunks(tmp_path / "chunks", clustered(1000, seed=12), 500)
    with pytest.raises(BuildError, match="--shards must be at least 1"):
        build_index(chunks, DIM, tmp_path / "out", index="ivf", shards=0)


def test_search_shards_on_a_given_pool(tmp_path: Path) -> None:
    x = clustered(1000, seed=11)
    manifest = build_index(write_chunks(tmp_path / "chunks", x, 500), DIM, tmp_path / "out",
                           index="flat", shards=2)
    shards = read_shards(tmp_path / "out", manifest)
    with ThreadPoolExecutor(2) as pool:
        pooled = search_shards(shards, x[:5], 3, pool=pool)
    assert np.array_equal(pooled[1], search_shards(shards, x[:5], 3)[1])
    assert pooled[1][:, 0].tolist() == [0, 1, 2, 3, 4]


def test_missing_chunk_and_negative_ids(tmp_path: Path) -> None:
    chunks = write_chunks(tmp_path / "chunks", clustered(20), 10)
    chunks[1].vectors_path.unlink()
    with pytest.raises(BuildError, match="chunk-00000001.vectors.npy: cannot read chunk 1"):
        build_index(chunks, DIM, tmp_path / "out")
    negative = write_chunks(tmp_path / "neg", clustered(5), 5, ids=np.arange(-1, 4))
    with pytest.raises(BuildError, match="negative id -1"):
        build_index(negative, DIM, tmp_path / "out")
    with pytest.raises(BuildError, match="no chunk files"):
        build_index([], DIM, tmp_path / "out")


def test_layout_can_be_predicted_before_the_build(tmp_path: Path) -> None:
    chunks = write_chunks(tmp_path / "chunks", clustered(3000), 1000)
    predicted = choose_layout(3000, DIM, 10**9, "auto", working_bytes=working_bytes(DIM))
    assert build_index(chunks, DIM, tmp_path / "out", memory_budget=10**9)["reason"] == (
        predicted.reason)
