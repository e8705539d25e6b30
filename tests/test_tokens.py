"""An exported model is tokenised from its tokenizer.json, without transformers or torch,
and exactly as transformers tokenises it."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from embedsvc.encoders import DEFAULT_MODEL, Encoder, load_encoder, resolve_model
from embedsvc.tokens import PROBES, FileTokenizer
from tests.conftest import SCIFACT, make_settings


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory, bundled_model: Path) -> Path:
    models = make_settings(tmp_path_factory.mktemp("tokens"), bundled_model).models_dir
    Encoder(resolve_model(DEFAULT_MODEL, models), backend="onnx", models_dir=models)  # exports
    return models


def scifact_texts(n: int) -> list[str]:
    with gzip.open(SCIFACT / "corpus.jsonl.gz", "rt", encoding="utf-8") as fh:
        return [f"{r['title']} {r['text']}" for r in (json.loads(next(fh)) for _ in range(n))]


def test_file_tokenizer_gives_transformers_ids_and_offsets(bundled_model: Path) -> None:
    from transformers import AutoTokenizer

    theirs = AutoTokenizer.from_pretrained(str(bundled_model))
    ours = FileTokenizer(bundled_model / "tokenizer.json", theirs.pad_token_id)
    texts = scifact_texts(200) + list(PROBES)
    for kwargs in ({"add_special_tokens": True}, {"add_special_tokens": False},
                   {"add_special_tokens": False, "truncation": True, "max_length": 16},
                   {"add_special_tokens": False, "return_offsets_mapping": True}):
        expected, got = theirs(texts, **kwargs), ours(texts, **kwargs)
        assert got["input_ids"] == expected["input_ids"], kwargs
        if "offset_mapping" in got:
            assert [[tuple(o) for o in row] for row in expected["offset_mapping"]] == \
                [[tuple(o) for o in row] for row in got["offset_mapping"]]
    assert ours("hello")["input_ids"] == theirs("hello")["input_ids"]  # one text: one list


def test_an_exported_model_encodes_without_torch(models_dir: Path) -> None:
    """A fresh process: the ONNX encoder loads neither torch nor transformers, and its
    vectors are those of the torch backend."""
    texts = ["vitamin D deficiency", "What causes scurvy?"] + scifact_texts(2)
    script = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from embedsvc.encoders import load_encoder\n"
        f"encoder = load_encoder({DEFAULT_MODEL!r}, Path({str(models_dir)!r}), backend='onnx')\n"
        f"vectors = encoder.encode({texts!r}).tolist()\n"
        "print(json.dumps({'torch': 'torch' in sys.modules, 'transformers': 'transformers' in "
        "sys.modules, 'tokenizer': type(encoder.tokenizer).__name__, 'vectors': vectors}))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, check=True)
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert (out["torch"], out["transformers"], out["tokenizer"]) == (False, False, "FileTokenizer")
    reference = load_encoder(DEFAULT_MODEL, models_dir).encode(texts)
    np.testing.assert_allclose(np.array(out["vectors"], np.float32), reference, atol=1e-4)


def test_a_changed_tokenizer_file_is_not_trusted(models_dir: Path, tmp_path: Path) -> None:
    """A model folder whose tokenizer.json differs from the one checked at export (same
    weights, so the same export) is tokenised by transformers, and still encodes right."""
    copy = tmp_path / "model"
    shutil.copytree(resolve_model(DEFAULT_MODEL, models_dir).path, copy)
    path = copy / "tokenizer.json"
    path.write_text(json.dumps(json.loads(path.read_text()), indent=1))  # same content, new bytes
    encoder = Encoder(resolve_model(str(copy), models_dir), backend="onnx", models_dir=models_dir)
    assert not isinstance(encoder.tokenizer, FileTokenizer)
    expected = load_encoder(DEFAULT_MODEL, models_dir).encode(["vitamin D deficiency"])
    np.testing.assert_allclose(encoder.encode(["vitamin D deficiency"]), expected, atol=1e-4)
