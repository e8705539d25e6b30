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
from pathlib import Path
from typing import Any

from embedsvc.encoders import ModelError, ModelSpec
from embedsvc.files import read_json, sha256_file, write_json

log = logging.getLogger(__name__)

# Bump when the export's graph or quantisation changes, so old exports are made again.
EXPORT_FORMAT = 2
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
        _optimize(tmp / "traced.onnx", tmp / FP32_FILE)
        (tmp / "traced.onnx").unlink()
        _quantize(tmp / FP32_FILE, tmp / INT8_FILE)
        files = {name: sha256_file(tmp / name) for name in (FP32_FILE, INT8_FILE)}
        write_json(tmp / "export.json", {"format": EXPORT_FORMAT, "model_id": spec.model_id,
                                         "weights_sha256": spec.weights_sha256, "opset": OPSET,
                                         "inputs": input_names(model), "files": files})
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


def _optimize(source: Path, target: Path) -> None:
    """Fuse the transformer's small operators (bias + GELU, residual + layer norm) into ONNX
    Runtime's kernels: fewer passes over the activations, so a faster forward pass and a
    lower peak of memory, with the same vectors (benchmarks/RESULTS.md)."""
    from onnxruntime.transformers.optimizer import optimize_model

    # num_heads and hidden_size 0: read from the graph; opt_level 1: fusions only, leaving
    # hardware-specific layout choices to the session that runs the file
    optimize_model(str(source), model_type="bert", num_heads=0, hidden_size=0,
                   opt_level=1).save_model_to_file(str(target))


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
