"""``embedsvc index build|info|check``: build a collection's index versions and inspect them."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from embedsvc.cli_common import console, err_console, fail, settings_of, user_errors
from embedsvc.options import typer_command
from indexing.options import BuildOptions

index_app = typer.Typer(help="Build and inspect a collection's indexes.", no_args_is_help=True)


_BUILD_ARGS = [
    inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context),
    inspect.Parameter("collection", inspect.Parameter.KEYWORD_ONLY, annotation=Annotated[
        str, typer.Argument(help="Collection name (created if missing).")]),
    inspect.Parameter("input", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
        Path | None, typer.Option("--input", "-i", help="JSONL[.gz], CSV, Parquet, BEIR dir.")]),
]


@index_app.command("build")
@typer_command(BuildOptions, leading=_BUILD_ARGS)
def index_build(options: BuildOptions, ctx: typer.Context, collection: str, input: Path | None) -> None:
    """Read the input as a stream of chunks, store and embed each, and build an index version."""
    from indexing.job import BuildJob

    settings = settings_of(ctx)
    with user_errors():
        job = BuildJob(settings, collection, input, options)
        with _progress() as progress:
            task = progress.add_task(f"indexing {collection}", total=job.expected_items)
            job.progress = lambda n: progress.advance(task, n)
            report = job.run()
    _print_build(report)


@index_app.command("info")
def index_info(
    ctx: typer.Context,
    collection: str,
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON.")] = False,
) -> None:
    """The served index version: layout, parameters, recall, size, build time, model."""
    from embedsvc.collection import open_store, read_manifest
    from indexing.versions import existing_versions

    settings = settings_of(ctx)
    with user_errors():
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
                "build_seconds", "reason", "model_id", "weights_sha256", "backend", "space"):
        if manifest and key in manifest:
            table.add_row(key, str(manifest[key]))
    if manifest:
        table.add_row("shards", str(len(manifest["shards"])))
    console.print(table)


@index_app.command("compact")
def index_compact(ctx: typer.Context, collection: str) -> None:
    """Fold the fresh segment and deleted vectors into a new version (no re-embedding).

    Runs here when no server leads the collection; otherwise the server runs it and this
    waits for it, showing its progress.
    """
    import time

    from embedsvc.collection import open_store
    from embedsvc.live import jobs
    from embedsvc.live.lease import process_identity, release, try_acquire
    from embedsvc.live.worker import run_job

    settings = settings_of(ctx)
    with user_errors():
        _, store = open_store(settings.collections_dir, collection)
        job = jobs.submit(store, collection, "compact")
        me = process_identity()
        if try_acquire(store, me, settings.lease_seconds):
            try:
                claimed = jobs.claim(store, collection, me)
                job = run_job(claimed, store, settings) if claimed else job
            finally:
                release(store, me)
        with err_console.status(f"compaction {job.id} runs on the server leading {collection}") as status:
            while job.state not in (jobs.DONE, jobs.FAILED):
                time.sleep(0.2)
                job = jobs.get(store, collection, job.id) or job
                status.update(f"compaction {job.id}: {job.phase or job.state} "
                              f"({job.progress:.0%})")
    if job.state == jobs.FAILED:
        raise fail(f"compaction failed: {job.error}")
    result = job.result
    if result.get("status") == "nothing_to_do":
        console.print(f"[green]{collection}[/]: nothing to compact (no fresh or deleted vectors)")
        return
    console.print(f"[green]compacted {collection}[/] into version {result.get('version')}: "
                  f"{result.get('folded', 0)} fresh vectors folded in, {result.get('dropped', 0)} "
                  f"deleted ones dropped, {result.get('count', 0)} vectors ({result.get('layout')}) "
                  f"in {result.get('seconds', 0):.2f}s")


@index_app.command("check")
def index_check(ctx: typer.Context, collection: str) -> None:
    """Verify that SQLite and the FAISS files agree (ids, counts, model, checksums)."""
    from embedsvc.collection import open_store
    from indexing.check import check_collection

    settings = settings_of(ctx)
    with user_errors():
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
                  f"{report.chunks_reused} chunks reused, "
                  + (f"index version {report.version}" if report.version else "lexical only"))
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
