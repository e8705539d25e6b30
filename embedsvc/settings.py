"""The one settings object of embedsvc.

Every knob an operator can turn lives here and is read from the environment with the
prefix ``EMBEDSVC_`` (``EMBEDSVC_HOME=/data/embedsvc``). No other module reads the
environment: they take a ``Settings`` or call :func:`get_settings`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

Backend = Literal["torch", "torch-bf16", "onnx", "onnx-int8"]


class Settings(BaseSettings):
    """Configuration of the service, the CLI and the batch jobs."""

    model_config = SettingsConfigDict(env_prefix="EMBEDSVC_", extra="ignore")

    home: Path = Field(Path(".embedsvc"), description="Folder holding collections and models.")
    default_model: str = Field(
        "all-MiniLM-L6-v2",
        description="Model used when none is named: the bundled name or a local folder.",
    )
    host: str = "127.0.0.1"
    port: int = 8000
    log_level: str = "INFO"

    chunk_size: int = Field(512, ge=1, description="Documents per indexing chunk.")
    encode_batch_size: int = Field(32, ge=1, description="Most texts in one forward pass.")
    encode_batch_tokens: int = Field(
        2048, ge=1, description="Most padded tokens in one forward pass (texts × the longest): "
                                "bounds a pass's activation memory. 2048 is 8 passages of 256 "
                                "tokens, or 32 queries.")
    device: str = Field("cpu", description="torch device used to encode.")
    backend: Backend = Field(
        "onnx-int8", description="How models run: torch (fp32), torch-bf16 (autocast), onnx "
                                 "(ONNX Runtime, fp32) or onnx-int8 (quantised). Exported once "
                                 "per model into <home>/models/_onnx/.")
    encode_threads: int = Field(
        0, ge=0, description="Threads one encoder uses (0: every core of the machine).")
    query_batch_wait_ms: float = Field(
        2.0, ge=0, description="How long a query waits for others to share one encoder call.")
    query_batch_size: int = Field(32, ge=1, description="Most queries in one encoder call.")
    query_cache_size: int = Field(
        4096, ge=0, description="Query embeddings kept, by model, backend and text (0: none).")

    max_k: int = Field(1000, ge=1, description="Largest k a search may ask for.")
    max_query_chars: int = Field(4096, ge=1, description="Longest query text accepted.")
    max_embed_texts: int = Field(256, ge=1, description="Most texts in one /v1/embed call.")
    max_body_bytes: int = Field(16_000_000, ge=1024, description="Largest request body.")
    max_batch_documents: int = Field(
        1000, ge=1, description="Most documents (or ids) in one upsert or delete call.")
    max_document_bytes: int = Field(
        1_000_000, ge=1024,
        description="Largest document (title, text and metadata, UTF-8), written through the "
                    "API or read from an input line by a build.")
    max_filter_depth: int = Field(8, ge=1, description="Most nested $and/$or levels in a filter.")
    max_filter_conditions: int = Field(64, ge=1, description="Most conditions in one filter.")
    preload_models: bool = Field(
        True, description="Load the collections' models in the background at start-up."
    )

    rrf_k: int = Field(60, ge=1, description="Reciprocal rank fusion constant of hybrid search.")
    dense_weight: float = Field(1.0, ge=0, description="Weight of the dense ranking in hybrid.")
    lexical_weight: float = Field(1.0, ge=0, description="Weight of the BM25 ranking in hybrid.")

    workers: int = Field(1, ge=1, description="Server processes sharing the home folder.")
    lease_seconds: float = Field(
        10.0, gt=0, description="Writer lease: a leader silent this long is replaced.")
    embed_batch_documents: int = Field(
        32, ge=1, description="Documents the server embeds per micro-batch.")
    compact_fresh_vectors: int = Field(
        20_000, ge=1, description="Fresh vectors at which the server compacts by itself.")
    compact_deleted_ratio: float = Field(
        0.2, gt=0, le=1,
        description="Share of the index's vectors deleted or replaced at which it compacts.")

    # --- security: keys, exposure, rate limits ------------------------------------------------
    api_keys_file: Path | None = Field(
        None, description="File of '<sha256 of key> <scope> <name>' lines (default: "
                          "<home>/api-keys, written by `embedsvc keys create`).")
    api_keys: str = Field(
        "", description="More keys in the same form, separated by commas (for containers).")
    insecure: bool = Field(
        False, description="Allow serving on a non-loopback address without API keys.")
    metrics_scope: Literal["open", "admin"] = Field(
        "open", description="Who may read /metrics: anyone, or keys with the admin scope.")
    rate_limit_per_second: float = Field(
        0.0, ge=0, description="Requests per second per API key (per client address without "
                               "keys), as a token bucket; 0 turns rate limiting off.")
    rate_limit_burst: int = Field(20, ge=1, description="Requests a key may send at once.")
    shutdown_timeout_seconds: float = Field(
        30.0, gt=0, description="On SIGTERM, how long requests in flight may take to finish.")
    shutdown_drain_seconds: float = Field(
        0.0, ge=0, description="On SIGTERM, how long /readyz answers 503 before the server "
                               "stops accepting connections (give load balancers time to see it).")
    drift_window: int = Field(
        1000, ge=0, description="Recent dense queries kept per collection for drift monitoring "
                                "(0: off).")
    drift_low_score: float = Field(
        0.3, ge=-1, le=1, description="A query whose best hit's cosine is below this counts as "
                                      "unanswered by the corpus.")
    drift_alert_share: float = Field(
        0.5, ge=0, le=1, description="Mark a collection drifting when more than this share of its "
                                     "recent queries score below drift_low_score.")
    drift_min_queries: int = Field(
        20, ge=1, description="Queries a collection's window needs before it can be marked drifting.")
    verify_interval_seconds: float = Field(
        300.0, ge=0, description="How often served index files are checked against their "
                                 "checksums (0: never after loading).")

    metrics_dir: Path | None = Field(
        None, description="Internal, set by `serve --workers N` for its workers: where they "
                          "merge their metrics (prometheus_client's multiprocess mode).")

    @property
    def keys_path(self) -> Path:
        return self.api_keys_file or self.home / "api-keys"

    @property
    def collections_dir(self) -> Path:
        return self.home / "collections"

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def snapshots_dir(self) -> Path:
        """Where the API's snapshot route writes (a client never names a server path)."""
        return self.home / "snapshots"


_current: Settings | None = None


def get_settings() -> Settings:
    """The process-wide settings: read once from the environment unless set with
    :func:`use_settings` (the CLI does, so ``--home`` reaches every command)."""
    global _current
    if _current is None:
        _current = Settings()
    return _current


def use_settings(settings: Settings) -> Settings:
    global _current
    _current = settings
    return settings


def environment_of(settings: Settings) -> dict[str, str]:
    """The ``EMBEDSVC_*`` variables that make :class:`Settings` equal to ``settings`` in a
    child process (the server's workers read their settings from the environment)."""
    return {f"EMBEDSVC_{name.upper()}": str(value)
            for name, value in settings.model_dump(exclude_unset=True).items()}
