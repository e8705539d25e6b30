"""A model's ONNX export and its int8 quantisation: made once per weights, checked every load.

``torch.onnx.export`` traces the whole sentence-transformers pipeline (transformer, pooling,
any dense layer, normalisation) into one graph, so ONNX Runtime returns the sentence vector
itself. The export and its quantised sibling live in ``<models>/_onnx/<weights sha256>/``
beside ``export.json``, which records each file's sha256: a file that no longer matches was
damaged or swapped, and loading it would serve a different vector space without a word, so
it is refused with the folder to delete. The folder appears whole or not at all (written
beside and renamed), so concurrent processes exporting the same model never see half of one.

sentence-transformers' own ``onnx`` extra is not used: it pulls optimum, which pins an older
transformers than the one sentence-transformers needs.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from embedsvc.encoders import ModelError, ModelShape, ModelSpec
from embedsvc.files import read_json, sha256_file, write_json

log = logging.getLogger(__name__)

# Bump when the export's graph or quantisation changes, so old exports are made again.
EXPORT_FORMAT = 3
OPSET = 17
FP32_FILE = "model.onnx"
INT8_FILE = "model-int8.onnx"
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT = "sentence_embedding"


def export_dir(models_dir: Path, spec: ModelSpec) -> Path:
    return models_dir / "_onnx" / f"{spec.weights_sha256}-v{EXPORT_FORMAT}"


def onnx_file(model: Any, spec: ModelSpec, models_dir: Path, quantized: bool) -> Path:
    """The verified ONNX file of a loaded model, exporting (and quantising) it the first time.

    Raises:
        ModelError: the export failed, or a file in the cache does not match its record.
    """
    folder = export_dir(models_dir, spec)
    if not (folder / "export.json").is_file():
        _export_folder(model, spec, folder)
    return verified(folder, INT8_FILE if quantized else FP32_FILE)


def verified(folder: Path, name: str) -> Path:
    """``folder/name`` once its sha256 matches the one recorded at export."""
    try:
        expected = read_json(folder / "export.json")["files"][name]
        actual = sha256_file(folder / name)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"the ONNX export in {folder} is incomplete ({exc}); delete the folder "
                         "to export the model again") from exc
    if actual != expected:
        raise ModelError(f"{folder / name} has sha256 {actual}, but {expected} was recorded when "
                         f"it was exported: it was changed since. Delete {folder} to export the "
                         "model again")
    return folder / name


def export_record(spec: ModelSpec, models_dir: Path) -> dict[str, Any]:
    """The export's ``export.json`` (empty before the model is exported)."""
    try:
        return read_json(export_dir(models_dir, spec) / "export.json")
    except (OSError, ValueError):
        return {}


def exported_shape(spec: ModelSpec, models_dir: Path) -> ModelShape | None:
    """The model's shape from its export's record, with the tokenizer run from its
    ``tokenizer.json``: all an ONNX encoder needs, without loading torch. None when there
    is no export yet, or the model must be tokenised by transformers (its file did not
    agree with it at export, or changed since)."""
    from embedsvc.tokens import FileTokenizer

    try:
        record = export_record(spec, models_dir)
        tokenizer = spec.path / record["tokenizer_file"]
        if sha256_file(tokenizer) != record["tokenizer_sha256"]:
            log.warning("%s changed since the model was exported; tokenising with transformers",
                        tokenizer)
            return None
        return ModelShape(int(record["dim"]), int(record["max_seq_length"]),
                          list(record["inputs"]), FileTokenizer(tokenizer, int(record["pad_token_id"])))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _tokenizer_record(model: Any, spec: ModelSpec) -> dict[str, str | None]:
    """Where the model's ``tokenizer.json`` is (relative to the model's folder) and its
    sha256, if it tokenises the probes exactly as the model's transformers tokenizer."""
    from embedsvc.tokens import FileTokenizer, agrees

    path = Path(getattr(model.tokenizer, "name_or_path", "") or "") / "tokenizer.json"
    try:
        relative = path.resolve().relative_to(spec.path.resolve())
        if agrees(model.tokenizer, FileTokenizer(path, model.tokenizer.pad_token_id or 0)):
            return {"tokenizer_file": str(relative), "tokenizer_sha256": sha256_file(path)}
        why = "its tokenizer.json disagrees with transformers on the probes"
    except Exception as exc:  # noqa: BLE001 - whatever fails, transformers tokenises
        why = str(exc)
    log.info("%s: tokenising with transformers (%s)", spec.model_id, why)
    return {"tokenizer_file": None, "tokenizer_sha256": None}


def input_names(model: Any) -> list[str]:
    """The inputs the model's tokenizer makes, in the order the exported graph takes them."""
    made = set(model.tokenizer.model_input_names)
    return [name for name in INPUTS if name in made]


def _export_folder(model: Any, spec: ModelSpec, folder: Path) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".export-"))
    try:
        log.info("exporting %s to ONNX in %s (once per model)", spec.model_id, folder)
        _export(model, tmp / "traced.onnx")
        with _quiet():
            _optimize(tmp / "traced.onnx", tmp / FP32_FILE)
            _quantize(tmp / FP32_FILE, tmp / INT8_FILE)
        (tmp / "traced.onnx").unlink()
        int8_cosine = _int8_cosine(model, tmp / FP32_FILE, tmp / INT8_FILE)
        log.info("%s: int8 vectors' mean cosine to fp32 %.4f", spec.model_id, int8_cosine)
        files = {name: sha256_file(tmp / name) for name in (FP32_FILE, INT8_FILE)}
        shape = ModelShape.of(model)
        write_json(tmp / "export.json", {
            "format": EXPORT_FORMAT, "model_id": spec.model_id,
            "weights_sha256": spec.weights_sha256, "opset": OPSET, "inputs": shape.inputs,
            "dim": shape.dim, "max_seq_length": shape.max_seq_length,
            "pad_token_id": model.tokenizer.pad_token_id or 0, "int8_cosine": int8_cosine,
            **_tokenizer_record(model, spec),
            "files": files})
        tmp.rename(folder)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (folder / "export.json").is_file():
            raise  # not another process winning the race: a real failure
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ModelError(f"cannot export {spec.model_id} to ONNX: {exc}; use --backend torch") \
            from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class _SentenceEmbedding:
    """Builds the module torch.onnx traces: token tensors in, sentence vectors out."""

    @staticmethod
    def module(model: Any, names: list[str]) -> Any:
        import torch

        class Traced(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
                return self.model(dict(zip(names, tensors, strict=True)))[OUTPUT]

        return Traced().eval()


def _export(model: Any, path: Path) -> None:
    import warnings

    import torch

    names = input_names(model)
    # a padded batch of two lengths, so nothing about one shape is baked into the graph
    sample = model.tokenizer(["a short text", "a longer text that needs more tokens than it"],
                             padding=True, return_tensors="pt")
    axes = {name: {0: "batch", 1: "tokens"} for name in names} | {OUTPUT: {0: "batch"}}
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # the tracer's warnings are about shapes we made dynamic
        torch.onnx.export(_SentenceEmbedding.module(model, names),
                          tuple(sample[name] for name in names), str(path),
                          input_names=names, output_names=[OUTPUT], dynamic_axes=axes,
                          opset_version=OPSET, dynamo=False)


@contextmanager
def _quiet() -> Iterator[None]:
    """ONNX Runtime's optimizer and quantizer log a line per node or tensor, and advice for
    image models, on the root logger: silenced while they run (their errors still raise)."""
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def _optimize(source: Path, target: Path) -> None:
    """Fuse the transformer's small operators (bias + GELU, residual + layer norm) into ONNX
    Runtime's kernels: fewer passes over the activations, so a faster forward pass and a
    lower peak of memory, with the same vectors (benchmarks/RESULTS.md)."""
    from onnxruntime.transformers.optimizer import optimize_model

    # num_heads and hidden_size 0: read from the graph; opt_level 1: fusions only, leaving
    # hardware-specific layout choices to the session that runs the file
    optimize_model(str(source), model_type="bert", num_heads=0, hidden_size=0,
                   opt_level=1).save_model_to_file(str(target))


# What the int8 file is compared with the fp32 one on: sentences of several fields and kinds.
_AGREEMENT_TEXTS = [
    "The p53 protein regulates the cell cycle and acts as a tumour suppressor.",
    "Vitamin D deficiency is associated with a higher risk of respiratory infections.",
    "How do I reset my password if I no longer have access to my email?",
    "Quarterly revenue rose 12% on strong demand for cloud services.",
    "The recipe calls for two cups of flour, one egg and a pinch of salt.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "The court held that the contract was void for lack of consideration.",
    "A gentle breeze carried the smell of rain across the valley at dusk.",
    "Install the package, then restart the service to load the new configuration.",
    "Crème brûlée, naïve résumé; 漢字 and ΑΒΓ in one line.",
]


def _int8_cosine(model: Any, fp32: Path, int8: Path) -> float:
    """Mean cosine between the int8 file's vectors and the fp32 file's on the texts above:
    the measure that decides whether int8 shares the fp32 vector space
    (:func:`embedsvc.backends.vector_space`)."""
    import numpy as np
    import onnxruntime as ort

    names = input_names(model)
    sessions = [ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
                for path in (fp32, int8)]
    cosines = []
    for text in _AGREEMENT_TEXTS:  # one text a pass, as the int8 backend runs them
        tokens = model.tokenizer([text], return_tensors="np")
        feed = {name: np.asarray(tokens[name], dtype=np.int64) for name in names}
        a, b = (session.run(None, feed)[0][0] for session in sessions)
        cosines.append(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))))
    return round(float(np.mean(cosines)), 6)


def _quantize(source: Path, target: Path) -> None:
    """int8 weights, per output channel, for the matrix products only.

    The embeddings (a Gather), layer norms and pooling stay fp32: quantising every operator
    the tool can reach cost retrieval quality (see benchmarks/RESULTS.md).
    """
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # the fused graph leaves some tensor types to be inferred: say they are float
    quantize_dynamic(str(source), str(target), op_types_to_quantize=["MatMul"],
                     per_channel=True, weight_type=QuantType.QInt8,
                     extra_options={"DefaultTensorType": TensorProto.FLOAT})
