"""The default model is located, unpacked once and verified before it is loaded."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from embedsvc.encoders import (
    DEFAULT_MODEL,
    ModelError,
    default_model_zip,
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
