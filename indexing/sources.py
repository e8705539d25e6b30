"""Readers that turn corpus files into a stream of documents, never the whole corpus at once.

Each reader yields either a :class:`Record` or an :class:`InputIssue` (a line that could
not be used, with its line number), so the build decides whether to skip or fail, and
the user learns exactly which line to fix. Supported inputs: JSONL (optionally
gzipped), CSV, Parquet, and a BEIR folder (``corpus.jsonl[.gz]``).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ID_FIELDS = ("_id", "id")
_KNOWN = {"_id", "id", "title", "text"}


@dataclass(frozen=True)
class Record:
    """One document read from the input; ``line`` is 1-based (row number for Parquet)."""

    line: int
    id: str
    title: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class InputIssue:
    """A line of the input that cannot be indexed, and why."""

    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


Item = Record | InputIssue


class SourceError(Exception):
    """The input cannot be read at all (missing, unknown format)."""


def to_record(line: int, row: Any) -> Item:
    """Validate one parsed row; missing ids or text become issues, extra fields metadata."""
    if not isinstance(row, dict):
        return InputIssue(line, f"expected a JSON object, got {type(row).__name__}")
    raw_id = next((row[f] for f in ID_FIELDS if row.get(f) not in (None, "")), None)
    if raw_id is None:
        return InputIssue(line, "missing '_id'")
    if not isinstance(raw_id, str | int):
        return InputIssue(line, f"'_id' must be a string or integer, got {type(raw_id).__name__}")
    title, text = row.get("title") or "", row.get("text") or ""
    if not isinstance(title, str) or not isinstance(text, str):
        return InputIssue(line, "'title' and 'text' must be strings")
    if not text.strip() and not title.strip():
        return InputIssue(line, f"document '{raw_id}' has no text")
    metadata = {k: v for k, v in row.items() if k not in _KNOWN}
    return Record(line, str(raw_id), title, text, metadata)


def open_text(path: Path) -> io.TextIOBase:
    """A UTF-8 text file, gzipped or not, that raises on bytes that are not UTF-8."""
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", errors="strict")
    return open(path, encoding="utf-8", errors="strict", newline="")


def too_big(size: int, limit: int) -> str:
    return (f"document of over {limit} bytes (EMBEDSVC_MAX_DOCUMENT_BYTES): split it, or raise "
            f"the limit" if size > limit else "")


def read_jsonl(path: Path, max_bytes: int | None = None) -> Iterator[Item]:
    """Documents of a JSONL file; a line over ``max_bytes`` is an issue, never held whole."""
    with open_text(path) as fh:
        line_no = 0
        while True:
            line_no += 1
            try:
                line = fh.readline(max_bytes + 1) if max_bytes else fh.readline()
                if max_bytes and len(line.encode()) > max_bytes:
                    _skip_rest_of_line(fh, line)
                    yield InputIssue(line_no, too_big(max_bytes + 1, max_bytes))
                    continue
            except UnicodeDecodeError as exc:
                yield InputIssue(line_no, f"not UTF-8 ({exc.reason}); the rest is unreadable")
                return
            if not line:
                return
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                yield InputIssue(line_no, f"invalid JSON ({exc.msg} at column {exc.colno})")
                continue
            yield to_record(line_no, row)


def _skip_rest_of_line(fh: io.TextIOBase, start: str) -> None:
    """Read past the end of an overlong line a block at a time, keeping none of it."""
    part = start
    while part and not part.endswith("\n"):
        part = fh.readline(1 << 20)


def read_csv(path: Path, max_bytes: int | None = None) -> Iterator[Item]:
    if max_bytes:  # the csv module's own field limit (128kB) would otherwise apply
        csv.field_size_limit(max_bytes)
    with open_text(path) as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not set(ID_FIELDS) & set(reader.fieldnames):
            raise SourceError(f"{path}: the CSV header must name an '_id' (or 'id') column")
        try:
            for row in reader:
                size = sum(len(v.encode()) for v in row.values() if isinstance(v, str))
                if max_bytes and size > max_bytes:
                    yield InputIssue(reader.line_num, too_big(size, max_bytes))
                    continue
                yield to_record(reader.line_num, {k: v for k, v in row.items() if k})
        except (csv.Error, UnicodeDecodeError) as exc:
            reason = too_big(max_bytes + 1, max_bytes) if max_bytes and "field limit" in str(exc) \
                else f"unreadable CSV: {exc}"
            yield InputIssue(reader.line_num + 1, f"{reason}; the rest is unreadable")


def read_parquet(path: Path, max_bytes: int | None = None, batch_rows: int = 4096) -> Iterator[Item]:
    import pyarrow.parquet as pq

    row_no = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows):
        for row in batch.to_pylist():
            row_no += 1
            size = sum(len(v.encode()) for v in row.values() if isinstance(v, str))
            if max_bytes and size > max_bytes:
                yield InputIssue(row_no, too_big(size, max_bytes))
                continue
            yield to_record(row_no, row)


def beir_corpus(folder: Path) -> Path:
    for name in ("corpus.jsonl.gz", "corpus.jsonl"):
        if (folder / name).is_file():
            return folder / name
    raise SourceError(f"{folder} is a folder but holds no corpus.jsonl[.gz] (a BEIR folder)")


def resolve_input(path: Path) -> Path:
    """The file that will be read for ``path`` (a BEIR folder resolves to its corpus)."""
    if not path.exists():
        raise SourceError(f"{path} does not exist")
    return beir_corpus(path) if path.is_dir() else path


def read_documents(path: Path, max_bytes: int | None = None) -> Iterator[Item]:
    """Stream documents from a file or BEIR folder, choosing the reader by extension.

    A document over ``max_bytes`` becomes an issue, so memory stays bounded by the chunk
    size whatever the input's line lengths.
    """
    file = resolve_input(path)
    name = file.name.lower()
    if name.endswith((".jsonl", ".jsonl.gz", ".ndjson", ".json.gz")):
        return read_jsonl(file, max_bytes)
    if name.endswith((".csv", ".csv.gz")):
        return read_csv(file, max_bytes)
    if name.endswith(".parquet"):
        return read_parquet(file, max_bytes)
    raise SourceError(f"{file}: unknown format; use .jsonl, .jsonl.gz, .csv, .parquet or a BEIR folder")


@dataclass
class Chunk:
    """A fixed-size slice of the input with a stable number: the unit of work and resume."""

    number: int
    records: list[Record]
    issues: list[InputIssue]


def chunked(items: Iterator[Item], size: int) -> Iterator[Chunk]:
    """Group the stream into chunks of ``size`` input lines (records and issues alike)."""
    number, records, issues = 0, [], []
    for item in items:
        (records if isinstance(item, Record) else issues).append(item)
        if len(records) + len(issues) >= size:
            yield Chunk(number, records, issues)
            number, records, issues = number + 1, [], []
    if records or issues:
        yield Chunk(number, records, issues)


def count_items(path: Path) -> int | None:
    """Lines (or rows) in the input, for a progress bar's ETA; a cheap pass next to embedding."""
    file = resolve_input(path)
    if file.name.lower().endswith(".parquet"):
        import pyarrow.parquet as pq

        return pq.ParquetFile(file).metadata.num_rows
    opener = gzip.open if file.suffix == ".gz" else open
    with opener(file, "rb") as fh:
        lines = sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b""))
    is_csv = ".csv" in file.name.lower()
    return max(lines - 1, 0) if is_csv else lines
