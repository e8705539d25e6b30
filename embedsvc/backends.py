"""How a model's forward pass runs: torch fp32, torch with bf16 autocast, or ONNX Runtime.

Every backend takes the same padded token arrays and returns the model's sentence vectors,
so tokenisation, length-sorted batching and normalisation are written once, in
:class:`embedsvc.encoders.Encoder`. Which backends may share an index is decided by
:func:`vector_space`, from measured agreement with torch fp32 (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

import numpy as np

from embedsvc.settings import Backend

if TYPE_CHECKING:
    from embedsvc.encoders import ModelSpec

log = logging.getLogger(__name__)

BACKENDS: tuple[str, ...] = get_args(Backend)
# torch, bf16 autocast and ONNX fp32 make the same vectors (mean cosine to torch fp32 1.0000
# on SciFact passages): one vector space. int8 vectors differ a little, by how much depends
# on the model, so the export measures it (``int8_cosine``): at or above this mean cosine to
# fp32 they share the fp32 space. For all-MiniLM-L6-v2 int8 measured 0.9946, and an index
# of either searched with queries of the other lost nothing (nDCG@10 within 0.002 on
# SciFact, benchmarks/RESULTS.md).
INTERCHANGEABLE_COSINE = 0.99
FP32_SPACE = "fp32"

# (padded token arrays by input name) -> (batch, dim) float32 sentence vectors
Runner = Callable[[dict[str, np.ndarray]], np.ndarray]


def vector_space(backend: str, int8_cosine: float | None = None) -> str:
    """The space of a backend's vectors: vectors of one space may be searched with queries
    of another backend of that space. ``int8_cosine``: the export's measure for onnx-int8
    (None: unknown, so its own space)."""
    if backend != "onnx-int8":
        return FP32_SPACE
    return FP32_SPACE if (int8_cosine or 0.0) >= INTERCHANGEABLE_COSINE else backend


def rows_per_pass(backend: str, batch_size: int) -> int:
    """Texts one forward pass may hold.

    onnx-int8 quantises activations with one scale per pass (ONNX Runtime's dynamic
    quantisation), so a text's vector would depend on the texts beside it, padding included:
    a query alone and in a batch of 200 agreed only to a cosine of 0.986. One text a pass
    makes each vector its own, for 3% of the speed and with less memory.
    """
    return 1 if backend == "onnx-int8" else batch_size


def collection_space(get_meta: Callable[[str], Any]) -> tuple[str, str] | None:
    """(vector space, backend) of a collection's vectors, from its metadata; None for
    vectors made elsewhere. A collection built before spaces were recorded is in its
    backend's space as far as is known without the export's measure."""
    backend = get_meta("backend")
    if backend is None:
        return None
    return get_meta("space") or vector_space(backend), backend


def mismatch(get_meta: Callable[[str], Any], encoder_space: str) -> str | None:
    """The backend a collection's vectors were made with, when queries of ``encoder_space``
    cannot search them; else None."""
    built = collection_space(get_meta)
    return built[1] if built is not None and built[0] != encoder_space else None


def make_runner(backend: str, model: Any, spec: ModelSpec, models_dir: Path,
                threads: int) -> Runner:
    """The forward pass of ``model`` on ``backend``, using ``threads`` CPU threads."""
    if backend in ("torch", "torch-bf16"):
        return _torch_runner(model, bf16=backend == "torch-bf16")
    if backend in ("onnx", "onnx-int8"):
        from embedsvc.onnx_export import onnx_file

        return _onnx_runner(onnx_file(model, spec, models_dir, quantized=backend == "onnx-int8"),
                            threads)
    raise ValueError(f"unknown backend '{backend}': use one of {', '.join(BACKENDS)}")


def _torch_runner(model: Any, bf16: bool) -> Runner:
    import torch

    device = model.device

    def run(arrays: dict[str, np.ndarray]) -> np.ndarray:
        features = {name: torch.from_numpy(a).to(device) for name, a in arrays.items()}
        autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 \
            else contextlib.nullcontext()
        with torch.inference_mode(), autocast:
            return model(features)["sentence_embedding"].float().cpu().numpy()

    return run


def _onnx_runner(path: Path, threads: int) -> Runner:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    log.info("ONNX Runtime session on %s: %d threads, inputs %s", path.name, threads, names)

    def run(arrays: dict[str, np.ndarray]) -> np.ndarray:
        return session.run(None, {name: arrays[name] for name in names})[0]

    return run
