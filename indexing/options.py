"""Every option of an index build, defined once.

``embedsvc index build``'s options, the pipeline's ``ingest`` and ``index`` stage tables and
:class:`indexing.job.BuildJob` all read :class:`BuildOptions` (see :mod:`embedsvc.options`),
so a default lives in one place and an unknown key is an error wherever it is written.
Importing this module costs only pydantic: the CLI imports it at start-up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from embedsvc.settings import Backend

LongTexts = Literal["split", "truncate"]
OnError = Literal["skip", "fail"]
Executor = Literal["local", "process", "ray"]


def _byte_size(value: object) -> object:
    """``4GB`` (or a byte count) as bytes; a bad size is a ValueError naming the forms."""
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    from indexing.layouts import parse_bytes  # imports FAISS: only when a size is given

    return parse_bytes(value)  # type: ignore[arg-type]


class BuildOptions(BaseModel):
    """How a collection is built from text (or from embeddings made elsewhere)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    vectors: Path | None = Field(None, description="Embeddings made elsewhere: .npy (+ ids) or Parquet.")
    ids: Path | None = Field(None, description="Ids of a .npy --vectors file, one a line.")
    model: str | None = Field(None, description="Model name or folder (default: EMBEDSVC_DEFAULT_MODEL).")
    lexical_only: bool = Field(False, description="BM25 only; no model.")
    on_error: OnError = Field("fail", description="Bad input lines: skip or stop.")
    chunk_size: int | None = Field(None, ge=1, description="Documents per chunk (default: EMBEDSVC_CHUNK_SIZE).")
    long_texts: LongTexts = Field(
        "split", description="split: passages cover long texts; truncate: embed the first window only.")
    executor: Executor = Field("local", description="Where chunks are embedded.")
    workers: int = Field(2, ge=1, description="Workers of the process/ray executor.")
    ray_address: str | None = Field(None, description="Ray cluster to join (default: a local Ray).")
    index: str = Field("auto", description="auto|flat|hnsw|ivf|ivfsq|ivfpq or a FAISS factory string.")
    memory_budget: Annotated[int | None, BeforeValidator(_byte_size)] = Field(
        None, gt=0, description="Most memory the index may take, e.g. 4GB.",
        json_schema_extra={"cli_type": str | None})
    target_recall: float = Field(0.95, ge=0.1, le=1.0, description="recall@10 to tune for.")
    shards: int | None = Field(None, ge=1, description="Split the index into this many shards.")
    keep_versions: int = Field(2, ge=1, description="Index versions to keep on disk.")
    backend: Backend | None = Field(
        None, description="How the model runs: torch, torch-bf16, onnx, onnx-int8 (default: EMBEDSVC_BACKEND).")
    switch: bool = Field(True, description="Serve the new version once built (False: keep serving the current one).",
                         json_schema_extra={"internal": True})
