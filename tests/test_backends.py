"""Encoder backends: what each makes agrees with torch fp32, exports are cached and checked,
and a server never mixes vectors of backends that are not interchangeable."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from embedsvc.backends import INTERCHANGEABLE_COSINE
from embedsvc.cli import app
from embedsvc.client import Client, Conflict
from embedsvc.encoders import DEFAULT_MODEL, Encoder, ModelError, load_encoder, load_sentence_transformer, resolve_model
from embedsvc.onnx_export import export_dir
from embedsvc.passages import embed_passages, split_passages
from tests.conftest import SCIFACT, RunningServer, make_settings, wait_for

# Mean cosine to torch fp32 each backend must keep on SciFact documents (measured: bf16
# 0.9999, onnx 1.0000, onnx-int8 0.99; see benchmarks/RESULTS.md).
AGREEMENT = {"torch-bf16": 0.999, "onnx": 0.99999, "onnx-int8": 0.99}


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory, bundled_model: Path) -> Path:
    """One models folder for the module, so the ONNX export happens once."""
    return make_settings(tmp_path_factory.mktemp("backends"), bundled_model).models_dir


@pytest.fixture(scope="module")
def texts() -> list[str]:
    with gzip.open(SCIFACT / "corpus.jsonl.gz", "rt", encoding="utf-8") as fh:
        rows = [json.loads(next(fh)) for _ in range(24)]
    return [f"{r['title']} {r['text']}" for r in rows] + ["p53", "  what causes  scurvy? "]


@pytest.fixture(scope="module")
def reference(models_dir: Path, texts: list[str]) -> np.ndarray:
    return load_encoder(DEFAULT_MODEL, models_dir).encode(texts)


def test_torch_encoder_equals_sentence_transformers(models_dir: Path, texts: list[str],
                                                     reference: np.ndarray) -> None:
    model = load_sentence_transformer(resolve_model(DEFAULT_MODEL, models_dir).path)
    expected = model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
    assert np.abs(reference - expected).max() < 1e-5
    assert np.allclose(np.linalg.norm(reference, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("backend", sorted(AGREEMENT))
def test_backend_agrees_with_torch(backend: str, models_dir: Path, texts: list[str],
                                   reference: np.ndarray) -> None:
    vectors = load_encoder(DEFAULT_MODEL, models_dir, backend=backend).encode(texts)
    assert vectors.shape == reference.shape and vectors.dtype == np.float32
    cosines = (vectors * reference).sum(axis=1)
    assert cosines.mean() >= AGREEMENT[backend], (backend, cosines.mean(), cosines.min())
    # each text's nearest neighbour among the others is the one torch finds
    assert (np.argsort(-(vectors @ reference.T), axis=1)[:, 0] == np.arange(len(texts))).all()


@pytest.mark.parametrize("backend", ["torch", "onnx-int8"])
def test_encoding_order_and_batches_do_not_change_vectors(backend: str, models_dir: Path,
                                                          texts: list[str]) -> None:
    """A text's vector is its own: the same alone, in any order, beside any other texts
    (int8 included, whose activation scale would otherwise be shared by a pass)."""
    encoder = load_encoder(DEFAULT_MODEL, models_dir, backend=backend)
    together = encoder.encode(texts)
    single = np.stack([encoder.encode([t])[0] for t in texts[::-1]])[::-1]
    assert np.abs(single - together).max() < 1e-5


def test_passages_reuse_the_splitters_token_ids(models_dir: Path, texts: list[str]) -> None:
    encoder = load_encoder(DEFAULT_MODEL, models_dir)
    spans, ids = split_passages(encoder.tokenizer, texts, encoder.max_tokens)
    assert any(len(s) > 1 for s in spans)  # SciFact abstracts are longer than one window
    assert all(len(w) <= encoder.max_tokens for doc in ids for w in doc)
    _, vectors = embed_passages(encoder, texts)
    passages = [t[a:b] for t, doc in zip(texts, spans, strict=True) for a, b in doc]
    retokenised = encoder.encode(passages)
    # the same windows: a passage's text tokenises to its ids again, unless the window
    # starts inside a word (its first token a WordPiece continuation, which the ids keep)
    cosines = (vectors * retokenised).sum(axis=1)
    inside = np.array([encoder.tokenizer.convert_ids_to_tokens(w[0]).startswith("##")
                       for doc in ids for w in doc])
    assert inside.any() and cosines[~inside].min() > 0.9999
    assert cosines.mean() > 0.99


def test_sorting_by_length_cuts_padding(models_dir: Path, texts: list[str]) -> None:
    encoder = Encoder(resolve_model(DEFAULT_MODEL, models_dir), batch_size=4)
    lengths = [len(x) for x in encoder.token_ids(texts)]

    def padding(order: list[int]) -> int:
        batches = [[lengths[i] for i in order[at:at + 4]] for at in range(0, len(order), 4)]
        return sum(max(b) * len(b) - sum(b) for b in batches)

    encoder.encode(texts)
    assert encoder.padded <= padding(sorted(range(len(texts)), key=lambda i: -lengths[i]))
    assert encoder.padded < padding(list(range(len(texts)))) / 2  # in the order given
    # short texts are not padded to a long one's length: they go in a pass of their own
    encoder.padded = 0
    vectors = encoder.encode(["p53", texts[0], "p53", "scurvy"])
    assert encoder.padded == 2  # each "p53" (2 tokens) padded to "scurvy" (3), not to the abstract
    np.testing.assert_allclose(vectors[1], encoder.encode([texts[0]])[0], atol=1e-6)


def test_export_is_made_once_and_checked(models_dir: Path) -> None:
    spec = resolve_model(DEFAULT_MODEL, models_dir)
    load_encoder(DEFAULT_MODEL, models_dir, backend="onnx")
    folder = export_dir(models_dir, spec)
    record = json.loads((folder / "export.json").read_text())
    assert record["weights_sha256"] == spec.weights_sha256
    assert set(record["files"]) == {"model.onnx", "model-int8.onnx"}
    stamp = (folder / "model.onnx").stat().st_mtime_ns
    Encoder(spec, backend="onnx", models_dir=models_dir)  # a second load: no second export
    assert (folder / "model.onnx").stat().st_mtime_ns == stamp


def test_tampered_export_is_refused(tmp_path: Path, bundled_model: Path) -> None:
    settings = make_settings(tmp_path / "home", bundled_model, shared_export=False)
    spec = resolve_model(DEFAULT_MODEL, settings.models_dir)
    Encoder(spec, backend="onnx-int8", models_dir=settings.models_dir)
    target = export_dir(settings.models_dir, spec) / "model-int8.onnx"
    blob = bytearray(target.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    target.write_bytes(bytes(blob))
    with pytest.raises(ModelError, match="changed since"):
        Encoder(spec, backend="onnx-int8", models_dir=settings.models_dir)
    # the fp32 file beside it is intact and still loads
    Encoder(spec, backend="onnx", models_dir=settings.models_dir)


def test_int8_of_the_default_model_shares_the_fp32_space(
        models_dir: Path, tmp_path: Path, bundled_model: Path, mini_beir: Path) -> None:
    """Its export measured int8 close enough to fp32: a torch server searches an index
    built with onnx-int8 densely, and the manifest says so."""
    load_encoder(DEFAULT_MODEL, models_dir, backend="onnx")  # the export, if not made yet
    record = json.loads((export_dir(models_dir, resolve_model(DEFAULT_MODEL, models_dir))
                         / "export.json").read_text())
    assert record["int8_cosine"] >= INTERCHANGEABLE_COSINE
    settings = make_settings(tmp_path / "home", bundled_model, chunk_size=64)
    built = CliRunner().invoke(app, ["--home", str(settings.home), "index", "build", "int8",
                                     "--input", str(mini_beir), "--backend", "onnx-int8"])
    assert built.exit_code == 0, built.output
    info = CliRunner().invoke(app, ["--home", str(settings.home), "index", "info", "int8", "--json"])
    manifest = json.loads(info.output)["manifest"]
    assert (manifest["backend"], manifest["space"]) == ("onnx-int8", "fp32")
    with RunningServer(settings.model_copy(update={"backend": "torch"})) as server, \
            Client(server.url) as client:
        wait_for(lambda: client.readyz().status == "ready")
        answer = client.search("int8", "vitamin D deficiency", k=3, mode="dense")
        assert answer.fallback is None and len(answer.hits) == 3


def test_a_server_refuses_vectors_it_cannot_match(tmp_path: Path, bundled_model: Path,
                                                   mini_beir: Path) -> None:
    """A model whose int8 vectors agreed poorly with fp32 at export (the record says so):
    its int8 index is its own space, refused by a torch server, served by an int8 one."""
    settings = make_settings(tmp_path / "home", bundled_model, shared_export=False, chunk_size=64)
    spec = resolve_model(DEFAULT_MODEL, settings.models_dir)
    Encoder(spec, backend="onnx", models_dir=settings.models_dir)  # exports
    record_path = export_dir(settings.models_dir, spec) / "export.json"
    record = json.loads(record_path.read_text())
    record_path.write_text(json.dumps({**record, "int8_cosine": 0.9}))
    runner = CliRunner()
    for name, backend in (("int8", "onnx-int8"), ("fp32", "onnx")):
        built = runner.invoke(app, ["--home", str(settings.home), "index", "build", name,
                                    "--input", str(mini_beir), "--backend", backend])
        assert built.exit_code == 0, built.output
    info = runner.invoke(app, ["--home", str(settings.home), "index", "info", "int8", "--json"])
    assert json.loads(info.output)["manifest"]["space"] == "onnx-int8"

    query = "vitamin D deficiency"
    served = settings.model_copy(update={"backend": "torch"})
    with RunningServer(served) as server, Client(server.url) as client:
        wait_for(lambda: client.readyz().status == "ready")
        # onnx and torch make the same vectors: the onnx index is searched with torch queries
        assert client.search("fp32", query, k=3, mode="dense").fallback is None
        with pytest.raises(Conflict, match="onnx-int8"):
            client.search("int8", query, k=3, mode="dense")
        answer = client.search("int8", query, k=3)
        assert (answer.mode, answer.fallback) == ("lexical", "backend_mismatch")
        assert answer.hits

    matched = settings.model_copy(update={"backend": "onnx-int8"})
    with RunningServer(matched) as server, Client(server.url) as client:
        wait_for(lambda: client.readyz().status == "ready")
        answer = client.search("int8", query, k=3, mode="dense")
        assert answer.mode == "dense" and len(answer.hits) == 3


def test_an_unknown_backend_is_refused_with_the_choices(tmp_path: Path) -> None:
    runner = CliRunner()
    flag = runner.invoke(app, ["--home", str(tmp_path), "index", "build", "c", "--input",
                               str(tmp_path), "--backend", "fp8"])
    assert flag.exit_code == 2 and "onnx-int8" in flag.output
    env = runner.invoke(app, ["--home", str(tmp_path), "collections", "list"],
                        env={"EMBEDSVC_BACKEND": "fp8"})
    assert env.exit_code == 1
    assert "EMBEDSVC_BACKEND='fp8'" in env.output and "onnx-int8" in env.output
    assert "unexpected" not in env.output and not list(tmp_path.iterdir())  # nothing written
