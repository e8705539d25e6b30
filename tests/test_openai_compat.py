"""The OpenAI-compatible routes (/v1/embeddings, /v1/models) through the official ``openai``
client, pointed at the real server on loopback: its vectors equal our own client's, its
token counts the model tokenizer's, and its refusals are OpenAI's exceptions with our
messages. Clients that expect a refusal never retry (max_retries=0)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from embedsvc.client import Client
from embedsvc.encoders import DEFAULT_MODEL
from embedsvc.keys import Scope, create_key
from tests.conftest import REPO, RunningServer, make_settings

TEXTS = ["vitamin D deficiency", "bone density in older adults", "Mosquitoes carry the parasite."]
# Over the default model's window of 256 tokens: cut to it, as /v1/embed cuts it.
LONG = "the quick brown fox jumps over the lazy dog " * 60
LIMITS = {"max_embed_texts": 4, "max_query_chars": 1000, "max_body_bytes": 20_000}
REGISTERED = "tiny/v0001"
BROKEN = "broken/v0001"
REGISTERED_AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def openai_client(url: str, api_key: str = "unused", **options) -> OpenAI:
    return OpenAI(base_url=f"{url}/v1", api_key=api_key, max_retries=0, timeout=60, **options)


@pytest.fixture(scope="module")
def oai(server: RunningServer) -> Iterator[OpenAI]:
    with openai_client(server.url) as client:
        yield client


@pytest.fixture(scope="module")
def ours(server: RunningServer) -> Iterator[Client]:
    with Client(server.url, timeout=60) as client:
        yield client


def register_copy_of(model: Path, models_dir: Path) -> None:
    """A registered version REGISTERED of ``model`` (its files linked, a card beside them)."""
    folder = models_dir / REGISTERED
    folder.mkdir(parents=True)
    for item in model.iterdir():
        (folder / item.name).symlink_to(item, target_is_directory=item.is_dir())
    card = {"name": "tiny", "version": "v0001", "registered_at": REGISTERED_AT.strftime("%Y-%m-%dT%H:%M:%SZ")}
    (folder / "card.json").write_text(json.dumps(card))


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory, bundled_model: Path) -> Iterator[tuple[RunningServer, str]]:
    """A server with a read key, small limits, a registered version of the default model and
    one that cannot load (no weights, no card: a named model, not listed)."""
    settings = make_settings(tmp_path_factory.mktemp("openai-keyed"), bundled_model, preload_models=False,
                             **LIMITS)
    register_copy_of(bundled_model, settings.models_dir)
    (settings.models_dir / BROKEN).mkdir(parents=True)
    (settings.models_dir / BROKEN / "modules.json").write_text("[]")
    key = create_key(settings, Scope.read, "reader")
    with RunningServer(settings) as running:
        yield running, key


def vectors(response) -> np.ndarray:
    return np.array([item.embedding for item in response.data], dtype=np.float64)


def test_single_and_batched_inputs_equal_our_client(oai: OpenAI, ours: Client) -> None:
    expected = np.array(ours.embed(TEXTS).vectors)
    one = oai.embeddings.create(model=DEFAULT_MODEL, input=TEXTS[0])  # the client asks for base64 and decodes it
    assert (one.object, one.model) == ("list", DEFAULT_MODEL)
    assert [(d.object, d.index) for d in one.data] == [("embedding", 0)]
    np.testing.assert_allclose(vectors(one)[0], expected[0], atol=1e-6)
    batch = oai.embeddings.create(model=DEFAULT_MODEL, input=TEXTS, encoding_format="float")
    assert [d.index for d in batch.data] == [0, 1, 2]
    np.testing.assert_allclose(vectors(batch), expected, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(vectors(batch), axis=1), 1.0, atol=1e-5)


def test_base64_is_the_little_endian_float32_bytes(oai: OpenAI, ours: Client, server: RunningServer) -> None:
    expected = np.array(ours.embed(TEXTS).vectors, dtype=np.float32)
    # asked for explicitly, the openai client hands the strings over as they came
    raw = oai.embeddings.create(model=DEFAULT_MODEL, input=TEXTS, encoding_format="base64")
    assert all(isinstance(item.embedding, str) for item in raw.data)
    decoded = np.stack([np.frombuffer(base64.b64decode(item.embedding), dtype="<f4") for item in raw.data])
    assert decoded.shape == (3, 384)
    np.testing.assert_allclose(decoded, expected, atol=1e-6)
    # the bytes on the wire, in OpenAI's shape
    for fmt in ("base64", "float"):
        body = httpx.post(f"{server.url}/v1/embeddings", json={"model": DEFAULT_MODEL, "input": TEXTS[:2],
                                                               "encoding_format": fmt}, timeout=60).json()
        assert set(body) == {"object", "data", "model", "usage"} and body["object"] == "list"
        assert [set(d) for d in body["data"]] == [{"object", "index", "embedding"}] * 2
        first = body["data"][0]["embedding"]
        got = np.frombuffer(base64.b64decode(first), dtype="<f4") if fmt == "base64" else np.array(first)
        np.testing.assert_allclose(got, expected[0], atol=1e-6)


def test_usage_counts_the_tokens_the_model_sees(oai: OpenAI, bundled_model: Path) -> None:
    """Each text's tokens by the model's own tokenizer, with [CLS] and [SEP], cut to the
    model's window (max_seq_length): what the forward pass sees."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(bundled_model / "tokenizer.json"))
    tokenizer.no_truncation()  # the file pads and cuts at 128: count the tokens themselves
    tokenizer.no_padding()
    window = json.loads((bundled_model / "sentence_bert_config.json").read_text())["max_seq_length"]
    texts = [*TEXTS, LONG]
    counts = [min(len(tokenizer.encode(t).ids), window) for t in texts]
    assert len(tokenizer.encode(LONG).ids) > window and counts[-1] == window
    usage = oai.embeddings.create(model=DEFAULT_MODEL, input=texts).usage
    assert usage.prompt_tokens == usage.total_tokens == sum(counts)
    assert oai.embeddings.create(model=DEFAULT_MODEL, input=TEXTS[0]).usage.prompt_tokens == counts[0]


def test_dimensions_other_than_the_models_are_refused(oai: OpenAI, ours: Client) -> None:
    same = oai.embeddings.create(model=DEFAULT_MODEL, input=TEXTS[0], dimensions=384)
    np.testing.assert_allclose(vectors(same)[0], ours.embed(TEXTS[:1]).vectors[0], atol=1e-6)
    with pytest.raises(openai.BadRequestError, match="384-dimensional vectors and cannot shorten") as err:
        oai.embeddings.create(model=DEFAULT_MODEL, input=TEXTS[0], dimensions=128)
    assert (err.value.param, err.value.type) == ("dimensions", "invalid_request_error")


def test_a_wrong_model_name_is_model_not_found(oai: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError, match=f"'{DEFAULT_MODEL}'") as err:
        oai.embeddings.create(model="text-embedding-3-small", input="x")
    error = err.value
    assert (error.code, error.type, error.param) == ("model_not_found", "invalid_request_error", "model")
    assert "text-embedding-3-small" in error.message and set(error.body) == {"message", "type", "param", "code"}
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        oai.embeddings.create(model="/etc", input="x")  # a folder path is not a model name


def test_models_are_listed_by_name(oai: OpenAI) -> None:
    models = list(oai.models.list())
    assert DEFAULT_MODEL in [m.id for m in models]
    assert all(m.object == "model" and not m.id.startswith("/") for m in models)
    assert oai.models.retrieve(DEFAULT_MODEL).owned_by == "sentence-transformers"
    with pytest.raises(openai.NotFoundError, match="does not exist") as err:
        oai.models.retrieve("nope")
    assert err.value.code == "model_not_found"


@pytest.mark.parametrize("kwargs, param, message", [
    ({"input": [1, 2, 3]}, "input", "token arrays are not supported"),
    ({"input": [[1, 2], [3]]}, "input", "token arrays are not supported"),
    ({"input": []}, "input", "send at least one text"),
    ({"input": "x", "extra_body": {"temperature": 0}}, "temperature", "Extra inputs are not permitted"),
    ({"input": "x", "encoding_format": "hex"}, "encoding_format", "'float' or 'base64'"),
    ({"input": ["x", 5]}, "input", "valid string"),
])
def test_invalid_requests_are_400_in_openais_shape(oai: OpenAI, kwargs: dict, param: str, message: str) -> None:
    with pytest.raises(openai.BadRequestError, match=message) as err:
        oai.embeddings.create(model=DEFAULT_MODEL, **kwargs)
    assert (err.value.status_code, err.value.param, err.value.type) == (400, param, "invalid_request_error")


def test_bodies_that_are_not_json_and_other_routes(server: RunningServer) -> None:
    url = f"{server.url}/v1/embeddings"
    bad = httpx.post(url, content=b'{"model": ', headers={"content-type": "application/json"})
    assert bad.status_code == 400
    assert bad.json()["error"]["type"] == "invalid_request_error" and "not valid JSON" in bad.json()["error"]["message"]
    wrong_method = httpx.get(url)
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"
    assert set(wrong_method.json()["error"]) == {"message", "type", "param", "code"}
    # every other route keeps embedsvc's own shape
    ours = httpx.post(f"{server.url}/v1/embed", json={"texts": ["x"], "model": "/etc"}, timeout=60)
    assert ours.status_code == 404 and set(ours.json()["error"]) == {"code", "message"}


def test_async_client(server: RunningServer, ours: Client) -> None:
    async def run():
        async with AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60) as client:
            return await asyncio.gather(client.embeddings.create(model=DEFAULT_MODEL, input=TEXTS),
                                        client.embeddings.create(model=DEFAULT_MODEL, input=TEXTS[1]))
    batch, one = asyncio.run(run())
    expected = np.array(ours.embed(TEXTS).vectors)
    np.testing.assert_allclose(vectors(batch), expected, atol=1e-6)
    np.testing.assert_allclose(vectors(one)[0], expected[1], atol=1e-6)


def test_keys_are_checked_and_a_read_key_works(keyed: tuple[RunningServer, str]) -> None:
    server, key = keyed
    with openai_client(server.url, api_key="esk_not-a-key") as wrong:
        with pytest.raises(openai.AuthenticationError, match="not valid") as err:
            wrong.embeddings.create(model=DEFAULT_MODEL, input="x")
        assert (err.value.code, err.value.type) == ("invalid_api_key", "invalid_request_error")
        with pytest.raises(openai.AuthenticationError, match="needs an API key with the 'read' scope"):
            wrong.models.list(extra_headers={"Authorization": openai.Omit()})
    with openai_client(server.url, api_key=key) as reader, Client(server.url, api_key=key, timeout=60) as ours:
        models = {m.id: m for m in reader.models.list()}
        assert set(models) == {DEFAULT_MODEL, REGISTERED}
        assert models[REGISTERED].created == REGISTERED_AT.timestamp()
        assert reader.models.retrieve(REGISTERED).id == REGISTERED
        expected = np.array(ours.embed(TEXTS).vectors)
        np.testing.assert_allclose(vectors(reader.embeddings.create(model=DEFAULT_MODEL, input=TEXTS)),
                                   expected, atol=1e-6)
        # a registered version, by name: here the same weights, so the same vectors
        registered = reader.embeddings.create(model=REGISTERED, input=TEXTS)
        assert registered.model == REGISTERED
        np.testing.assert_allclose(vectors(registered), expected, atol=1e-6)


def test_limits_of_the_settings(keyed: tuple[RunningServer, str]) -> None:
    server, key = keyed
    with openai_client(server.url, api_key=key) as client:
        with pytest.raises(openai.BadRequestError, match="EMBEDSVC_MAX_EMBED_TEXTS"):
            client.embeddings.create(model=DEFAULT_MODEL, input=["x"] * 5)
        with pytest.raises(openai.BadRequestError, match=r"input\[1\]: 1001 characters.*EMBEDSVC_MAX_QUERY_CHARS"):
            client.embeddings.create(model=DEFAULT_MODEL, input=["x", "y" * 1001])
        with pytest.raises(openai.APIStatusError, match="EMBEDSVC_MAX_BODY_BYTES") as err:
            client.embeddings.create(model=DEFAULT_MODEL, input=["word " * 200] * 40)
        assert err.value.status_code == 413 and err.value.code == "too_large"
    # refused by its Content-Length before a route runs: in OpenAI's shape all the same
    big = httpx.post(f"{server.url}/v1/embeddings", content=b"x" * 20_001, headers={"content-type": "application/json"})
    assert big.status_code == 413 and big.json()["error"]["type"] == "invalid_request_error"


def test_a_model_that_cannot_load_is_a_503(keyed: tuple[RunningServer, str]) -> None:
    server, key = keyed
    with openai_client(server.url, api_key=key) as client:
        with pytest.raises(openai.InternalServerError, match="holds no model weights") as err:
            client.embeddings.create(model=BROKEN, input="x")
    assert (err.value.status_code, err.value.code, err.value.type) == (503, "model_unavailable", "server_error")
    assert err.value.response.headers["retry-after"] == "5"


def test_rate_limits_are_rate_limit_errors(tmp_path: Path, bundled_model: Path) -> None:
    settings = make_settings(tmp_path / "home", bundled_model, preload_models=False,
                             rate_limit_per_second=0.001, rate_limit_burst=1)
    with RunningServer(settings) as server, openai_client(server.url) as client:
        client.models.list()
        with pytest.raises(openai.RateLimitError, match="over its limit") as err:
            client.models.list()
        assert (err.value.code, err.value.type) == ("rate_limit_exceeded", "requests")
        assert int(err.value.response.headers["retry-after"]) >= 1


def test_the_readme_example_runs(keyed: tuple[RunningServer, str], bundled_model: Path) -> None:
    """examples/openai_embeddings.py, the README's "From an OpenAI client", as a user runs it."""
    server, key = keyed
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env.update(EMBEDSVC_URL=server.url, EMBEDSVC_API_KEY=key)
    done = subprocess.run([sys.executable, str(REPO / "examples" / "openai_embeddings.py")], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"models: ['{DEFAULT_MODEL}', '{REGISTERED}']"
    assert [line.split()[:2] for line in lines[1:3]] == [["0", "384"], ["1", "384"]]
    assert lines[3].startswith("tokens: ") and int(lines[3].split()[1]) > 4
