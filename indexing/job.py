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

import hashlib
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import cached_property
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from embedsvc import __version__
from embedsvc.collection import exclusive, open_store, read_manifest
from embedsvc.encoders import embedding_dimension, load_encoder, load_settings_encoder, resolve_model
from embedsvc.files import sha256_file, short_hash
from embedsvc.passages import embed_passages
from embedsvc.search.dense import damaged_shards
from embedsvc.settings import Settings
from embedsvc.store import SERVED, STAGED, NewDocument, Tables, document_text, passage_id
from indexing.chunkfiles import ChunkFile, VectorChunk, verify_chunk, write_chunk
from indexing.errors import BuildError
from indexing.options import BuildOptions, LongTexts
from indexing.sources import (
    Chunk,
    InputIssue,
    Record,
    chunked,
    count_items,
    read_documents,
    resolve_input,
)
from indexing.vector_sources import (
    CheckedVectors,
    VectorRows,
    as_unit_float32,
    check_npy,
    check_vectors_input,
    convert_parquet,
    default_ids_path,
    read_npy_ids,
    usable_rows,
    vector_count,
)
from indexing.vectorstore import adopt
from indexing.versions import prune_versions, switch_version, write_version

if TYPE_CHECKING:  # the build imports FAISS, which worker processes embedding text never need
    from indexing.build import TrainedIndex

log = logging.getLogger(__name__)

# Bump when the chunk files' meaning changes, so old ones are never reused.
# 3: passages embedded from the splitter's token ids, batched by token count.
CHUNK_FORMAT = 3
# Rows per chunk for --vectors when no --chunk-size is given: nothing to embed, so chunks
# are sized for few SQLite transactions and FAISS calls (about 48 MB of 384-d floats).
VECTOR_CHUNK_ROWS = 32_768


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
    backend: str = "torch"
    threads: int = 0  # 0: what the executor gave this process's torch
    batch_tokens: int | None = None

    @classmethod
    def of(cls, model: str, settings: Settings, long_texts: LongTexts, backend: str) -> ChunkEmbedder:
        """The embedder of a build: the settings' encoding options, the build's own."""
        return cls(model, str(settings.models_dir), settings.device, settings.encode_batch_size,
                   long_texts, backend, settings.encode_threads, settings.encode_batch_tokens)

    def __call__(self, task: EmbedTask) -> EmbeddedChunk:
        encoder = load_encoder(self.model, Path(self.models_dir), self.device, self.batch_size,
                               self.backend, self.threads, self.batch_tokens)
        spans, vectors = embed_passages(encoder, task.texts, self.long_texts)
        return EmbeddedChunk(task, spans, vectors)


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
        self.paths, self.store = open_store(settings.collections_dir, collection, create=True,
                                            durable=False)
        default_chunk = VECTOR_CHUNK_ROWS if options.vectors is not None else settings.chunk_size
        self.chunk_size = options.chunk_size or default_chunk
        self.executor = executor  # None: the options' executor, made and closed by run()
        self.tables: Tables = SERVED  # STAGED once a collection is served: see run()
        self.vectors_sha: str | None = None  # of a --vectors .npy, once hashed
        model = options.model or self.store.get_meta("model_id") or settings.default_model
        self.model_name = None if options.lexical_only else model
        self.spec = resolve_model(self.model_name, settings.models_dir) if self.model_name else None
        self.backend: str = options.backend or settings.backend

    # --- identity --------------------------------------------------------------------------
    def build_id(self, input_sha: str) -> str:
        """Key of what a build stores (documents, chunk files): what went into them.

        Nothing about the index layout; for --vectors, nothing about chunking either, since
        its rows are indexed as they are.
        """
        o = self.options
        shaping = ["vectors"] if o.vectors is not None else [self.chunk_size, o.long_texts,
                                                               self.backend]
        parts = [CHUNK_FORMAT, input_sha, self.spec.weights_sha256 if self.spec else "lexical",
                 o.on_error, *shaping]
        return short_hash(parts)

    def fingerprint(self, build_id: str) -> str:
        o = self.options
        return short_hash([build_id, o.index, o.memory_budget, o.target_recall, o.shards])

    def is_up_to_date(self, fingerprint: str) -> bool:
        current = self.store.get_meta("current_version")
        if self.options.lexical_only:
            return current is None and self.store.get_meta("lexical_fingerprint") == fingerprint
        if current is None:
            return False
        try:
            manifest = read_manifest(self.paths, current)
        except Exception:  # an unreadable manifest means: build again
            return False
        if manifest.get("fingerprint") != fingerprint:
            return False
        damaged = damaged_shards(self.paths.version_dir(current), manifest)
        if damaged:  # what `index check` reports is repaired by building again
            log.warning("version %s is damaged (%s); building it again", current, damaged[0])
        return not damaged

    def input_sha(self) -> str:
        if self.options.vectors is None:
            return sha256_file(resolve_input(self.source))
        ids = self.options.ids or default_ids_path(self.options.vectors)
        self.vectors_sha = sha256_file(self.options.vectors)
        parts = [self.vectors_sha] + ([sha256_file(ids)] if ids.exists() else [])
        return hashlib.sha256("".join(parts).encode()).hexdigest()

    def check_layout(self) -> None:
        """Refuse an impossible layout or budget before any embedding is spent."""
        if self.spec is None:
            return
        from indexing.build import check_shard_settings, working_bytes
        from indexing.layouts import choose_layout

        check_shard_settings(self.options.shards)
        n = self.expected_items or 1
        choice = choose_layout(n, self.dim, self.options.memory_budget, self.options.index,
                               self.options.target_recall, working_bytes=working_bytes(self.dim))
        log.info("expected layout for about %d vectors: %s", n, choice.reason)

    @cached_property
    def expected_items(self) -> int | None:
        """Input lines (or vectors): the progress total and the layout estimate's size."""
        if self.options.vectors is not None:
            return vector_count(self.options.vectors)
        return count_items(self.source)

    @cached_property
    def dim(self) -> int:
        """The model's vector size; embeddings made elsewhere never need the model loaded."""
        if self.options.vectors is not None:
            return embedding_dimension(self.spec, self.settings.models_dir)
        return self.encoder.dim

    @property
    def encoder(self) -> Any:
        return load_settings_encoder(self.model_name,
                                     self.settings.model_copy(update={"backend": self.backend}))

    # --- the run ---------------------------------------------------------------------------
    def run(self) -> BuildReport:
        start = time.perf_counter()
        report = BuildReport(self.paths.name, "up_to_date")
        with exclusive(self.paths):
            build_id, checked = self._identify()
            fingerprint = self.fingerprint(build_id)
            if self.is_up_to_date(fingerprint):
                report.documents = self.store.count_documents()
                return report
            self.check_layout()
            # a collection nothing is served from yet takes the documents as they come (BM25
            # answers meanwhile); any other stages them until its new version is switched in
            first = self.store.get_meta("current_version") is None and not self.store.count_documents()
            direct, started_seq = self.store.start_build(build_id, fingerprint, str(self.source),
                                                         self.spec.model_id if self.spec else None,
                                                         first)
            self.tables = SERVED if direct else STAGED
            chunk_dir = self.paths.builds / build_id
            if self.options.vectors is not None:
                scratch = chunk_dir / "vectors.npy"
                checked = (as_unit_float32(checked, scratch) if checked else
                           convert_parquet(self.options.vectors, self.dim, self.chunk_size, scratch))
                chunks, trained = self._ingest_vectors(build_id, checked, report)
            else:
                chunks, trained = self._ingest_and_embed(build_id, chunk_dir, report), None
            self._finish(build_id, fingerprint, chunks, report, trained, started_seq)
            self.store.finish_build(build_id, report.documents, len(report.issues))
            shutil.rmtree(self.paths.builds, ignore_errors=True)
        report.status = "built"
        report.seconds = time.perf_counter() - start
        return report

    def _ingest_and_embed(self, build_id: str, chunk_dir: Path,
                          report: BuildReport) -> list[VectorChunk]:
        done = self.store.chunk_checksums(build_id)
        files: list[ChunkFile] = []

        def tasks() -> Iterator[EmbedTask]:
            documents = read_documents(self.source, self.settings.max_document_bytes)
            for chunk in chunked(documents, self.chunk_size):
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
        embed = ChunkEmbedder.of(self.model_name, self.settings, self.options.long_texts,
                                 self.backend)
        with self._executor() as executor:
            for done_chunk in executor.map(embed, tasks()):
                task = done_chunk.task
                ids = self.store.replace_passages(task.rowids, done_chunk.spans, build_id,
                                                  self.tables)
                checksum = write_chunk(chunk_dir, task.number, ids, done_chunk.vectors)
                self.store.record_chunk(build_id, task.number, checksum, len(task.rowids))
                self.progress(len(task.rowids))
        return [f for f in files if f.exists()]  # a chunk of skipped lines writes no file

    @contextmanager
    def _executor(self) -> Iterator[Any]:
        """The executor the job was given, or the options' one, made here and closed after."""
        if self.executor is not None:
            yield self.executor
            return
        from indexing.foreach import make_executor

        o = self.options
        executor = make_executor(o.executor, o.workers, o.ray_address)
        try:
            yield executor
        finally:
            executor.close()

    def _identify(self) -> tuple[str, CheckedVectors | None]:
        """The build id, and a ``.npy`` vectors input checked while its bytes are hashed.

        Hashing and checking both run outside the GIL, so on two cores the check of a
        million vectors adds no time to the hash the build id needs anyway.
        """
        vectors = self.options.vectors
        if vectors is None:
            return self.build_id(self.input_sha()), None
        check_vectors_input(vectors)
        if vectors.suffix != ".npy":
            return self.build_id(self.input_sha()), None  # converted once known to be needed
        ids, ids_path = read_npy_ids(vectors, self.options.ids, self.dim)  # fails fast
        with ThreadPoolExecutor(1) as pool:
            sha = pool.submit(self.input_sha)
            checked = check_npy(vectors, ids_path, ids, self.dim, self.chunk_size)
            return self.build_id(sha.result()), checked

    def _ingest_vectors(self, build_id: str, checked: CheckedVectors,
                        report: BuildReport) -> tuple[list[VectorChunk], TrainedIndex | None]:
        """Embeddings made elsewhere: the chunks with their ids, and the index trained on them.

        The documents are stored in a second thread while FAISS trains: training needs no
        ids, and SQLite and FAISS both run outside the GIL.
        """
        chunks, issues = usable_rows(checked)
        self._handle_issues(issues, report, scope="")
        if not chunks:
            return [], None
        from indexing.build import train_index

        o = self.options
        with ThreadPoolExecutor(1) as pool:
            stored = pool.submit(self._store_vector_documents, build_id, checked, chunks,
                                 report)
            trained = train_index(chunks, self.dim, index=o.index, memory_budget=o.memory_budget,
                                  target_recall=o.target_recall)
            return stored.result(), trained

    def _store_vector_documents(self, build_id: str, checked: CheckedVectors,
                                chunks: list[VectorRows], report: BuildReport) -> list[VectorRows]:
        """One document and one passage per id (in a worker thread); the chunks with their ids."""
        started = time.perf_counter()
        all_ids, metadata = checked.ids, checked.metadata
        try:
            for chunk in chunks:
                rows = chunk.rows().tolist()
                self.store.upsert_bare_documents(
                    [all_ids[r] for r in rows], (r + 1 for r in rows), build_id, self.tables,
                    [metadata[r] for r in rows] if metadata else None)
                report.documents += len(rows)
                self.progress(chunk.stop - chunk.start)
            self.store.one_passage_each(build_id, self.tables)
            lines = np.fromiter(chain.from_iterable(self.store.build_lines(build_id, self.tables)),
                                np.int64)
        finally:
            self.store.close()  # this thread's connection
        vector_ids = np.full(len(all_ids), -1, dtype=np.int64)
        vector_ids[lines[0::2] - 1] = passage_id(lines[1::2], 0)
        log.info("stored %d documents in %.1fs", report.documents, time.perf_counter() - started)
        return [replace(c, ids=vector_ids[c.rows()]) for c in chunks]

    def _accept(self, chunk: Chunk, build_id: str, report: BuildReport) -> list[Record]:
        """The chunk's usable records; issues are collected, or raised with ``--on-error fail``."""
        issues = list(chunk.issues)
        seen = self.store.existing_lines([r.id for r in chunk.records], build_id, self.tables)
        records: list[Record] = []
        for record in chunk.records:
            first = seen.get(record.id)
            if first is not None and first != record.line:
                issues.append(InputIssue(record.line,
                                         f"duplicate _id '{record.id}' (first on line {first})"))
                continue
            seen[record.id] = record.line
            records.append(record)
        self._handle_issues(issues, report)
        return records

    def _handle_issues(self, issues: list[InputIssue], report: BuildReport,
                       scope: str = " in this chunk") -> None:
        """Raise the first issue with ``--on-error fail``; otherwise log and collect them."""
        issues.sort(key=lambda i: i.line)
        if issues and self.options.on_error == "fail":
            raise BuildError(
                f"{self.source}: {issues[0]}"
                + (f" (and {len(issues) - 1} more{scope})" if len(issues) > 1 else "")
                + "; fix the input or rerun with --on-error skip"
            )
        for issue in issues:
            log.warning("%s: skipped %s", self.source, issue)
        report.issues.extend(issues)

    def _store_documents(self, records: list[Record], build_id: str) -> list[int]:
        docs = [NewDocument(r.id, r.title, r.text, r.metadata, r.line) for r in records]
        return self.store.upsert_documents(docs, build_id, self.tables) if docs else []

    def _finish(self, build_id: str, fingerprint: str, chunks: list[VectorChunk],
                report: BuildReport, trained: TrainedIndex | None, started_seq: int) -> None:
        if self.spec is None:
            switch_version(self.store, None, None, build=build_id)
            self.store.set_meta(lexical_fingerprint=fingerprint)
            return
        if report.documents == 0:
            raise BuildError(f"{self.source} holds no usable document; nothing to index")
        from indexing.build import build_index

        o = self.options
        manifest = {
            "model_id": self.spec.model_id, "weights_sha256": self.spec.weights_sha256,
            "fingerprint": fingerprint, "build_id": build_id, "input": str(self.source),
            "embedsvc_version": __version__, "documents": report.documents,
        }
        if o.vectors is None:  # how the texts were embedded; vectors made elsewhere don't say
            manifest.update(max_seq_length=self.encoder.max_seq_length, long_texts=o.long_texts,
                            backend=self.backend, space=self.encoder.space)
        number = write_version(
            self.paths,
            lambda folder: {**build_index(chunks, self.dim, folder, index=o.index,
                                          memory_budget=o.memory_budget,
                                          target_recall=o.target_recall, shards=o.shards,
                                          trained=trained),
                            "store": self._keep_vectors(folder, chunks, build_id)},
            manifest,
        )
        if o.switch:
            ids = np.concatenate([chunk.load()[0] for chunk in chunks])
            switch_version(self.store, number, self.spec.model_id, build=build_id,
                           started_seq=started_seq, version_ids=ids,
                           weights_sha256=self.spec.weights_sha256)
            embedded = o.vectors is None
            self.store.set_meta(layout=self.layout_options(), long_texts=o.long_texts,
                                backend=self.backend if embedded else None,
                                space=self.encoder.space if embedded else None)
            prune_versions(self.paths, number, o.keep_versions)
        report.version = number
        report.manifest = read_manifest(self.paths, number)

    def layout_options(self) -> dict[str, Any]:
        """What a compaction of this collection needs to choose its layout as this build did."""
        o = self.options
        return {"index": o.index, "memory_budget": o.memory_budget,
                "target_recall": o.target_recall, "shards": o.shards,
                "keep_versions": o.keep_versions}

    def _keep_vectors(self, folder: Path, chunks: list[VectorChunk],
                      build_id: str) -> list[dict[str, Any]]:
        """The version's full-precision vectors: the chunk files linked in, or the input's."""
        if self.options.vectors is None:
            return [adopt(folder, f"chunk-{c.number:08d}", c.vectors_path, c.ids_path).describe()
                    for c in chunks]
        source = chunks[0].vectors_path  # --vectors rows are one file read in place
        ids = np.full(len(np.load(source, mmap_mode="r", allow_pickle=False)), -1, np.int64)
        for chunk in chunks:
            ids[chunk.rows()] = chunk.ids
        if source.is_relative_to(self.paths.builds):  # normalised into the build's folder
            return [adopt(folder, "input", source, ids=ids).describe()]
        user = {"sha256": self.vectors_sha, "size": source.stat().st_size}
        return [adopt(folder, "input", source, ids=ids, source=user).describe()]
