"""Vectors made elsewhere in live collections: a collection with a dimension and no model,
documents that carry vectors, search by vector, through HTTP (our client), and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from embedsvc.client import Client, Conflict, InvalidRequest
from tests.conftest import RunningServer, make_settings, wait_for

DIM = 8


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    return np.random.default_rng(3).standard_normal((20, DIM)) * 5  # not unit length


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory, bundled_model: Path, vectors: np.ndarray):
    settings = make_settings(tmp_path_factory.mktemp("ext-home"), bundled_model)
    with RunningServer(settings) as server, Client(server.url) as client:
        info = client.create_collection("ext", dimension=DIM)
        assert info.model is None and info.dimension == DIM
        docs = [{"id": f"v{i}", "text": f"point number {i}", "metadata": {"even": i % 2 == 0},
                 "vector": vectors[i]} for i in range(len(vectors))]
        client.upsert("ext", docs)
        yield settings, server, client


def test_documents_with_vectors_are_searchable_by_vector_at_once(running, vectors: np.ndarray) -> None:
    _, _, client = running
    info = client.get_collection("ext")
    assert info.fresh_vectors == len(vectors) and info.pending == 0
    result = client.search("ext", vector=vectors[7] * 0.5, k=3)  # any length: cosine
    assert result.mode == "dense" and result.fallback is None
    assert result.hits[0].id == "v7" and result.hits[0].score == pytest.approx(1.0, abs=1e-5)
    expected = np.argsort(-(unit(vectors) @ unit(vectors[7])))[:3]
    assert [h.id for h in result.hits] == [f"v{i}" for i in expected]
    odd = client.search("ext", vector=vectors[7], k=3, filter={"even": False})
    assert odd.hits[0].id == "v7" and all(int(h.id[1:]) % 2 for h in odd.hits)


def test_a_text_query_on_a_collection_without_a_model_answers_lexically(running) -> None:
    _, _, client = running
    result = client.search("ext", "point number 4", k=3)
    assert result.mode == "lexical" and result.fallback == "no_model"
    assert result.hits[0].id == "v4"
    with pytest.raises(Conflict, match="has no model to embed a text query"):
        client.search("ext", "point number 4", mode="dense")


@pytest.mark.parametrize(("call", "message"), [
    (lambda c: c.search("ext", vector=[1.0] * 5), "the vector has 5 dimensions, the collection holds 8-dimensional"),
    (lambda c: c.search("ext", vector=[0.0] * DIM), "a zero vector"),
    (lambda c: c.search("ext", vector=[1.0] * DIM, mode="hybrid"), "needs a text query"),
    (lambda c: c.search("ext", "text", vector=[1.0] * DIM), "either 'query' (text) or 'vector'"),
    (lambda c: c.upsert("ext", [{"id": "bad", "text": "x", "vector": [1.0] * 3}]),
     "documents[0] ('bad'): the vector has 3 dimensions, the collection holds 8-dimensional"),
    (lambda c: c.create_collection("both", model="all-MiniLM-L6-v2", dimension=8),
     "dimension 8 was asked for, but model 'all-MiniLM-L6-v2' makes 384-dimensional"),
])
def test_vectors_that_do_not_fit_are_a_422_naming_both_dimensions(running, call, message: str) -> None:
    _, _, client = running
    with pytest.raises(InvalidRequest) as raised:
        call(client)
    assert raised.value.status == 422 and message in raised.value.message
    assert client.get_collection("ext").documents == 20  # nothing stored


def test_vectors_survive_a_compaction(running, vectors: np.ndarray) -> None:
    _, _, client = running
    client.upsert("ext", [{"id": "late", "text": "", "vector": vectors[0] + 0.01}])  # no text at all
    job = client.compact("ext")
    wait_for(lambda: client.job(job.id).state in ("done", "failed"), timeout=120)
    assert client.job(job.id).state == "done", client.job(job.id).error
    info = client.get_collection("ext")
    assert info.indexed_vectors == 21 and info.fresh_vectors == 0 and info.dimension == DIM
    hits = client.search("ext", vector=vectors[0], k=2).hits
    assert {h.id for h in hits} == {"v0", "late"}


def test_a_model_collection_takes_vectors_of_its_dimension_and_searches_by_them(running) -> None:
    _, _, client = running
    client.create_collection("withmodel")
    assert client.get_collection("withmodel").dimension == 384
    texts = {"a": "vitamin D deficiency and bone health", "b": "quantum chromodynamics on a lattice"}
    embedded = client.embed(list(texts.values())).vectors
    client.upsert("withmodel", [{"id": k, "text": t, "vector": v}
                                for (k, t), v in zip(texts.items(), embedded, strict=True)])
    assert client.get_collection("withmodel").pending == 0  # stored as given, not embedded
    by_vector = client.search("withmodel", vector=client.embed(["vitamin D"]).vectors[0], k=2)
    wait_for(lambda: client.readyz().models.get("all-MiniLM-L6-v2") == "ready", timeout=120)
    by_text = client.search("withmodel", "vitamin D", k=2, mode="dense")
    assert [h.id for h in by_vector.hits] == [h.id for h in by_text.hits] == ["a", "b"]
    assert by_vector.hits[0].score == pytest.approx(by_text.hits[0].score, abs=1e-4)


def test_the_cli_creates_vector_collections_and_searches_by_vector(running, vectors: np.ndarray,
                                                                   tmp_path: Path) -> None:
    from embedsvc.cli import app

    settings, server, _ = running
    home = ["--home", str(settings.home)]
    made = CliRunner().invoke(app, [*home, "collections", "create", "cli-ext", "--dimension", "4", "--json"])
    assert made.exit_code == 0, made.output
    assert json.loads(made.stdout)["dimension"] == 4 and json.loads(made.stdout)["model"] is None

    query = json.dumps(vectors[3].tolist())
    remote = CliRunner().invoke(app, [*home, "search", "ext", "--vector", query, "--url", server.url, "--json"])
    assert remote.exit_code == 0, remote.output
    assert json.loads(remote.stdout)["hits"][0]["id"] == "v3"
    np.save(tmp_path / "q.npy", vectors[5])
    local = CliRunner().invoke(app, [*home, "search", "ext", "--vector", f"@{tmp_path / 'q.npy'}", "--json"])
    assert local.exit_code == 0, local.output
    assert json.loads(local.stdout)["hits"][0]["id"] == "v5"

    bad = CliRunner().invoke(app, [*home, "search", "ext", "--vector", "[1, 2"])
    assert bad.exit_code == 1 and "--vector: not valid JSON" in bad.output
    wrong = CliRunner().invoke(app, [*home, "search", "ext", "--vector", "[1, 2]"])
    assert wrong.exit_code == 1 and "the vector has 2 dimensions" in wrong.output
    neither = CliRunner().invoke(app, [*home, "search", "ext"])
    assert neither.exit_code == 1 and "give a QUERY or --vector" in neither.output


def test_an_index_build_vectors_collection_is_searched_and_written_by_vector(running, tmp_path: Path) -> None:
    """`index build --vectors` makes the same kind of collection: vectors in, vectors out."""
    from indexing.job import BuildJob, BuildOptions

    settings, _, client = running
    built = unit(np.random.default_rng(5).standard_normal((50, 384))).astype(np.float32)
    np.save(tmp_path / "vecs.npy", built)
    (tmp_path / "vecs.ids.txt").write_text("".join(f"b{i}\n" for i in range(50)))
    BuildJob(settings, "built", None, BuildOptions(vectors=tmp_path / "vecs.npy", chunk_size=64)).run()
    assert client.get_collection("built").dimension == 384
    assert client.search("built", vector=built[17], k=1).hits[0].id == "b17"
    client.upsert("built", [{"id": "new", "text": "", "vector": built[17] + 0.001}])
    assert {h.id for h in client.search("built", vector=built[17], k=2).hits} == {"b17", "new"}


def test_the_cli_writes_documents_with_vectors_from_a_file(running, tmp_path: Path) -> None:
    from embedsvc.cli import app

    settings, _, client = running
    client.create_collection("from-file", dimension=3)
    rows = [{"id": "x", "text": "east", "vector": [1, 0, 0]}, {"id": "y", "text": "", "vector": [0, 2, 0]},
            {"id": "z", "text": "up", "metadata": {"k": 1}, "vector": [0, 0, 0.5]}]
    good = tmp_path / "docs.jsonl"
    good.write_text("".join(json.dumps(r) + "\n" for r in rows))
    home = ["--home", str(settings.home)]
    written = CliRunner().invoke(app, [*home, "collections", "upsert", "from-file", str(good), "--batch", "2"])
    assert written.exit_code == 0, written.output
    assert "3 documents written (3 new, 0 changed, 0 unchanged)" in written.output
    assert client.search("from-file", vector=[0.1, 3, 0], k=1).hits[0].id == "y"  # the server sees them

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "w", "text": "fine", "vector": [1, 1, 1]}) + "\n"
                   + json.dumps({"id": "v", "text": "x", "vectr": [1, 2, 3]}) + "\n")
    refused = CliRunner().invoke(app, [*home, "collections", "upsert", "from-file", str(bad)])
    assert refused.exit_code == 1 and "bad.jsonl:2: vectr: Extra inputs are not permitted" in refused.output
    short = tmp_path / "short.jsonl"
    short.write_text(json.dumps({"id": "w", "text": "fine", "vector": [1, 1]}) + "\n")
    refused = CliRunner().invoke(app, [*home, "collections", "upsert", "from-file", str(short)])
    assert refused.exit_code == 1
    assert "the vector has 2 dimensions, the collection holds 3-dimensional" in refused.output
    assert client.get_collection("from-file").documents == 3  # nothing of either file was written
