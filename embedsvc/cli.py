"""The ``embedsvc`` command line: build indexes, serve, search, evaluate.

Heavy modules (torch, FAISS, the indexing package) are imported inside the commands,
so ``embedsvc --help`` is instant and a typo costs nothing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table
from rich.text import Text

from embedsvc.settings import Settings, use_settings

app = typer.Typer(help="Embeddings and vector search: index, serve, search, evaluate.",
                  no_args_is_help=True, pretty_exceptions_show_locals=False)
index_app = typer.Typer(help="Build and inspect a collection's indexes.", no_args_is_help=True)
app.add_typer(index_app, name="index")
pipeline_app = typer.Typer(help="Run a DAG of stages: ingest, train, evaluate, index, deploy.",
                           no_args_is_help=True)
app.add_typer(pipeline_app, name="pipeline")

console = Console()
err_console = Console(stderr=True, soft_wrap=True)


class ModeChoice(StrEnum):
    auto = "auto"
    dense = "dense"
    lexical = "lexical"
    hybrid = "hybrid"


class OnErrorChoice(StrEnum):
    skip = "skip"
    fail = "fail"


def _settings(ctx: typer.Context) -> Settings:
    return ctx.obj


@app.callback()
def main(
    ctx: typer.Context,
    home: Annotated[Path | None, typer.Option(help="Home folder (EMBEDSVC_HOME).")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    settings = use_settings(Settings(**({"home": home} if home else {})))
    level = "DEBUG" if verbose else settings.log_level
    logging.basicConfig(level=level, format="%(message)s", datefmt="[%X]",
                        handlers=[RichHandler(console=err_console, show_path=False)])
    for noisy in ("httpx", "sentence_transformers", "transformers", "urllib3", "faiss"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    ctx.obj = settings


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print a user's error (never read as markup: messages hold brackets) and exit 1."""
    err_console.print(Text.assemble(("error: ", "bold red"), message))
    return typer.Exit(code)


# --- index ----------------------------------------------------------------------------------
class LongTextsChoice(StrEnum):
    split = "split"
    truncate = "truncate"


class ExecutorChoice(StrEnum):
    local = "local"
    process = "process"
    ray = "ray"


@index_app.command("build")
def index_build(
    ctx: typer.Context,
    collection: Annotated[str, typer.Argument(help="Collection name (created if missing).")],
    input: Annotated[Path | None, typer.Option("--input", "-i", help="JSONL[.gz], CSV, Parquet, BEIR dir.")] = None,
    vectors: Annotated[Path | None, typer.Option(help="Embeddings made elsewhere: .npy (+ ids) or Parquet.")] = None,
    ids: Annotated[Path | None, typer.Option(help="Ids of a .npy --vectors file, one a line.")] = None,
    model: Annotated[str | None, typer.Option(help="Model name or folder (default: EMBEDSVC_DEFAULT_MODEL).")] = None,
    lexical_only: Annotated[bool, typer.Option("--lexical-only", help="BM25 only; no model.")] = False,
    on_error: Annotated[OnErrorChoice, typer.Option(help="Bad input lines: skip or stop.")] = OnErrorChoice.fail,
    chunk_size: Annotated[int | None, typer.Option(min=1, help="Documents per chunk.")] = None,
    long_texts: Annotated[LongTextsChoice, typer.Option(
        help="split: passages cover long texts; truncate: embed the first window only.")
    ] = LongTextsChoice.split,
    executor: Annotated[ExecutorChoice, typer.Option(help="Where chunks are embedded.")] = ExecutorChoice.local,
    workers: Annotated[int, typer.Option(min=1, help="Workers of the process/ray executor.")] = 2,
    ray_address: Annotated[str | None, typer.Option(help="Ray cluster to join (default: local Ray).")] = None,
    index: Annotated[str, typer.Option(help="auto|flat|hnsw|ivf|ivfsq|ivfpq or a FAISS factory string.")] = "auto",
    memory_budget: Annotated[str | None, typer.Option(help="Most memory the index may take, e.g. 4GB.")] = None,
    target_recall: Annotated[float, typer.Option(min=0.1, max=1.0, help="recall@10 to tune for.")] = 0.95,
    shards: Annotated[int | None, typer.Option(min=1, help="Split the index into this many shards.")] = None,
    keep_versions: Annotated[int, typer.Option(min=1, help="Index versions to keep on disk.")] = 2,
) -> None:
    """Read the input as a stream of chunks, store and embed each, and build an index version."""
    from indexing.foreach import make_executor
    from indexing.job import BuildJob, BuildOptions
    from indexing.layouts import parse_bytes
    from indexing.sources import count_items
    from indexing.vector_sources import vector_count

    settings = _settings(ctx)
    with _user_errors():
        options = BuildOptions(
            model=model, lexical_only=lexical_only, on_error=on_error.value, chunk_size=chunk_size,
            index=index, memory_budget=parse_bytes(memory_budget) if memory_budget else None,
            target_recall=target_recall, shards=shards, keep_versions=keep_versions,
            vectors=vectors, ids=ids, long_texts=long_texts.value,
        )
        total = vector_count(vectors) if vectors else count_items(input) if input else None
        runner = make_executor(executor.value, workers, ray_address)
        try:
            with _progress() as progress:
                task = progress.add_task(f"indexing {collection}", total=total)
                job = BuildJob(settings, collection, input, options, executor=runner,
                               progress=lambda n: progress.advance(task, n))
                report = job.run()
        finally:
            runner.close()
    _print_build(report)


@contextmanager
def _user_errors() -> Iterator[None]:
    """Turn the errors a user can fix into one red line and exit code 1, not a traceback."""
    from embedsvc.collection import CollectionError
    from embedsvc.encoders import ModelError
    from embedsvc.search.dense import IndexLoadError
    from embedsvc.search.searcher import SearchConflict
    from indexing.build import BuildError as IndexBuildError
    from indexing.job import BuildError
    from indexing.layouts import LayoutError
    from indexing.sources import SourceError
    from indexing.vector_sources import VectorSourceError

    try:
        yield
    except (BuildError, IndexBuildError, SourceError, VectorSourceError, LayoutError, ModelError,
            CollectionError, SearchConflict, IndexLoadError, FileNotFoundError, ValueError) as exc:
        raise fail(str(exc)) from exc


@index_app.command("info")
def index_info(
    ctx: typer.Context,
    collection: str,
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON.")] = False,
) -> None:
    """The served index version: layout, parameters, recall, size, build time, model."""
    from embedsvc.collection import open_store, read_manifest
    from indexing.versions import existing_versions

    settings = _settings(ctx)
    with _user_errors():
        paths, store = open_store(settings.collections_dir, collection)
        version = store.get_meta("current_version")
        manifest = read_manifest(paths, version) if version is not None else None
    info = {"collection": collection, "documents": store.count_documents(),
            "passages": store.count_passages(), "current_version": version,
            "versions_on_disk": existing_versions(paths), "manifest": manifest}
    if as_json:
        console.print_json(json.dumps(info))
        return
    table = Table(title=f"{collection}: index version {version or 'none (lexical only)'}",
                  show_header=False)
    for key in ("documents", "passages", "versions_on_disk"):
        table.add_row(key, str(info[key]))
    for key in ("layout", "search_params", "count", "dim", "recall_at_10", "index_bytes",
                "build_seconds", "reason", "model_id", "weights_sha256"):
        if manifest and key in manifest:
            table.add_row(key, str(manifest[key]))
    if manifest:
        table.add_row("shards", str(len(manifest["shards"])))
    console.print(table)


@index_app.command("check")
def index_check(ctx: typer.Context, collection: str) -> None:
    """Verify that SQLite and the FAISS files agree (ids, counts, model, checksums)."""
    from embedsvc.collection import open_store
    from indexing.check import check_collection

    settings = _settings(ctx)
    with _user_errors():
        paths, store = open_store(settings.collections_dir, collection)
        problems = check_collection(paths, store, settings.models_dir)
    if problems:
        for problem in problems:
            err_console.print(f"[bold red]problem:[/] {problem}")
        raise typer.Exit(1)
    console.print(f"[green]{collection}: database and index agree[/]")


def _progress() -> _DocsProgress:
    return _DocsProgress(console=err_console)


def _print_build(report: Any) -> None:
    if report.status == "up_to_date":
        console.print(f"[green]{report.collection}[/] is up to date with this input and model "
                      f"({report.documents} documents); nothing to do")
        return
    console.print(f"[green]built {report.collection}[/]: {report.documents} documents in "
                  f"{report.seconds:.1f}s ({report.docs_per_second:.1f} docs/s), "
                  f"{report.chunks_reused} chunks reused, index version {report.version}")
    if report.issues:
        console.print(f"[yellow]skipped {len(report.issues)} input lines[/]:")
        for issue in report.issues[:20]:
            console.print(f"  {issue}")


class _DocsProgress:
    """A rich progress bar showing documents, docs/s and the ETA."""

    def __init__(self, console: Console):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("[cyan]{task.fields[rate]} docs/s"), TimeElapsedColumn(),
            TextColumn("ETA"), TimeRemainingColumn(), console=console,
        )

    def __enter__(self) -> _DocsProgress:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.__exit__(*exc)

    def add_task(self, description: str, total: int | None) -> Any:
        return self._progress.add_task(description, total=total, rate="-")

    def advance(self, task: Any, n: int) -> None:
        self._progress.advance(task, n)
        speed = self._progress.tasks[task].speed
        self._progress.update(task, rate=f"{speed:.1f}" if speed else "-")


# --- serve ----------------------------------------------------------------------------------
@app.command()
def serve(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option(help="Bind address (EMBEDSVC_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (EMBEDSVC_PORT).")] = None,
) -> None:
    """Serve the HTTP API (docs at /docs)."""
    import uvicorn

    from embedsvc.api.app import create_app

    settings = _settings(ctx)
    uvicorn.run(create_app(settings), host=host or settings.host, port=port or settings.port,
                log_level=settings.log_level.lower())


# --- search ---------------------------------------------------------------------------------
@app.command()
def search(
    ctx: typer.Context,
    collection: str,
    query: str,
    k: Annotated[int, typer.Option("--k", "-k", min=1, help="Results to return.")] = 10,
    mode: Annotated[ModeChoice, typer.Option(help="auto, dense, lexical or hybrid.")] = ModeChoice.auto,
    as_json: Annotated[bool, typer.Option("--json", help="Print the API's response shape.")] = False,
    url: Annotated[str | None, typer.Option(help="Ask a running server instead of the home folder.")] = None,
) -> None:
    """Search a collection, in this process or through a server (--url)."""
    data = _search_remote(url, collection, query, k, mode.value) if url else \
        _search_local(_settings(ctx), collection, query, k, mode.value)
    if as_json:
        console.print_json(json.dumps(data))
        return
    table = Table(title=f"{collection}: {query!r} ({data['mode']}"
                  + (f", fallback {data['fallback']})" if data["fallback"] else ")"))
    for column in ("#", "score", "id", "title"):
        table.add_column(column)
    for rank, hit in enumerate(data["hits"], 1):
        table.add_row(str(rank), f"{hit['score']:.4f}", hit["id"], hit["title"][:80])
    console.print(table)


def _search_local(settings: Settings, collection: str, query: str, k: int, mode: str) -> dict:
    from dataclasses import asdict

    with _user_errors():
        result = _local_searcher(settings, collection).search(query, k, mode)
    return {"collection": collection, "mode": result.mode, "fallback": result.fallback,
            "index_version": result.index_version, "took_ms": result.took_ms,
            "hits": [asdict(h) for h in result.hits]}


def _search_remote(url: str, collection: str, query: str, k: int, mode: str) -> dict:
    from dataclasses import asdict

    from embedsvc.client import Client, EmbedsvcError

    try:
        with Client(url) as client:
            return asdict(client.search(collection, query, k=k, mode=mode))
    except EmbedsvcError as exc:
        raise fail(exc.message) from exc


def _local_searcher(settings: Settings, collection: str) -> Any:
    """A searcher whose model lookup blocks: a CLI run wants dense results, not a fallback."""
    from embedsvc.collection import open_store
    from embedsvc.encoders import load_encoder
    from embedsvc.search.searcher import Searcher

    paths, store = open_store(settings.collections_dir, collection)
    return Searcher(paths, store, lambda name: load_encoder(
        name, settings.models_dir, settings.device, settings.encode_batch_size))


# --- eval -----------------------------------------------------------------------------------
@app.command("eval")
def eval_command(
    ctx: typer.Context,
    collection: Annotated[str | None, typer.Argument(help="Collection to evaluate.")] = None,
    beir: Annotated[Path, typer.Option(help="BEIR folder with queries.jsonl and qrels/.")] = Path("data/scifact"),
    split: Annotated[str, typer.Option(help="qrels split to score.")] = "test",
    mode: Annotated[ModeChoice, typer.Option(help="Search mode to evaluate.")] = ModeChoice.dense,
    model: Annotated[str | None, typer.Option(help="Evaluate a model alone (exact search) instead.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON.")] = False,
) -> None:
    """nDCG@10, MRR@10, MAP@100 and Recall@100 of a collection, or of a model alone, on BEIR."""
    if (collection is None) == (model is None):
        raise fail("name a COLLECTION to evaluate, or a model with --model (not both)")
    settings = _settings(ctx)
    with _user_errors():
        if model is not None:
            from embedsvc.encoders import resolve_model
            from training.evaluate import evaluate_model

            spec = resolve_model(model, settings.models_dir)
            result = evaluate_model(spec.path, beir, split)
            metrics = {**result.metrics, "queries": float(result.queries)}
            subject = spec.model_id
        else:
            from embedsvc.evaluation import evaluate_collection

            metrics = evaluate_collection(_local_searcher(settings, collection), beir, split, mode.value)
            subject = f"{collection} ({mode.value})"
    if as_json:
        console.print_json(json.dumps({"subject": subject, "split": split, **metrics}))
        return
    table = Table(title=f"{subject} on {beir.name}/{split}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in metrics.items():
        table.add_row(name, f"{value:.4f}" if name != "queries" else str(int(value)))
    console.print(table)


def _mount_training() -> None:
    """``train`` and ``models`` come from the training package; its CLI module is light
    (typer only), the heavy imports happen inside the commands."""
    from training.cli import models_app, train_command

    app.command("train")(train_command)
    app.add_typer(models_app, name="models", help="The model registry: list, show, promote.")


_mount_training()


# --- pipeline -------------------------------------------------------------------------------
def _pipeline_runner(settings: Settings, path: Path) -> Any:
    from embedsvc.pipeline.config import PipelineError, load
    from embedsvc.pipeline.runner import Runner
    from embedsvc.pipeline.stages import KINDS

    try:
        return Runner(load(path, set(KINDS)), KINDS, settings)
    except PipelineError as exc:
        raise fail(str(exc)) from exc


@pipeline_app.command("run")
def pipeline_run(ctx: typer.Context, path: Annotated[Path, typer.Argument(help="PIPELINE.toml")]) -> None:
    """Run the stages not done yet, in dependency order; a rerun skips finished stages."""
    from embedsvc.pipeline.config import PipelineError

    runner = _pipeline_runner(_settings(ctx), path)
    try:
        runner.run()
    except PipelineError as exc:
        _print_status(runner)
        raise fail(str(exc)) from exc
    _print_status(runner)


@pipeline_app.command("status")
def pipeline_status(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help="PIPELINE.toml")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the states as JSON.")] = False,
) -> None:
    """Each stage's state, duration and output."""
    runner = _pipeline_runner(_settings(ctx), path)
    if as_json:
        console.print_json(json.dumps(runner.status(), default=str))
        return
    _print_status(runner)


def _print_status(runner: Any) -> None:
    table = Table(title=f"pipeline {runner.pipeline.name}")
    for column in ("stage", "kind", "status", "seconds", "output / error"):
        table.add_column(column)
    colours = {"done": "green", "failed": "red", "running": "yellow"}
    for row in runner.status():
        status = row["status"] + (" (skipped)" if row.get("skipped") else "")
        detail = row["error"] if row["status"] == "failed" else json.dumps(row["output"] or {},
                                                                           default=str)[:120]
        table.add_row(row["stage"], row["kind"], f"[{colours.get(row['status'], 'white')}]{status}",
                      f"{row['seconds']:.1f}" if row.get("seconds") is not None else "-", detail)
    console.print(table)
