"""The LangChain integration (embedsvc.integrations.langchain) against the real server:
LangChain's own standard suites (langchain-tests) for the vector store and the embeddings,
then our checks: MMR, filters, the server's model as the store's embedding, JSON metadata,
batching, and the README's example run as a script.

The standard vector store suite uses its fake embeddings (6 dimensions, deterministic), so
those collections hold vectors made elsewhere; the server's own model is the bundled one.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("langchain_tests")

from langchain_core.documents import Document  # noqa: E402
from langchain_core.embeddings import DeterministicFakeEmbedding, Embeddings  # noqa: E402
from langchain_tests.integration_tests import (  # noqa: E402
    EmbeddingsIntegrationTests,
    VectorStoreIntegrationTests,
)

from embedsvc.client import Client  # noqa: E402
from embedsvc.integrations.langchain import EmbedsvcEmbeddings, EmbedsvcVectorStore  # noqa: E402
from tests.conftest import REPO, RunningServer, make_settings, wait_for  # noqa: E402


@pytest.fixture(scope="module")
def lc_server(tmp_path_factory: pytest.TempPathFactory, bundled_model: Path) -> Iterator[RunningServer]:
    """The real server on a fresh home (the bundled model, nothing downloaded). A short writer
    lease: the server takes the lease of a new collection, and starts embedding its documents, at
    the lease loop's next tick (every lease_seconds / 3)."""
    settings = make_settings(tmp_path_factory.mktemp("langchain-home"), bundled_model, lease_seconds=1.5)
    with RunningServer(settings) as server:
        yield server


@pytest.fixture(scope="module")
def client(lc_server: RunningServer) -> Iterator[Client]:
    with Client(lc_server.url) as client:
        yield client


@pytest.fixture(scope="module")
def model_ready(client: Client) -> None:
    """The default model loaded (the server loads it in the background at start-up)."""
    wait_for(lambda: client.readyz().status in ("ready", "degraded"), timeout=180)


def fresh_name() -> str:
    return f"lc-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def collection(client: Client) -> Iterator[str]:
    """A unique collection name; the collection, if a test made it, is deleted afterwards."""
    name = fresh_name()
    yield name
    if name in client.list_collections():
        client.delete_collection(name)


# --- LangChain's standard suites --------------------------------------------------------------
class TestStandardVectorStore(VectorStoreIntegrationTests):
    """Every test gets an empty collection of its own (made with the suite's dimension), deleted
    afterwards; sync methods go through Client, async ones through AsyncClient."""

    @pytest.fixture
    def vectorstore(self, lc_server: RunningServer, client: Client,
                    collection: str) -> Iterator[EmbedsvcVectorStore]:
        embedding = self.get_embeddings()
        client.create_collection(collection, dimension=len(embedding.embed_query("size")))
        with EmbedsvcVectorStore(collection, embedding, url=lc_server.url) as store:
            yield store


class TestStandardVectorStoreWithTheServersModel(VectorStoreIntegrationTests):
    """The same suite with ``embedding=None``: collections of the server's default model, which
    embeds the documents (add_texts waits for it) and the queries."""

    @pytest.fixture
    def vectorstore(self, lc_server: RunningServer, client: Client, collection: str,
                    model_ready: None) -> Iterator[EmbedsvcVectorStore]:
        client.create_collection(collection)
        with EmbedsvcVectorStore(collection, url=lc_server.url) as store:
            yield store


class TestStandardEmbeddings(EmbeddingsIntegrationTests):
    @pytest.fixture(autouse=True)
    def _server(self, lc_server: RunningServer) -> None:
        self.url = lc_server.url

    @property
    def embeddings_class(self) -> type[EmbedsvcEmbeddings]:
        return EmbedsvcEmbeddings

    @property
    def embedding_model_params(self) -> dict:
        return {"url": self.url, "model": "all-MiniLM-L6-v2"}

    @pytest.fixture
    def model(self) -> Iterator[EmbedsvcEmbeddings]:
        """The suite's fixture, closing the connections it opened."""
        with self.embeddings_class(**self.embedding_model_params) as embeddings:
            yield embeddings


# --- our checks -------------------------------------------------------------------------------
class TableEmbeddings(Embeddings):
    """Fixed vectors by text: a test decides which documents are near each other."""

    def __init__(self, table: dict[str, list[float]]):
        self.table = table

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [self.table[t] for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return self.table[text]


TABLE = {
    "query": [1.0, 0.0, 0.0],
    "apple pie": [0.9, 0.1, 0.0],
    "apple tart": [0.9, 0.1, 0.01],  # a near duplicate of "apple pie"
    "pear cake": [0.7, 0.0, 0.7],  # less similar to the query, unlike the two above
    "granite": [0.0, 0.0, 1.0],
}


@pytest.fixture
def table_store(lc_server: RunningServer, collection: str) -> Iterator[EmbedsvcVectorStore]:
    with EmbedsvcVectorStore(collection, TableEmbeddings(TABLE), url=lc_server.url) as store:
        store.add_texts(["apple pie", "apple tart", "pear cake", "granite"],
                        ids=["pie", "tart", "pear", "rock"])
        yield store


def test_mmr_trades_similarity_for_diversity(table_store: EmbedsvcVectorStore) -> None:
    assert [d.id for d in table_store.similarity_search("query", k=2)] == ["pie", "tart"]
    diverse = table_store.max_marginal_relevance_search("query", k=2, fetch_k=4, lambda_mult=0.5)
    assert [d.id for d in diverse] == ["pie", "pear"]
    by_vector = table_store.max_marginal_relevance_search_by_vector(TABLE["query"], k=2, fetch_k=4)
    assert [d.id for d in by_vector] == ["pie", "pear"]
    plain = table_store.max_marginal_relevance_search("query", k=2, fetch_k=4, lambda_mult=1.0)
    assert [d.id for d in plain] == ["pie", "tart"]
    mmr = table_store.as_retriever(search_type="mmr", search_kwargs={"k": 2, "fetch_k": 4})
    assert [d.id for d in mmr.invoke("query")] == ["pie", "pear"]


async def test_mmr_async(table_store: EmbedsvcVectorStore) -> None:
    diverse = await table_store.amax_marginal_relevance_search("query", k=2, fetch_k=4)
    assert [d.id for d in diverse] == ["pie", "pear"]
    by_vector = await table_store.amax_marginal_relevance_search_by_vector(TABLE["query"], k=2, fetch_k=4)
    assert [d.id for d in by_vector] == ["pie", "pear"]


def test_scores_are_cosines_and_relevance_is_in_0_1(table_store: EmbedsvcVectorStore) -> None:
    (doc, score), *_ = table_store.similarity_search_with_score("apple pie", k=4)
    assert doc.id == "pie" and score == pytest.approx(1.0, abs=1e-5)
    scored = table_store.similarity_search_with_relevance_scores("query", k=4)
    assert [d.id for d, _ in scored] == ["pie", "tart", "pear", "rock"]
    cosines = [0.9 / math.hypot(0.9, 0.1), 0.7 / math.hypot(0.7, 0.7), 0.0]
    assert [r for _, r in scored][::2] == pytest.approx([(1 + cosines[0]) / 2, (1 + cosines[1]) / 2], abs=1e-4)
    assert scored[-1][1] == pytest.approx(0.5, abs=1e-4)  # orthogonal: cosine 0
    threshold = table_store.as_retriever(search_type="similarity_score_threshold",
                                         search_kwargs={"score_threshold": 0.9, "k": 4})
    assert [d.id for d in threshold.invoke("query")] == ["pie", "tart"]


@pytest.fixture
def filtered_store(lc_server: RunningServer, collection: str) -> Iterator[EmbedsvcVectorStore]:
    embedding = DeterministicFakeEmbedding(size=8)
    with EmbedsvcVectorStore(collection, embedding, url=lc_server.url, indexed_fields=["year"]) as store:
        store.add_documents([
            Document(id=f"d{i}", page_content=f"document number {i}",
                     metadata={"year": 2015 + i, "kind": "trial" if i % 2 else "review", "tags": ["x"]})
            for i in range(8)])
        yield store


def test_filters_restrict_every_search(filtered_store: EmbedsvcVectorStore) -> None:
    store = filtered_store
    trials = store.similarity_search("document number 3", k=8, filter={"kind": "trial"})
    assert sorted(d.id for d in trials) == ["d1", "d3", "d5", "d7"] and trials[0].id == "d3"
    assert trials[0].metadata == {"year": 2018, "kind": "trial", "tags": ["x"]}
    recent = store.similarity_search("document", k=8, filter={"year": {"$gte": 2020}, "kind": {"$in": ["review"]}})
    assert sorted(d.id for d in recent) == ["d6"]
    either = store.similarity_search("document", k=8, filter={"$or": [{"year": 2015}, {"year": {"$gt": 2021}}]})
    assert sorted(d.id for d in either) == ["d0", "d7"]
    assert [d.id for d in store.max_marginal_relevance_search("document", k=2, filter={"year": 2016})] == ["d1"]
    retriever = store.as_retriever(search_kwargs={"k": 3, "filter": {"kind": "review"}})
    assert {d.metadata["kind"] for d in retriever.invoke("document")} == {"review"}
    assert store.delete(filter={"kind": "review"}) is True
    assert sorted(d.id for d in store.similarity_search("document", k=8)) == ["d1", "d3", "d5", "d7"]


async def test_filters_async(filtered_store: EmbedsvcVectorStore) -> None:
    trials = await filtered_store.asimilarity_search("document number 3", k=8, filter={"kind": "trial"})
    assert sorted(d.id for d in trials) == ["d1", "d3", "d5", "d7"]
    assert await filtered_store.adelete(filter={"year": {"$lt": 2020}}) is True
    assert sorted(d.id for d in await filtered_store.asimilarity_search("document", k=8)) == ["d5", "d6", "d7"]


TEXTS = {
    "bone": "Low vitamin D levels are associated with reduced bone mineral density.",
    "malaria": "The malaria parasite is transmitted by the bite of infected mosquitoes.",
    "heart": "Statins lower cholesterol and the risk of heart attacks.",
    "fracture": "Calcium and vitamin D supplements and the risk of hip fractures in older women.",
}


def test_the_servers_model_embeds_for_a_store_without_embedding(
        lc_server: RunningServer, client: Client, collection: str, model_ready: None) -> None:
    client.create_collection(collection)  # the server's default model
    with EmbedsvcVectorStore(collection, url=lc_server.url) as store:
        ids = store.add_texts(list(TEXTS.values()), [{"topic": t} for t in TEXTS], ids=list(TEXTS))
        assert ids == list(TEXTS) and client.get_collection(collection).pending == 0
        scored = store.similarity_search_with_score("mosquito-borne disease", k=2)
        assert scored[0][0].id == "malaria" and 0.3 < scored[0][1] <= 1.0  # a cosine
        assert scored[0][0].page_content == TEXTS["malaria"] and scored[0][0].metadata == {"topic": "malaria"}
        bones = store.similarity_search("vitamin D and bones", k=2, filter={"topic": {"$ne": "fracture"}})
        assert bones[0].id == "bone" and "fracture" not in [d.id for d in bones]
        hybrid = store.similarity_search("hip fractures", k=1, mode="hybrid")
        assert hybrid[0].id == "fracture"
        mmr = store.max_marginal_relevance_search("vitamin D", k=2, fetch_k=4, lambda_mult=0.3)
        assert len(mmr) == 2 and mmr[0].id in ("bone", "fracture")
        vector = client.embed(["vitamin D and bones"]).vectors[0]
        assert store.similarity_search_by_vector(vector, k=1)[0].id == "bone"
        relevance = store.similarity_search_with_relevance_scores("statins", k=1)
        assert relevance[0][0].id == "heart" and 0.5 < relevance[0][1] <= 1.0
        assert [d.id for d in store.get_by_ids(["heart", "nope", "bone"])] == ["heart", "bone"]
        with pytest.raises(ValueError, match="embeds its documents with model"):
            with EmbedsvcVectorStore(collection, DeterministicFakeEmbedding(size=384), url=lc_server.url) as other:
                other.similarity_search("anything")


async def test_the_servers_model_async(lc_server: RunningServer, collection: str, model_ready: None) -> None:
    store = await EmbedsvcVectorStore.afrom_texts(list(TEXTS.values()), None, [{"topic": t} for t in TEXTS],
                                                  ids=list(TEXTS), collection_name=collection, url=lc_server.url)
    found = await store.asimilarity_search("cholesterol drugs", k=1)
    assert found[0].id == "heart"
    assert [d.id for d in await store.aget_by_ids(["malaria"])] == ["malaria"]
    mmr = await store.amax_marginal_relevance_search("vitamin D", k=2, fetch_k=4)
    assert len(mmr) == 2
    store.close()


def test_a_store_without_embedding_needs_a_collection_with_a_model(
        lc_server: RunningServer, client: Client, collection: str) -> None:
    client.create_collection(collection, dimension=4)
    with EmbedsvcVectorStore(collection, url=lc_server.url) as store:
        with pytest.raises(ValueError, match="has no model"):
            store.add_texts(["text"])


def test_metadata_must_be_json(lc_server: RunningServer, client: Client, collection: str) -> None:
    with EmbedsvcVectorStore(collection, DeterministicFakeEmbedding(size=4), url=lc_server.url) as store:
        with pytest.raises(ValueError, match="metadata of document 'a' is not JSON: Out of range float"):
            store.add_texts(["x"], [{"score": float("nan")}], ids=["a"])
        with pytest.raises(ValueError, match="metadata of document 'b' is not JSON: .*not JSON serializable"):
            store.add_texts(["x"], [{"when": object()}], ids=["b"])
        with pytest.raises(ValueError, match="ids given more than once"):
            store.add_texts(["x", "y"], ids=["c", "c"])
        assert collection not in client.list_collections()  # nothing was sent


def test_writes_and_embeddings_go_in_batches(lc_server: RunningServer, client: Client, collection: str) -> None:
    texts = [f"sentence number {i}" for i in range(7)]
    with EmbedsvcEmbeddings(lc_server.url, batch_size=3) as small:
        batched, whole = np.array(small.embed_documents(texts)), np.array(client.embed(texts).vectors)
        assert batched.shape == whole.shape and np.allclose(batched, whole, atol=1e-5)
        assert small.embed_documents([]) == []
    secret = EmbedsvcEmbeddings(lc_server.url, api_key="esk_secret")
    assert "esk_secret" not in repr(secret) and "esk_secret" not in repr(EmbedsvcVectorStore(api_key="esk_secret"))
    with EmbedsvcVectorStore(collection, DeterministicFakeEmbedding(size=4), url=lc_server.url,
                             batch_size=2) as store:
        ids = store.add_texts(texts)
        assert len(set(ids)) == 7 and all(uuid.UUID(i) for i in ids)
        assert client.get_collection(collection).documents == 7
        assert store.delete(ids[:5]) is True and client.get_collection(collection).documents == 2


def test_the_readme_example_runs(lc_server: RunningServer, client: Client, tmp_path: Path) -> None:
    env = {**os.environ, "EMBEDSVC_URL": lc_server.url}
    env.pop("EMBEDSVC_API_KEY", None)
    try:
        run = subprocess.run([sys.executable, str(REPO / "examples" / "langchain_store.py")], env=env,
                             cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr
        lines = run.stdout.splitlines()
        assert lines[0] == "trials about vitamin D and bones:"
        assert lines[1].split()[1] == "n3" and "'kind': 'trial'" in lines[1]
        assert lines[2].split()[1] == "n4"
        assert lines[3] == "retrieved: n2 Mosquitoes carry the malaria parasite from one person to another."
        assert client.get_collection("langchain-notes").documents == 4
    finally:
        if "langchain-notes" in client.list_collections():
            client.delete_collection("langchain-notes")
    assert list(tmp_path.iterdir()) == []  # the example writes nothing


async def test_given_only_a_blocking_client_coroutines_run_it_in_a_thread(
        lc_server: RunningServer, client: Client, collection: str) -> None:
    store = EmbedsvcVectorStore(collection, DeterministicFakeEmbedding(size=4), client=client)
    assert await store.aadd_texts(["one", "two"], ids=["1", "2"]) == ["1", "2"]
    assert [d.id for d in await store.asimilarity_search("two", k=1)] == ["2"]
    assert [d.id for d in await store.aget_by_ids(["1"])] == ["1"]
    store.close()  # leaves the client given open
    embeddings = EmbedsvcEmbeddings(client=client)
    assert len(await embeddings.aembed_query("text")) == 384
    assert client.get_collection(collection).documents == 2
