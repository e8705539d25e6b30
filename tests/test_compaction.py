"""Compaction: writes made while it runs are kept, its index equals exact search over the
live vectors, IVF is updated in place and retuned, other layouts are rebuilt from the
version's stored vectors, and it never switches over a version it did not start from."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from embedsvc.collection import open_store, read_manifest
from embedsvc.encoders import DEFAULT_MODEL, load_encoder
from embedsvc.live.embedder import embed_pending
from embedsvc.live.writes import DocumentIn, delete_documents, upsert_documents
from embedsvc.service import local_searcher
from embedsvc.settings import Settings
from embedsvc.store import PASSAGE_BITS
from indexing.check import check_collection
from indexing.compact import compact
from indexing.errors import BuildError
from indexing.job import BuildJob, BuildOptions
from indexing.versions import switch_version


def write(settings: Settings, name: str, docs: list[tuple[str, str]]) -> None:
    """Upsert (id, text) documents and embed them, as the server's embedder would."""
    _, store = open_store(settings.collections_dir, name)
    upsert_documents(store, [DocumentIn(i, t) for i, t in docs], embed=True)
    encoder = load_encoder(DEFAULT_MODEL, settings.models_dir)
    while embed_pending(store, encoder):
        pass


def live_collection(settings: Settings, name: str = "c") -> None:
    from embedsvc.collection import create_collection
    from embedsvc.encoders import resolve_model

    spec = resolve_model(DEFAULT_MODEL, settings.models_dir)
    create_collection(settings.collections_dir, name, DEFAULT_MODEL, (), spec.weights_sha256)
    write(settings, name, [(f"d{i}", f"Report number {i} on {topic}.") for i, topic in enumerate(
        ["vitamin D", "malaria", "protein folding", "heart disease", "sleep", "antibiotics"] * 3)])


def dense_ids(settings: Settings, query: str, k: int = 5, name: str = "c") -> list[str]:
    return [h.id for h in local_searcher(settings, name).search(query, k, "dense").hits]


def test_writes_made_during_a_compaction_are_kept(settings: Settings) -> None:
    live_collection(settings)
    paths, store = open_store(settings.collections_dir, "c")
    d1, d3 = store.rowids(["d1", "d3"])
    assert compact(paths, store)["version"] == 1
    write(settings, "c", [("d1", "Giraffes eat acacia leaves.")])  # fresh, replaces an indexed one
    delete_documents(store, ["d2"])  # a tombstone of version 1

    def meanwhile(phase: str, _: float) -> None:
        if phase != "switch":
            return  # the version is written: everything below happens after its snapshot
        write(settings, "c", [("new", "Penguins huddle against the Antarctic cold."),
                              ("d1", "Volcanoes erupt molten basalt.")])
        delete_documents(store, ["d3"])

    result = compact(paths, store, meanwhile)
    assert (result["version"], result["folded"], result["dropped"]) == (2, 1, 2)  # d1 old, d2
    assert dense_ids(settings, "penguins in the cold", 1) == ["new"]
    assert dense_ids(settings, "volcanic eruptions", 1) == ["d1"]
    assert "d1" not in dense_ids(settings, "giraffes eating leaves", 3)  # folded, then rewritten
    everything = dense_ids(settings, "report", 30)
    assert "d2" not in everything and "d3" not in everything and len(everything) == 17
    tombstones = {r[0] for r in store.conn.execute("SELECT vid FROM tombstones")}
    assert tombstones == {d1 << PASSAGE_BITS, d3 << PASSAGE_BITS}
    assert check_collection(paths, store, settings.models_dir) == []
    again = compact(paths, store)
    assert (again["version"], again["folded"], again["dropped"]) == (3, 2, 2)
    assert len(dense_ids(settings, "report", 30)) == 17
    assert check_collection(paths, store, settings.models_dir) == []


def test_a_compacted_version_answers_like_exact_search(settings: Settings) -> None:
    live_collection(settings)
    paths, store = open_store(settings.collections_dir, "c")
    compact(paths, store)
    delete_documents(store, ["d0", "d7"])
    write(settings, "c", [("d4", "Sleep apnea and snoring."), ("x", "Snoring at night.")])
    compact(paths, store)
    rows = store.conn.execute("SELECT d.id, p.vector FROM passages p JOIN documents d "
                              "ON d.rowid = p.doc ORDER BY p.id").fetchall()
    vectors = np.stack([np.frombuffer(v, dtype="<f4") for _, v in rows])
    query = load_encoder(DEFAULT_MODEL, settings.models_dir).encode(["snoring while asleep"])[0]
    exact = [rows[i][0] for i in np.argsort(-(vectors @ query))[:6]]
    assert dense_ids(settings, "snoring while asleep", 6) == exact


def unit_vectors(rng: np.random.Generator, n: int, centers: int = 40) -> np.ndarray:
    means = rng.standard_normal((centers, 384)).astype(np.float32)
    x = means[rng.integers(0, centers, n)] + 0.3 * rng.standard_normal((n, 384)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def vectors_collection(settings: Settings, tmp_path: Path, n: int, index: str) -> np.ndarray:
    vectors = unit_vectors(np.random.default_rng(3), n)
    np.save(tmp_path / "v.npy", vectors)
    (tmp_path / "v.ids.txt").write_text("".join(f"v{i}\n" for i in range(n)))
    BuildJob(settings, "v", None, BuildOptions(vectors=tmp_path / "v.npy", index=index)).run()
    return vectors


def test_ivf_keeps_its_base_then_is_updated_in_place_and_retuned(settings: Settings,
                                                                 tmp_path: Path) -> None:
    vectors = vectors_collection(settings, tmp_path, 6000, "ivf")
    paths, store = open_store(settings.collections_dir, "v")
    before = read_manifest(paths, 1)
    assert before["kind"] == "ivf" and before["store"][0]["dead"] is None
    assert before["store"][0]["source"]["path"] == str(tmp_path / "v.npy")  # referred to
    gone = [f"v{i}" for i in range(0, 6000, 100)]  # 1%: a minor compaction
    gone_rows = set(store.rowids(gone))
    delete_documents(store, gone)
    searcher = local_searcher(settings, "v")
    served = searcher.view().index
    minor = read_manifest(paths, compact(paths, store)["version"])
    assert searcher.view().index.shards[0] is served.shards[0]  # the base is not loaded again
    assert (minor["compaction"], minor["count"], minor["deleted"]["count"]) == ("minor", 5940, 60)
    assert minor["shards"] == before["shards"]  # the same base files, linked
    assert minor["store"][0]["dead"]  # the carried-over vectors know which rows died
    index = searcher.view().index
    _, found = index.search(vectors[:200], 10)
    assert not set((found >> PASSAGE_BITS).ravel().tolist()) & gone_rows
    own = np.array(store.rowids([f"v{i}" for i in range(1, 100)]))
    assert np.mean(found[1:100, 0] >> PASSAGE_BITS == own) > 0.9  # each finds itself first
    assert check_collection(paths, store, settings.models_dir) == []
    delete_documents(store, [f"v{i}" for i in range(1, 6000, 7)])  # 14% more: major
    major = read_manifest(paths, compact(paths, store)["version"])
    assert (major["layout"], major.get("delta"), major.get("deleted")) == (before["layout"], None, None)
    live = 6000 - len(set(range(0, 6000, 100)) | set(range(1, 6000, 7)))
    assert major["count"] == live and "remove" in major["phase_seconds"]
    assert major["recall_at_10"] >= 0.95
    assert check_collection(paths, store, settings.models_dir) == []


def test_hnsw_is_rebuilt_from_the_stored_vectors(settings: Settings, tmp_path: Path) -> None:
    vectors_collection(settings, tmp_path, 3000, "hnsw")
    paths, store = open_store(settings.collections_dir, "v")
    delete_documents(store, [f"v{i}" for i in range(100)])
    minor = read_manifest(paths, compact(paths, store)["version"])
    assert (minor["kind"], minor["compaction"], minor["count"]) == ("hnsw", "minor", 2900)
    delete_documents(store, [f"v{i}" for i in range(100, 500)])  # past the share: rebuilt
    result = compact(paths, store)
    manifest = read_manifest(paths, result["version"])
    assert (manifest["kind"], manifest["count"], manifest.get("deleted")) == ("hnsw", 2500, None)
    assert manifest["phase_seconds"].get("train") is not None  # built afresh from the store
    assert check_collection(paths, store, settings.models_dir) == []
    # the vectors came from the user's .npy, which the versions refer to: once it changes,
    # nothing can be rebuilt from it
    delete_documents(store, [f"v{i}" for i in range(500, 1000)])
    np.save(tmp_path / "v.npy", unit_vectors(np.random.default_rng(9), 3000))
    with pytest.raises(BuildError, match="v.npy, which holds the vectors .* changed since"):
        compact(paths, store)
    vectors_collection(settings, tmp_path, 3000, "hnsw")  # built again from the same input
    delete_documents(store, [f"v{i}" for i in range(500, 1000)])
    result = compact(paths, store)
    manifest = read_manifest(paths, result["version"])
    # a version written before stores existed cannot be rebuilt: build it once from its input
    delete_documents(store, [f"v{i}" for i in range(1000, 1500)])
    path = paths.version_dir(result["version"]) / "manifest.json"
    path.write_text(json.dumps({k: v for k, v in manifest.items() if k != "store"}))
    with pytest.raises(BuildError, match="rebuild it once with `embedsvc index build v`"):
        compact(paths, store)
    assert store.get_meta("current_version") == result["version"]


def test_a_compaction_never_switches_over_another_version(settings: Settings) -> None:
    live_collection(settings)
    paths, store = open_store(settings.collections_dir, "c")
    compact(paths, store)
    delete_documents(store, ["d0"])

    def someone_switches(phase: str, _: float) -> None:
        if phase == "switch":
            switch_version(store, None, DEFAULT_MODEL)

    with pytest.raises(BuildError, match="served version changed from 1 to None"):
        compact(paths, store, someone_switches)
    assert sorted(p.name for p in paths.versions.iterdir()) == ["0001"]  # its version is gone


def test_a_filter_on_hnsw_with_a_delta_finds_what_only_the_delta_holds(
        settings: Settings, tmp_path: Path) -> None:
    from embedsvc.search.filters import compile_filter

    vectors_collection(settings, tmp_path, 3000, "hnsw")
    paths, store = open_store(settings.collections_dir, "v")
    write(settings, "v", [("new", "Penguins huddle against the Antarctic cold.")])
    result = compact(paths, store)
    assert read_manifest(paths, result["version"])["delta"]["count"] == 1  # minor: in the delta
    searcher = local_searcher(settings, "v")
    only_new = compile_filter({"$or": [{"kind": "none"}]})  # nothing matches
    assert searcher.search("penguins", 5, "dense", where=only_new).hits == []
    upsert_documents(store, [DocumentIn("new", "Penguins huddle against the Antarctic cold.",
                                        metadata={"kind": "bird"})], embed=True)
    hits = searcher.search("penguins in the cold", 5, "dense", where=compile_filter({"kind": "bird"}))
    assert [h.id for h in hits.hits] == ["new"]  # exact search over the few matches, base and delta


def test_the_embedder_drops_vectors_of_a_model_no_longer_served(settings: Settings) -> None:
    live_collection(settings)
    _, store = open_store(settings.collections_dir, "c")
    upsert_documents(store, [DocumentIn("d0", "Rewritten text.")], embed=True)
    store.set_meta(model_id="another-model")  # as a build with another model switches in
    assert embed_pending(store, load_encoder(DEFAULT_MODEL, settings.models_dir)) == 1
    assert store.conn.execute("SELECT count(*) FROM passages p JOIN documents d ON d.rowid = p.doc "
                              "WHERE d.id = 'd0'").fetchone()[0] == 0
