"""The HTTP API through our own client, against the real uvicorn server on loopback."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import httpx
import pytest

from embedsvc.client import (
    AsyncClient,
    Client,
    Conflict,
    ConnectionFailed,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
)
from embedsvc.settings import Settings
from indexing.job import BuildJob, BuildOptions
from tests.conftest import RunningServer, free_port, make_settings, wait_for, write_jsonl


@pytest.fixture(scope="module")
def client(server: RunningServer):
    with Client(server.url, timeout=60) as c:
        wait_for(lambda: c.search("mini", "warm up", k=1).mode == "hybrid")
        yield c


def test_health_and_collections(client: Client, mini_beir: Path) -> None:
    assert client.healthz().status == "ok"
    assert client.readyz().status == "ready"
    assert client.list_collections() == ["lexonly", "mini"]
    info = client.get_collection("mini")
    assert info.documents == len((mini_beir / "corpus.jsonl").read_text().splitlines())
    assert info.model == "all-MiniLM-L6-v2"
    assert info.index_version == 1 and info.index.layout == "Flat"


def judged_queries(mini_beir: Path) -> list[tuple[str, set[str]]]:
    rows = [r.split("\t") for r in (mini_beir / "qrels" / "test.tsv").read_text().splitlines()[1:]]
    queries = [json.loads(q) for q in (mini_beir / "queries.jsonl").read_text().splitlines()]
    return [(q["text"], {d for qid, d, _ in rows if qid == q["_id"]}) for q in queries]


@pytest.mark.parametrize("mode", ["dense", "lexical", "hybrid", "auto"])
def test_each_mode_finds_judged_documents(client: Client, mini_beir: Path, mode: str) -> None:
    found = 0
    for query, relevant in judged_queries(mini_beir):
        result = client.search("mini", query, k=10, mode=mode, include_text=True)
        assert result.mode == ("hybrid" if mode == "auto" else mode) and result.fallback is None
        assert len(result.hits) == 10 and result.hits[0].text
        assert [h.score for h in result.hits] == sorted((h.score for h in result.hits), reverse=True)
        found += bool(relevant & {h.id for h in result.hits})
    assert found >= 0.7 * len(judged_queries(mini_beir))


def test_no_index_falls_back_to_bm25_and_says_so(client: Client, mini_beir: Path) -> None:
    query, relevant = judged_queries(mini_beir)[1]
    result = client.search("lexonly", query, k=10)
    assert (result.mode, result.fallback) == ("lexical", "no_index")
    assert relevant & {h.id for h in result.hits}
    with pytest.raises(Conflict, match="no dense index"):
        client.search("lexonly", query, mode="dense")


def test_document_and_metadata(client: Client, mini_beir: Path) -> None:
    doc_id = json.loads((mini_beir / "corpus.jsonl").read_text().splitlines()[0])["_id"]
    doc = client.get_document("mini", doc_id)
    assert doc.id == doc_id and doc.text
    with pytest.raises(NotFound, match="no document 'nope/../x'"):
        client.get_document("mini", "nope/../x")


def test_embed_matches_dimension_and_is_normalised(client: Client) -> None:
    out = client.embed(["vitamin D deficiency", "bone density"])
    assert out.dim == 384 and len(out.vectors) == 2
    assert abs(sum(v * v for v in out.vectors[0]) - 1) < 1e-4
    with pytest.raises(NotFound, match="unknown model"):
        client.embed(["x"], model="/etc")


def test_model_mismatch_is_refused(client: Client) -> None:
    with pytest.raises(Conflict, match="never mixed"):
        client.search("mini", "x", mode="dense", model="some-other-model")


@pytest.mark.parametrize("kwargs, message", [
    ({"query": ""}, "query"),
    ({"query": "   "}, "only whitespace"),
    ({"query": "x", "k": 0}, "k"),
    ({"query": "x", "k": 1001}, "over the limit of 1000"),
    ({"query": "x" * 4097}, "limit is 4096"),
    ({"query": "x", "mode": "fuzzy"}, "mode"),
])
def test_bad_search_requests_are_4xx_with_a_reason(client: Client, kwargs: dict,
                                                   message: str) -> None:
    with pytest.raises(InvalidRequest, match=message) as err:
        client.search("mini", **kwargs)
    assert err.value.status == 422


def test_unknown_and_invalid_collection_names(client: Client) -> None:
    with pytest.raises(NotFound, match="does not exist"):
        client.search("nope", "x")
    with pytest.raises(InvalidRequest, match="invalid collection name"):
        client.get_collection(".hidden")


def test_raw_bad_bodies(server: RunningServer) -> None:
    url = f"{server.url}/v1/collections/mini/search"
    headers = {"content-type": "application/json"}
    cases = [
        (b'{"query": "x"', 400, "not valid JSON"),
        (b'{"query": "\xff\xfe"}', 400, "UTF-8"),
        (b'["query"]', 422, "body"),
        (b'{"query": "x", "extra": 1}', 422, "extra"),
        (b"x" * 16_000_001, 413, "over 16000000 bytes"),
    ]
    for body, status, message in cases:
        response = httpx.post(url, content=body, headers=headers)
        assert response.status_code == status, body[:30]
        assert message in response.json()["error"]["message"]


def test_embed_limits(client: Client) -> None:
    with pytest.raises(InvalidRequest, match="at most 256"):
        client.embed(["x"] * 257)
    with pytest.raises(InvalidRequest, match="texts"):
        client.embed([])
    with pytest.raises(PayloadTooLarge):
        client.embed(["word " * 3_300_000])


def test_async_client_gives_the_same_answers(client: Client, server: RunningServer) -> None:
    async def run() -> tuple:
        async with AsyncClient(server.url, timeout=60) as aclient:
            return await asyncio.gather(aclient.search("mini", "malaria", k=5),
                                        aclient.list_collections())

    result, names = asyncio.run(run())
    assert names == client.list_collections()
    assert [h.id for h in result.hits] == [h.id for h in client.search("mini", "malaria", k=5).hits]


def test_unreachable_server_is_a_clear_error() -> None:
    with Client(f"http://127.0.0.1:{free_port()}", timeout=2) as dead:
        with pytest.raises(ConnectionFailed):
            dead.healthz()


def test_missing_model_falls_back_and_readyz_says_degraded(
        tmp_path: Path, bundled_model: Path, mini_beir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from embedsvc import encoders

    settings: Settings = make_settings(tmp_path / "home", bundled_model)
    local_model = tmp_path / "my-model"
    shutil.copytree(bundled_model, local_model)
    rows = [json.loads(x) for x in (mini_beir / "corpus.jsonl").read_text().splitlines()[:20]]
    BuildJob(settings, "c", write_jsonl(tmp_path / "c.jsonl", rows),
             BuildOptions(model=str(local_model))).run()
    shutil.rmtree(local_model)  # the model the index was built with is gone
    # A new server process starts with no model in memory.
    monkeypatch.setattr(encoders, "_by_name", {})
    monkeypatch.setattr(encoders, "_by_path", {})
    with RunningServer(settings) as running, Client(running.url) as c:
        wait_for(lambda: c._http.get("/readyz").json()["models"].get(str(local_model.resolve()))
                 == "failed")
        result = c.search("c", rows[0]["title"], k=3)
        assert (result.mode, result.fallback) == ("lexical", "model_unavailable")
        assert result.hits[0].id == rows[0]["_id"]
        ready = c._http.get("/readyz")  # degraded: still serving (BM25), so still 200
        assert ready.status_code == 200 and ready.json()["status"] == "degraded"
        metrics = c._http.get("/metrics").text
        assert 'fallback="model_unavailable"' in metrics


def local_search(settings: Settings, name: str, query: str, k: int) -> list:
    """Dense search in process, for tests that need no server."""
    from embedsvc.service import local_searcher

    return local_searcher(settings, name).search(query, k, "dense").hits


def test_client_module_loads_no_server_side_code() -> None:
    import subprocess
    import sys

    code = ("import sys, embedsvc.client; heavy = {'torch', 'faiss', 'fastapi', 'sentence_transformers',"
            " 'embedsvc.search', 'embedsvc.store'} & set(sys.modules); print(sorted(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
