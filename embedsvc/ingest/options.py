"""Every option of ``embedsvc ingest``, defined once (see :mod:`embedsvc.options`).

The typer command is derived from :class:`IngestOptions`, so a default lives here only and
an unknown key is an error wherever the options are written. Importing this module costs
only pydantic: the CLI imports it at start-up.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class IngestOptions(BaseModel):
    """How one consumer reads a stream into a collection."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str = Field(
        ..., min_length=1,
        description="The stream: redis://HOST:PORT/STREAM, or redis://USER:PASSWORD@HOST:PORT/DB/STREAM; "
                    "rediss:// for TLS.",
        json_schema_extra={"flags": ["--from", "--source"]})  # messages spell a key --source
    group: str | None = Field(
        None, min_length=1, description="Consumer group (default: embedsvc-COLLECTION); "
                                        "created at the start of the stream if missing.")
    consumer: str | None = Field(
        None, min_length=1, description="This consumer's name in the group (default: the host "
                                        "name). Keep it across restarts, one per process.")
    batch: int = Field(500, ge=1, le=10_000, description="Entries per write (one transaction).")
    max_wait: float = Field(
        1.0, ge=0, le=3600, description="Seconds an entry may wait for its batch to fill.")
    claim_min_idle: float = Field(
        60.0, gt=0, description="Seconds an entry must sit unacknowledged with another "
                                "consumer before this one claims it (XAUTOCLAIM).")
    dead_letter: str | None = Field(
        None, min_length=1, description="Stream receiving malformed entries (default: STREAM:dead).")
    stop_after: int | None = Field(
        None, ge=1, description="Stop once this many entries are written or dead-lettered.")
    stop_when_idle: float | None = Field(
        None, gt=0, description="Stop once no entry arrived for this many seconds.")
