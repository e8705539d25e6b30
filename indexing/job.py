"""``embedsvc index build``: stream an input into a collection and build an index version.

Per chunk, in this order: the chunk's documents are committed to SQLite (so a running
server already answers lexically), the executor embeds them, and the vectors are
spooled to a chunk file whose checksum is recorded. The index is built from the chunk
files at the end, written as a new immutable version and switched to atomically.

Everything is keyed by a fingerprint of what produced it (input bytes, model weights,
chunk size), so rerunning the same command after a crash reuses every verified chunk
file, and rerunning it after success does nothing.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from embedsvc import __version__
from embedsvc.collection import CollectionPaths, open_store, read_manifest
from embedsvc.encoders import load_encoder, resolve_model
from embedsvc.files import sha256_file
from embedsvc.settings import Settings
from embedsvc.store import NewDocument, document_text
from indexing.chunkfiles import ChunkFile, verify_chunk, write_chunk
from indexing.passages import split_passages
from indexing.sources import (
    Chunk,
    InputIssue,
    Record,
    chunked,
    count_items,
    read_documents,
    resolve_input,
)
from indexing.versions import prune_versions, switch_version, write_version

log = logging.getLogger(__name__)

# Bump when the chunk files' meaning changes, so old ones are never reused.
CHUNK_FORMAT = 2
OnError = Literal["skip", "fail"]
# Rows per chunk for --vectors when no --chunk-size is given: nothing to embed, so chunks
# are sized for few fsyncs and few SQLite transactions (about 48 MB of 384-d floats).
VECTOR_CHUNK_ROWS = 32_768
LongTexts = Literal["split", "truncate"]


class BuildError(Exception):
    """The build cannot go on; the message names the input line or file to fix."""


@dataclass
class BuildOptions:
    model: str | None = None  # None: the settings' default model
    lexical_only: bool = False
    on_error: OnError = "fail"
    chunk_size: int | None = None
    index: str = "auto"
    memory_budget: int | None = None
    target_recall: float = 0.95
    shards: int | None = None
    keep_versions: int = 2
    switch: bool = True  # False: write the version but keep serving the current one
    # split: overlapping passages cover the whole text; truncate: only the model's first
    # window is embedded (the protocol of MTEB / BEIR leaderboards, to compare with them)
    long_texts: LongTexts = "split"
    vectors: Path | None = None  # build from these embeddings instead of the text input
    ids: Path | None = None  # ids file of a .npy vectors file


@dataclass
class BuildReport:
    collection: str
    status: str  # built | up_to_date
    documents: int = 0
    issues: list[InputIssue] = field(default_factory=list)
    chunks_reused: int = 0
    version: int | None = None
    seconds: float = 0.0
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def docs_per_second(self) -> float:
        return self.documents / self.seconds if self.seconds else 0.0


@dataclass(frozen=True)
class EmbedTask:
    number: int
    rowids: list[int]
    texts: list[str]


@dataclass(frozen=True)
class EmbeddedChunk:
    task: EmbedTask
    spans: list[list[tuple[int, int]]]  # per document: its passages' character spans
    vectors: Any  # (passages, dim) float32, passages in document order


@dataclass(frozen=True)
class ChunkEmbedder:
    """The chunk function every executor runs; holds only names, so it pickles to workers."""

    model: str
    models_dir: str
    device: str = "cpu"
    batch_size: int = 32
    long_texts: LongTexts = "split"

    def __call__(self, task: EmbedTask) -> EmbeddedChunk:
        encoder = load_encoder(self.model, Path(self.models_dir), self.device, self.batch_size)
        special = encoder.tokenizer.num_special_tokens_to_add(pair=False)
        spans = split_passages(encoder.tokenizer, task.texts, encoder.max_seq_length - special)
        if self.long_texts == "truncate":  # the first window is all the model will see
            spans = [doc_spans[:1] for doc_spans in spans]
        passages = [text[start:end] for text, doc_spans in zip(task.texts, spans, strict=True)
                    for start, end in doc_spans]
        return EmbeddedChunk(task, spans, encoder.encode(passages))


ProgressFn = Callable[[int], None]


class BuildJob:
    def __init__(self, settings: Settings, collection: str, source: Path | None,
                 options: BuildOptions, executor: Any = None, progress: ProgressFn | None = None):
        if (source is None) == (options.vectors is None):
            raise BuildError("give either a text input (--input) or embeddings (--vectors)")
        if options.vectors is not None and options.lexical_only:
            raise BuildError("--lexical-only needs text, not --vectors")
        self.settings = settings
        self.options = options
        self.source = source if source is not None else options.vectors
        self.progress = progress or (lambda n: None)
        self.paths, self.store = open_store(settings.collections_dir, collection, create=True)
        default_chunk = VECTOR_CHUNK_ROWS if options.vectors is not None else settings.chunk_size
        self.chunk_size = options.chunk_size or default_chunk
        if executor is None:
            from indexing.foreach.local import LocalExecutor

            executor = LocalExecutor()
        self.executor = executor
        self.model_name = None if options.lexical_only else (options.model or settings.default_model)
        self.spec = resolve_model(self.model_name, settings.models_dir) if self.model_name else None

    # --- identity --------------------------------------------------------------------------
    def build_id(self, input_sha: str) -> str:
        """Key of the chunk files: what went into them, nothing about the index layout."""
        parts = [CHUNK_FORMAT, input_sha, self.spec.weights_sha256 if self.spec else "lexical",
                 self.chunk_size, self.options.on_error, self.options.long_texts]
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]

    def fingerprint(self, build_id: str) -> str:
        o = self.options
        parts = [build_id, o.index, o.memory_budget, o.target_recall, o.shards]
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]

    def is_up_to_date(self, fingerprint: str) -> bool:
        current = self.store.get_meta("current_version")
        if self.options.lexical_only:
            return current is None and self.store.get_meta("lexical_fingerprint") == fingerprint
        if current is None:
            return False
        try:
            return read_manifest(self.paths, current).get("fingerprint") == fingerprint
        except Exception:  # an unreadable manifest means: build again
            return False

    def input_sha(self) -> str:
        if self.options.vectors is None:
            return sha256_file(resolve_input(self.source))
        from indexing.vector_sources import default_ids_path

        ids = self.options.ids or default_ids_path(self.options.vectors)
        parts = [sha256_file(self.options.vectors)] + ([sha256_file(ids)] if ids.exists() else [])
        return hashlib.sha256("".join(parts).encode()).hexdigest()

    def check_layout(self) -> None:
        """Refuse an impossible layout or budget before any embedding is spent."""
        if self.spec is None:
            return
        from indexing.build import working_bytes
        from indexing.layouts import choose_layout

        n = self.expected_items or 1
        dim = self.encoder.dim
        choice = choose_layout(n, dim, self.options.memory_budget, self.options.index,
                               self.options.target_recall, working_bytes=working_bytes(dim))
        log.info("expected layout for about %d vectors: %s", n, choice.reason)

    @cached_property
    def expected_items(self) -> int | None:
        """Input lines (or vectors): the progress total and the layout estimate's size."""
        if self.options.vectors is not None:
            from indexing.vector_sources import vector_count

            return vector_count(self.options.vectors)
        return count_items(self.source)

    @property
    def encoder(self) -> Any:
        return load_encoder(self.model_name, self.settings.models_dir, self.settings.device,
                            self.settings.encode_batch_size)

    # --- the run ---------------------------------------------------------------------------
    def run(self) -> BuildReport:
        start = time.perf_counter()
        build_id = self.build_id(self.input_sha())
        fingerprint = self.fingerprint(build_id)
        report = BuildReport(self.paths.name, "up_to_date")
        with build_lock(self.paths):
            if self.is_up_to_date(fingerprint):
                report.documents = self.store.count_documents()
                return report
            self.check_layout()
            self.store.start_build(build_id, fingerprint, str(self.source),
                                   self.spec.model_id if self.spec else None)
            chunk_dir = self.paths.builds / build_id
            if self.options.vectors is not None:
                chunks = self._ingest_vectors(build_id, chunk_dir, report)
            else:
                chunks = self._ingest_and_embed(build_id, chunk_dir, report)
            removed = self.store.delete_other_builds(build_id)
            if removed:
                log.info("removed %d documents the input no longer holds", removed)
            self._finish(build_id, fingerprint, chunks, report)
            self.store.finish_build(build_id, report.documents, len(report.issues))
            shutil.rmtree(self.paths.builds, ignore_errors=True)
        report.status = "built"
        report.seconds = time.perf_counter() - start
        return report

    def _ingest_and_embed(self, build_id: str, chunk_dir: Path, report: BuildReport) -> list[ChunkFile]:
        done = self.store.chunk_checksums(build_id)
        files: list[ChunkFile] = []

        def tasks() -> Iterator[EmbedTask]:
            for chunk in chunked(read_documents(self.source), self.chunk_size):
                records = self._accept(chunk, build_id, report)
                report.documents += len(records)
                file = ChunkFile(chunk_dir, chunk.number)
                recorded = done.get(chunk.number)
                if self.spec is not None:
                    files.append(file)
                if recorded and (self.spec is None or verify_chunk(file, recorded[0])):
                    report.chunks_reused += 1
                    self.progress(len(records) + len(chunk.issues))
                    continue
                rowids = self._store_documents(records, build_id)
                if self.spec is None:
                    self.store.record_chunk(build_id, chunk.number, "lexical", len(rowids))
                    self.progress(len(records) + len(chunk.issues))
                    continue
                texts = [document_text(r.title, r.text) for r in records]
                yield EmbedTask(chunk.number, rowids, texts)

        if self.spec is None:
            for _ in tasks():  # lexical only: storing the documents is all there is
                pass
            return []
        embed = ChunkEmbedder(self.model_name, str(self.settings.models_dir),
                              self.settings.device, self.settings.encode_batch_size,
                              self.options.long_texts)
        for done_chunk in self.executor.map(embed, tasks()):
            task = done_chunk.task
            ids = self.store.replace_passages(task.rowids, done_chunk.spans)
            checksum = write_chunk(chunk_dir, task.number, ids, done_chunk.vectors)
            self.store.record_chunk(build_id, task.number, checksum, len(task.rowids))
            self.progress(len(task.rowids))
        return files

    def _ingest_vectors(self, build_id: str, chunk_dir: Path, report: BuildReport) -> list[ChunkFile]:
        """Embeddings made elsewhere: one passage per id, validated and normalised."""
        from indexing.vector_sources import read_vectors

        done = self.store.chunk_checksums(build_id)
        files = []
        for chunk in read_vectors(self.options.vectors, self.options.ids, self.encoder.dim,
                                  self.chunk_size):
            first_row = chunk.number * self.chunk_size + 1
            records = [Record(first_row + i, doc_id, "", "", {}) for i, doc_id in enumerate(chunk.ids)]
            records = self._accept(Chunk(chunk.number, records, []), build_id, report)
            report.documents += len(records)
            file = ChunkFile(chunk_dir, chunk.number)
            files.append(file)
            recorded = done.get(chunk.number)
            if not (recorded and verify_chunk(file, recorded[0])):
                rowids = self._store_documents(records, build_id)
                ids = self.store.replace_passages(rowids, [[(0, 0)]] * len(rowids))
                kept = [r.line - first_row for r in records]
                checksum = write_chunk(chunk_dir, chunk.number, ids, chunk.vectors[kept])
                self.store.record_chunk(build_id, chunk.number, checksum, len(ids))
            else:
                report.chunks_reused += 1
            self.progress(len(chunk.ids))
        return files

    def _accept(self, chunk: Chunk, build_id: str, report: BuildReport) -> list[Record]:
        """The chunk's usable records; issues are collected, or raised with ``--on-error fail``."""
        issues = list(chunk.issues)
        seen = self.store.existing_lines([r.id for r in chunk.records], build_id)
        records: list[Record] = []
        for record in chunk.records:
            first = seen.get(record.id)
            if first is not None and first != record.line:
                issues.append(InputIssue(record.line,
                                         f"duplicate _id '{record.id}' (first on line {first})"))
                continue
            seen[record.id] = record.line
            records.append(record)
        issues.sort(key=lambda i: i.line)
        if issues and self.options.on_error == "fail":
            raise BuildError(
                f"{self.source}: {issues[0]}"
                + (f" (and {len(issues) - 1} more in this chunk)" if len(issues) > 1 else "")
                + "; fix the input or rerun with --on-error skip"
            )
        for issue in issues:
            log.warning("%s: skipped %s", self.source, issue)
        report.issues.extend(issues)
        return records

    def _store_documents(self, records: list[Record], build_id: str) -> list[int]:
        docs = [NewDocument(r.id, r.title, r.text, r.metadata, r.line) for r in records]
        return self.store.upsert_documents(docs, build_id) if docs else []

    def _finish(self, build_id: str, fingerprint: str, chunks: list[ChunkFile],
                report: BuildReport) -> None:
        if self.spec is None:
            switch_version(self.store, None, None)
            self.store.set_meta(lexical_fingerprint=fingerprint)
            return
        if report.documents == 0:
            raise BuildError(f"{self.source} holds no usable document; nothing to index")
        from indexing.build import build_index

        encoder = self.encoder
        o = self.options
        manifest = {
            "model_id": self.spec.model_id, "weights_sha256": self.spec.weights_sha256,
            "fingerprint": fingerprint, "build_id": build_id, "input": str(self.source),
            "embedsvc_version": __version__, "max_seq_length": encoder.max_seq_length,
            "documents": report.documents, "long_texts": o.long_texts,
        }
        chunks = [c for c in chunks if c.exists()]
        number = write_version(
            self.paths,
            lambda folder: build_index(chunks, encoder.dim, folder, index=o.index,
                                       memory_budget=o.memory_budget,
                                       target_recall=o.target_recall, shards=o.shards),
            manifest,
        )
        if o.switch:
            switch_version(self.store, number, self.spec.model_id)
            prune_versions(self.paths, number, o.keep_versions)
        report.version = number
        report.manifest = read_manifest(self.paths, number)


@contextmanager
def build_lock(paths: CollectionPaths) -> Iterator[None]:
    """One build per collection at a time; the OS drops the lock if the process dies."""
    paths.root.mkdir(parents=True, exist_ok=True)
    with open(paths.root / "build.lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise BuildError(f"another build of '{paths.name}' is running; wait for it") from exc
        yield

