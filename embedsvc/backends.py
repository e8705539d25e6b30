"""How a model's forward pass runs: torch fp32, torch with bf16 autocast, or ONNX Runtime.

Every backend takes the same padded token arrays and returns the model's sentence vectors,
so tokenisation, length-sorted batching and normalisation are written once, in
:class:`embedsvc.encoders.Encoder`. Which backends may share an index is decided by
:func:`interchangeable`, from measured agreement with torch fp32 (benchmarks/RESULTS.md).
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
# Backends whose vectors are the same vector space as torch fp32 (mean cosine to it ≥ 0.9999
# on SciFact passages): an index built with one is searched with another without loss.
# onnx-int8's vectors differ measurably, so its indexes are its own.
_FP32_SPACE = frozenset({"torch", "torch-bf16", "onnx"})

# (padded token arrays by input name) -> (batch, dim) float32 sentence vectors
Runner = Callable[[dict[str, np.ndarray]], np.ndarray]


def interchangeable(a: str, b: str) -> bool:
    """Whether vectors made by backend ``a`` may be searched with queries made by ``b``."""
    return a == b or (a in _FP32_SPACE and b in _FP32_SPACE)


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
