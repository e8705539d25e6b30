"""Live collections through the real server and our client: collections, writes, the fresh
segment, tombstones, filters in every mode, compaction jobs, and the limits of each."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import httpx
import pytest

from embedsvc.client import Client, Conflict, InvalidRequest, NotFound, PayloadTooLarge
from embedsvc.settings import Settings
from tests.conftest import RunningServer, make_settings, wait_for

TOPICS = ["vitamin D deficiency and bone density", "malaria parasites carried by mosquitoes",
          "protein folding inside cells", "heart disease and blood pressure",
          "sleep deprivation and memory", "antibiotic resistance in bacteria"]
_names = itertools.count()


def corpus(n: int = 12) -> list[dict]:
    """Documents with metadata: year 2010.., kind review/trial, a flag on even ones only."""
    return [{"id": f"doc-{i}", "title": f"Study {i}", "text": f"A study of {TOPICS[i % 6]}.",
             "metadata": {"year": 2010 + i, "kind": "review" if i % 3 == 0 else "trial",
                          **({"flag": True} if i % 2 == 0 else {})}} for i in range(n)]


@pytest.fixture(scope="module")
def live_settings(tmp_path_factory: pytest.TempPathFactory, bundled_model: Path) -> Settings:
    return make_settings(tmp_path_factory.mktemp("live-home"), bundled_model, lease_seconds=2,
                         max_batch_documents=50, max_document_bytes=20_000,
                         compact_fresh_vectors=10_000)


@pytest.fixture(scope="module")
def live_server(live_settings: Settings):
    with RunningServer(live_settings) as running:
        yield running


@pytest.fixture
def client(live_server: RunningServer):
    with Client(live_server.url, timeout=60) as c:
        yield c


def server_url(client: Client) -> str:
    return str(client._http.base_url).rstrip("/")


def new_collection(client: Client, **kwargs) -> str:
    name = f"live-{next(_names)}"
    client.create_collection(name, **kwargs)
    return name


def embedded(client: Client, name: str) -> None:
    wait_for(lambda: client.get_collection(name).pending == 0, timeout=120)


def compacted(client: Client, name: str):
    job = client.compact(name)
    return wait_for(lambda: (j := client.job(job.id)).finished and j, timeout=120)


def ids(result) -> list[str]:
    return [h.id for h in result.hits]


def test_collection_lifecycle(client: Client) -> None:
    info = client.create_collection("lifecycle", indexed_fields=["year", "kind"])
    assert (info.name, info.model, info.documents, info.index_version) == \
        ("lifecycle", "all-MiniLM-L6-v2", 0, None)
    assert info.indexed_fields == ["year", "kind"] and info.complete
    assert "lifecycle" in client.list_collections()
    with pytest.raises(Conflict, match="already exists"):
        client.create_collection("lifecycle")
    with pytest.raises(InvalidRequest, match="invalid collection name"):
        client.create_collection("../etc")
    for folder in ("/no/such/model", "/tmp", "../models"):  # the API reads no folder a client names
        with pytest.raises(InvalidRequest, match="not the default model nor a registered"):
            client.create_collection("other", model=folder)
    with pytest.raises(InvalidRequest, match="field name"):
        client.create_collection("other", indexed_fields=["a b"])
    assert "other" not in client.list_collections()
    client.delete_collection("lifecycle")
    assert "lifecycle" not in client.list_collections()
    with pytest.raises(NotFound):
        client.delete_collection("lifecycle")
    with pytest.raises(NotFound):
        client.search("lifecycle", "x")


def test_writes_answer_lexically_at_once_and_densely_once_embedded(client: Client) -> None:
    name = new_collection(client)
    result = client.upsert(name, corpus())
    assert (result.created, result.updated, result.unchanged) == (12, 0, 0)
    # acknowledged means committed: BM25 has it without waiting for anything
    assert ids(client.search(name, "mosquitoes", mode="lexical"))[:2] == ["doc-1", "doc-7"]
    embedded(client, name)
    info = client.get_collection(name)
    assert (info.documents, info.fresh_vectors, info.index_version) == (12, 12, None)
    dense = client.search(name, "insects that spread a tropical fever", mode="dense", k=2)
    assert set(ids(dense)) == {"doc-1", "doc-7"} and dense.hits[0].passage is not None
    auto = client.search(name, "mosquito borne parasites", k=3)
    assert (auto.mode, auto.fallback) == ("hybrid", None) and ids(auto)[0] in {"doc-1", "doc-7"}


def test_unchanged_text_is_not_embedded_again(client: Client) -> None:
    name = new_collection(client)
    docs = corpus(4)
    client.upsert(name, docs)
    embedded(client, name)
    again = client.upsert(name, [dict(docs[0], metadata={"year": 1999})])
    assert (again.unchanged, again.updated) == (1, 0)
    assert client.get_collection(name).pending == 0  # nothing queued to embed
    assert client.get_document(name, "doc-0").metadata == {"year": 1999}
    changed = client.upsert(name, [dict(docs[0], text="Quantum computing with qubits.")])
    assert (changed.unchanged, changed.updated) == (0, 1) and changed.seq > again.seq
    embedded(client, name)
    assert ids(client.search(name, "qubits and quantum computers", mode="dense", k=1)) == ["doc-0"]


@pytest.mark.parametrize("where", ["fresh", "index"])
def test_replaced_and_deleted_documents_leave_results_at_once(client: Client, where: str) -> None:
    name = new_collection(client)
    client.upsert(name, corpus())
    embedded(client, name)
    if where == "index":
        assert compacted(client, name).state == "done"
        assert client.get_collection(name).indexed_vectors == 12
    before = ids(client.search(name, "mosquitoes and malaria", mode="dense", k=12))
    assert before[:2] in (["doc-1", "doc-7"], ["doc-7", "doc-1"]) and len(before) == 12
    client.upsert(name, [{"id": "doc-1", "text": "Cooking pasta in salted water."}])
    client.delete(name, ids=["doc-7", "no-such-doc"])
    # at once, re-embedded or not: doc-7 and the old text of doc-1 are gone from every mode
    for mode in ("dense", "hybrid", "lexical"):
        hits = client.search(name, "mosquitoes and malaria", mode=mode, k=12, include_text=True).hits
        assert "doc-7" not in [h.id for h in hits], mode
        assert all("malaria" not in (h.text or "") + (h.passage.text if h.passage else "")
                   for h in hits if h.id == "doc-1"), mode
    dense = client.search(name, "mosquitoes and malaria", mode="dense", k=11)
    assert len(dense.hits) == 11 - ("doc-1" not in ids(dense))  # k come back while k are live
    assert all(h.score < 0.3 for h in dense.hits if h.id == "doc-1")
    embedded(client, name)
    assert len(client.search(name, "mosquitoes and malaria", mode="dense", k=11).hits) == 11
    info = client.get_collection(name)
    assert info.documents == 11
    assert info.deleted_vectors == (2 if where == "index" else 0)


def test_filters_apply_in_every_mode(client: Client) -> None:
    name = new_collection(client, indexed_fields=["year"])
    docs = corpus()
    client.upsert(name, docs)
    embedded(client, name)
    compacted(client, name)
    client.upsert(name, [dict(docs[0], id="doc-fresh", metadata={"year": 2030, "kind": "trial"})])
    embedded(client, name)  # now one document is fresh, twelve are in the index

    def expect(flt: dict, match) -> None:
        wanted = {d["id"] for d in docs + [dict(docs[0], id="doc-fresh", metadata={"year": 2030,
                                                                                    "kind": "trial"})]
                  if match(d["metadata"])}
        for mode in ("dense", "lexical", "hybrid", "auto"):
            got = ids(client.search(name, "study of", mode=mode, k=20, filter=flt))
            assert set(got) <= wanted, (flt, mode, got)
            if mode != "lexical":  # every document matches the query densely: all come back
                assert set(got) == wanted, (flt, mode, got)

    expect({"kind": "review"}, lambda m: m["kind"] == "review")
    expect({"year": {"$gte": 2015, "$lt": 2019}}, lambda m: 2015 <= m["year"] < 2019)
    expect({"year": {"$in": [2011, 2030]}}, lambda m: m["year"] in (2011, 2030))
    expect({"flag": True}, lambda m: m.get("flag") is True)
    expect({"flag": {"$ne": True}}, lambda m: m.get("flag") is not True)  # missing field matches
    expect({"kind": {"$nin": ["review"]}}, lambda m: m["kind"] != "review")
    expect({"$or": [{"kind": "review"}, {"year": {"$gt": 2020}}]},
           lambda m: m["kind"] == "review" or m["year"] > 2020)
    expect({"$and": [{"kind": "trial"}, {"year": {"$lte": 2012}}]},
           lambda m: m["kind"] == "trial" and m["year"] <= 2012)
    expect({"year": {"$gt": "2015"}}, lambda m: False)  # strings never compare with numbers
    expect({"nowhere": 1}, lambda m: False)
    exact = client.search(name, "study of", mode="dense", k=3, filter={"kind": "review"})
    assert len(exact.hits) == 3  # k come back whenever k match


@pytest.mark.parametrize("flt, message", [
    ({"year": {"$regex": "20.*"}}, r"unknown operator '\$regex'"),
    ({"year": {"$in": 2011}}, r"\$in takes a list"),
    ({"year": {"$gt": [1]}}, r"\$gt compares with a number or a string"),
    ({"year": None}, "expected a string, number or boolean"),
    ({"$or": {"a": 1}}, r"\$or takes a non-empty list"),
    ({"bad field": 1}, "field name"),
    ({"a": {"$and": []}}, r"unknown operator '\$and'"),
    ({"a": {"$gt": 10**20}}, "beyond 64-bit integers"),
])
def test_bad_filters_are_422_naming_the_problem(client: Client, flt: dict, message: str) -> None:
    name = new_collection(client)
    with pytest.raises(InvalidRequest, match=message) as err:
        client.search(name, "x", filter=flt)
    assert err.value.status == 422
    with pytest.raises(InvalidRequest, match=message):
        client.delete(name, filter=flt)


def test_deeply_nested_filter_is_refused(client: Client) -> None:
    name = new_collection(client)
    flt: dict = {"a": 1}
    for _ in range(10):
        flt = {"$and": [flt]}
    with pytest.raises(InvalidRequest, match="nested deeper than 8"):
        client.search(name, "x", filter=flt)


def test_delete_by_filter(client: Client) -> None:
    name = new_collection(client)
    client.upsert(name, corpus())
    result = client.delete(name, filter={"kind": "review"})
    assert result.deleted == 4 and result.missing == []
    remaining = ids(client.search(name, "study", mode="lexical", k=20))
    assert len(remaining) == 8 and not any(int(i.split("-")[1]) % 3 == 0 for i in remaining)


def test_compaction_job_keeps_every_answer(client: Client) -> None:
    name = new_collection(client)
    client.upsert(name, corpus())
    embedded(client, name)
    client.delete(name, ids=["doc-2"])
    before = client.search(name, "blood pressure", mode="dense", k=5)
    job = client.compact(name)
    assert job.kind == "compact" and job.state in ("queued", "running", "done")
    done = compacted(client, name)
    assert (done.state, done.result["status"], done.result["folded"]) == ("done", "compacted", 11)
    info = client.get_collection(name)
    assert (info.indexed_vectors, info.fresh_vectors, info.deleted_vectors) == (11, 0, 0)
    assert info.index_version == done.result["version"] and info.layout == "Flat"
    after = client.search(name, "blood pressure", mode="dense", k=5)
    assert ids(after) == ids(before)
    assert [round(h.score, 5) for h in after.hits] == [round(h.score, 5) for h in before.hits]
    assert any(j.id == done.id for j in client.jobs())
    with pytest.raises(NotFound, match="no job"):
        client.job("nope")
    nothing = compacted(client, name)
    assert nothing.result["status"] == "nothing_to_do"


def test_write_limits_name_the_setting(client: Client, live_server: RunningServer) -> None:
    name = new_collection(client)
    doc = {"id": "a", "text": "x"}
    with pytest.raises(PayloadTooLarge, match="EMBEDSVC_MAX_BATCH_DOCUMENTS"):
        client.upsert(name, [dict(doc, id=str(i)) for i in range(51)])
    with pytest.raises(PayloadTooLarge, match="EMBEDSVC_MAX_DOCUMENT_BYTES"):
        client.upsert(name, [dict(doc, text="word " * 5000)])
    with pytest.raises(PayloadTooLarge, match="EMBEDSVC_MAX_BATCH_DOCUMENTS"):
        client.delete(name, ids=[str(i) for i in range(51)])
    cases = [
        ([doc, doc], "also documents\\[0\\]"),
        ([{"id": "a", "text": "  ", "title": ""}], "has no text"),
        ([{"id": "", "text": "x"}], "id"),
        ([{"id": "a" * 1025, "text": "x"}], "id"),
        ([{"id": "a", "text": "x", "vector": [1]}], "vector"),
        ([{"id": 5, "text": "x"}], "id"),
    ]
    for documents, message in cases:
        with pytest.raises(InvalidRequest, match=message):
            client.upsert(name, documents)
    with pytest.raises(InvalidRequest, match="not both"):
        client.delete(name, ids=["a"], filter={"a": 1})
    url = f"{live_server.url}/v1/collections/{name}/documents"
    raw = httpx.put(url, content=b'{"documents": [{"id": "n", "text": "x", "metadata": {"v": NaN}}]}',
                    headers={"content-type": "application/json"})
    assert raw.status_code == 422 and "NaN" in raw.json()["error"]["message"]
    assert client.get_collection(name).documents == 0  # nothing refused was stored


def test_hostile_ids_and_text_round_trip(client: Client) -> None:
    name = new_collection(client)
    docs = [{"id": "../../etc/passwd", "text": "path"}, {"id": "id with spaces/and?query#frag",
                                                         "text": "punctuation"},
            {"id": "ünïcødé-雪", "text": "'; DROP TABLE documents; --"},
            {"id": "quote\"d", "title": "NEAR(a b) * OR", "text": "fts syntax \" ( )"}]
    client.upsert(name, docs)
    for doc in docs:
        assert client.get_document(name, doc["id"]).text == doc["text"]
    for query in ["'; DROP TABLE documents; --", 'NEAR(a b) * OR "', "\x00 \\"]:
        client.search(name, query, mode="lexical")  # never a 500
    client.upsert(name, [{"id": "big", "text": "x", "metadata": {"n": 10**30}}])
    assert client.get_document(name, "big").metadata == {"n": 10**30}
    assert [h.id for h in client.search(name, "x", filter={"n": {"$gt": 10**18}}).hits] == ["big"]
    # JSON can escape lone surrogates, which no UTF-8 text can hold (our client cannot send them)
    base = f"{server_url(client)}/v1/collections/{name}"
    for method, path, body in [
            ("PUT", "/documents", b'{"documents": [{"id": "\\ud800", "text": "x"}]}'),
            ("PUT", "/documents", b'{"documents": [{"id": "ok", "text": "x\\udfff"}]}'),
            ("PUT", "/documents", b'{"documents": [{"id": "ok", "text": "x", "metadata": {"a": "\\udfff"}}]}'),
            ("POST", "/search", b'{"query": "\\ud800 query", "mode": "lexical"}'),
            ("POST", "/search", b'{"query": "q", "filter": {"a": "\\ud800"}}')]:
        response = httpx.request(method, base + path, content=body,
                                 headers={"content-type": "application/json"})
        assert response.status_code == 422, (path, body, response.text)
        assert "unicode" in response.json()["error"]["message"].lower()
    assert client.delete(name, ids=[d["id"] for d in docs] + ["big"]).deleted == 5


def test_writes_wait_for_a_model_that_is_not_loaded(tmp_path: Path, bundled_model: Path) -> None:
    from embedsvc.collection import create_collection
    from embedsvc.encoders import resolve_model

    settings = make_settings(tmp_path / "home", bundled_model, lease_seconds=2)
    model = tmp_path / "model"
    shutil.copytree(bundled_model, model)
    spec = resolve_model(str(model), settings.models_dir)
    create_collection(settings.collections_dir, "c", spec.model_id, (), spec.weights_sha256)
    hidden = tmp_path / "hidden"
    model.rename(hidden)  # the model cannot be loaded while the server starts
    with RunningServer(settings) as server, Client(server.url, timeout=60) as client:
        client.upsert("c", corpus(6))
        result = client.search("c", "mosquitoes", k=3)
        assert (result.mode, result.fallback) == ("lexical", "no_index")
        assert ids(result)[0] == "doc-1"
        assert client.get_collection("c").pending == 6
        hidden.rename(model)  # back: the server loads it on its next try and embeds
        embedded(client, "c")
        assert client.get_collection("c").fresh_vectors == 6
        assert client.search("c", "insects that spread a tropical fever", k=1).mode == "hybrid"


def test_openapi_describes_every_response(live_server: RunningServer) -> None:
    schema = httpx.get(f"{live_server.url}/openapi.json").json()
    for path, methods in schema["paths"].items():
        for method, spec in methods.items():
            ok = [code for code in spec["responses"] if code.startswith("2")]
            assert ok, (method, path)
            for code in ok:
                content = spec["responses"][code].get("content", {}).get("application/json", {})
                assert content.get("schema"), (method, path, code)
    assert {"/v1/collections/{name}/documents", "/v1/collections/{name}/documents/delete",
            "/v1/collections/{name}/compact", "/v1/jobs", "/v1/jobs/{job_id}"} <= set(schema["paths"])
    json.dumps(schema)


def test_the_server_compacts_by_itself(tmp_path: Path, bundled_model: Path) -> None:
    settings = make_settings(tmp_path / "home", bundled_model, lease_seconds=2,
                             compact_fresh_vectors=6, compact_deleted_ratio=0.3)
    with RunningServer(settings) as server, Client(server.url, timeout=60) as client:
        client.create_collection("c")
        client.upsert("c", corpus(8))
        info = wait_for(lambda: (i := client.get_collection("c")).index_version == 1 and i)
        assert wait_for(lambda: client.get_collection("c").fresh_vectors == 0)
        assert info.last_compaction is not None and info.leader is not None
        client.delete("c", ids=["doc-0", "doc-1", "doc-2"])  # 3 of 8: past the deleted share
        info = wait_for(lambda: (i := client.get_collection("c")).index_version == 2 and i)
        assert (info.indexed_vectors, info.deleted_vectors) == (5, 0)
        assert [j.state for j in client.jobs()] == ["done", "done"]
