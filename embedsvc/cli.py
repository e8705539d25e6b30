"""The ``embedsvc`` command line: serve, search, evaluate, and the command groups
(``index`` in cli_index, ``pipeline`` in cli_pipeline, ``train``/``models`` in training.cli).

Heavy modules (torch, FAISS, the indexing package) are imported inside the commands,
so ``embedsvc --help`` is instant and a typo costs nothing.
"""

from __future__ import annotations

import json
import logging
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.logging import RichHandler
from rich.table import Table

from embedsvc.cli_collections import collections_app
from embedsvc.cli_common import (
    BackendOption,
    console,
    err_console,
    fail,
    settings_of,
    user_errors,
    with_backend,
)
from embedsvc.cli_index import index_app
from embedsvc.cli_ingest import ingest_command
from embedsvc.cli_keys import keys_app
from embedsvc.cli_pipeline import pipeline_app
from embedsvc.cli_snapshots import restore_command, snapshot_command
from embedsvc.settings import Settings, use_settings

app = typer.Typer(help="Embeddings and vector search: index, serve, search, evaluate.",
                  no_args_is_help=True, pretty_exceptions_show_locals=False)
app.add_typer(index_app, name="index")
app.add_typer(collections_app, name="collections")
app.add_typer(pipeline_app, name="pipeline")
app.add_typer(keys_app, name="keys")
app.command("ingest")(ingest_command)
app.command("snapshot")(snapshot_command)
app.command("restore")(restore_command)

# Set by --debug: let unexpected errors show their traceback.
_debug = False


class ModeChoice(StrEnum):
    auto = "auto"
    dense = "dense"
    lexical = "lexical"
    hybrid = "hybrid"


@app.callback()
def main(
    ctx: typer.Context,
    home: Annotated[Path | None, typer.Option(help="Home folder (EMBEDSVC_HOME).")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of unexpected errors.")] = False,
) -> None:
    global _debug
    _debug = debug
    try:
        settings = use_settings(Settings(**({"home": home} if home else {})))
    except ValidationError as exc:  # a setting from the environment the user can fix
        raise fail("; ".join(f"EMBEDSVC_{'_'.join(map(str, e['loc'])).upper()}="
                             f"{e['input']!r}: {e['msg']}" for e in exc.errors())) from exc
    level = "DEBUG" if verbose else settings.log_level
    logging.basicConfig(level=level, format="%(message)s", datefmt="[%X]",
                        handlers=[RichHandler(console=err_console, show_path=False)])
    for noisy in ("httpx", "sentence_transformers", "transformers", "urllib3", "faiss"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    ctx.obj = settings


# --- serve ----------------------------------------------------------------------------------
@app.command()
def serve(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option(help="Bind address (EMBEDSVC_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (EMBEDSVC_PORT).")] = None,
    workers: Annotated[int | None, typer.Option(
        min=1, help="Server processes sharing the home folder (EMBEDSVC_WORKERS).")] = None,
    insecure: Annotated[bool, typer.Option(
        "--insecure", help="Serve beyond loopback without API keys (EMBEDSVC_INSECURE).")] = False,
    backend: BackendOption = None,
) -> None:
    """Serve the HTTP API (docs at /docs). Without API keys it serves loopback only."""
    import os
    import shutil

    import uvicorn

    from embedsvc.api.app import create_app
    from embedsvc.api.auth import check_exposure
    from embedsvc.keys import KeyRing
    from embedsvc.settings import environment_of

    settings = settings_of(ctx)
    asked = {"workers": workers, "insecure": insecure or None,
             "backend": backend.value if backend else None}
    settings = use_settings(settings.model_copy(update={k: v for k, v in asked.items() if v is not None}))
    where = {"host": host or settings.host, "port": port or settings.port,
             "log_level": settings.log_level.lower(),
             "timeout_graceful_shutdown": settings.shutdown_timeout_seconds,
             "access_log": False}  # ours is the JSON line of embedsvc.access
    with user_errors():
        keyed = KeyRing(settings).enabled
    refused = check_exposure(settings, where["host"], keyed)
    if refused:
        raise fail(refused)
    if not keyed:
        logging.getLogger("embedsvc").warning(
            "no API keys configured: the server is UNAUTHENTICATED (anyone reaching %s:%s may "
            "write and delete); see `embedsvc keys create`", where["host"], where["port"])
    if settings.workers == 1:
        uvicorn.run(create_app(settings), **where)
        return
    # each worker process builds its app from the environment: hand the settings over,
    # with a fresh folder where the workers merge their metrics
    shared = settings.home / "run" / f"metrics-{where['port']}"  # ours alone: emptied here
    shutil.rmtree(shared, ignore_errors=True)
    shared.mkdir(parents=True)
    settings = use_settings(settings.model_copy(update={"metrics_dir": shared}))
    os.environ.update({**environment_of(settings), "PROMETHEUS_MULTIPROC_DIR": str(shared)})
    uvicorn.run("embedsvc.api.app:create_app", factory=True, workers=settings.workers, **where)


# --- search ---------------------------------------------------------------------------------
@app.command()
def search(
    ctx: typer.Context,
    collection: str,
    query: Annotated[str | None, typer.Argument(help="Text to search for (or give --vector).")] = None,
    vector: Annotated[str | None, typer.Option(
        help="Search by a vector made elsewhere: a JSON array, or @FILE holding one (.json or .npy).",
        show_default=False)] = None,
    k: Annotated[int, typer.Option("--k", "-k", min=1, help="Results to return.")] = 10,
    mode: Annotated[ModeChoice, typer.Option(help="auto, dense, lexical or hybrid.")] = ModeChoice.auto,
    filter: Annotated[str | None, typer.Option(
        "--filter", help='Metadata filter as JSON, e.g. \'{"year": {"$gte": 2015}}\'.')] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the API's response shape.")] = False,
    url: Annotated[str | None, typer.Option(help="Ask a running server instead of the home folder.")] = None,
) -> None:
    """Search a collection, in this process or through a server (--url)."""
    if (query is None) == (vector is None):
        raise fail("give a QUERY or --vector (one of them)")
    where = _parse_json_option("--filter", filter)
    asked = query if vector is None else _read_vector(vector)
    data = _search_remote(url, collection, asked, k, mode.value, where) if url else \
        _search_local(settings_of(ctx), collection, asked, k, mode.value, where)
    if as_json:
        console.print_json(json.dumps(data))
        return
    shown = repr(query) if query is not None else "a vector"
    table = Table(title=f"{collection}: {shown} ({data['mode']}"
                  + (f", fallback {data['fallback']})" if data["fallback"] else ")"))
    for column in ("#", "score", "id", "title"):
        table.add_column(column)
    for rank, hit in enumerate(data["hits"], 1):
        table.add_row(str(rank), f"{hit['score']:.4f}", hit["id"], hit["title"][:80])
    console.print(table)


def _parse_json_option(name: str, value: str | None) -> dict | None:
    if value is None:
        return None
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise fail(f"{name}: not valid JSON ({exc.msg} at column {exc.colno})") from exc
    if not isinstance(parsed, dict):
        raise fail(f"{name}: give a JSON object such as '{{\"year\": 2020}}'")
    return parsed


def _read_vector(value: str) -> list[float]:
    """``--vector``: a JSON array, or ``@FILE`` (a JSON array, or a 1-d ``.npy``)."""
    import numpy as np

    text = value
    if value.startswith("@"):
        path = Path(value[1:])
        try:
            if path.suffix == ".npy":
                return np.load(path, allow_pickle=False).astype(float).ravel().tolist()
            text = path.read_text(encoding="utf-8")
        except (OSError, ValueError) as exc:
            raise fail(f"--vector: cannot read {path}: {exc}") from exc
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as exc:
        raise fail(f"--vector: not valid JSON ({exc.msg} at column {exc.colno})") from exc
    if not isinstance(parsed, list) or not parsed or not all(
            isinstance(x, int | float) and not isinstance(x, bool) for x in parsed):
        raise fail("--vector: give a JSON array of numbers, e.g. '[0.1, -0.2, 0.3]'")
    return [float(x) for x in parsed]


def _search_local(settings: Settings, collection: str, query: str | list[float], k: int, mode: str,
                  where: dict | None) -> dict:
    from embedsvc.search.filters import compile_filter
    from embedsvc.service import local_searcher, unit_vectors_of

    with user_errors():
        compiled = compile_filter(where, settings.max_filter_depth,
                                  settings.max_filter_conditions) if where else None
        searcher = local_searcher(settings, collection)
        if isinstance(query, str):
            result = searcher.search(query, k, mode, where=compiled)
        else:
            if mode not in ("auto", "dense"):
                raise ValueError(f"--mode {mode} needs a text query; a vector searches densely")
            vector = unit_vectors_of(searcher, settings.models_dir, [query], ["--vector"])[0]
            result = searcher.search_vector(vector, k, where=compiled)
    return {"collection": collection, "mode": result.mode, "fallback": result.fallback,
            "index_version": result.index_version, "took_ms": result.took_ms,
            "hits": [h.model_dump() for h in result.hits]}


def _search_remote(url: str, collection: str, query: str | list[float], k: int, mode: str,
                   where: dict | None) -> dict:
    from embedsvc.client import Client, EmbedsvcError

    text, vector = (query, None) if isinstance(query, str) else (None, query)
    try:
        with Client(url) as client:
            return client.search(collection, text, k=k, mode=mode, filter=where,
                                 vector=vector).model_dump()
    except EmbedsvcError as exc:
        raise fail(exc.message) from exc


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
    backend: BackendOption = None,
) -> None:
    """nDCG@10, MRR@10, MAP@100 and Recall@100 of a collection, or of a model alone, on BEIR."""
    if (collection is None) == (model is None):
        raise fail("name a COLLECTION to evaluate, or a model with --model (not both)")
    settings = with_backend(settings_of(ctx), backend)
    with user_errors():
        if model is not None:
            from embedsvc.encoders import resolve_model
            from training.evaluate import evaluate_model

            spec = resolve_model(model, settings.models_dir)
            result = evaluate_model(spec.path, beir, split)
            metrics = {**result.metrics, "queries": float(result.queries)}
            subject = spec.model_id
        else:
            from embedsvc.evaluation import evaluate_collection
            from embedsvc.service import local_searcher

            metrics = evaluate_collection(local_searcher(settings, collection), beir, split, mode.value)
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


def run() -> None:
    """The ``embedsvc`` command: an unexpected error is one line (and exit code 1), its
    traceback only with ``--debug``; errors a user can fix never have one."""
    try:
        app(prog_name="embedsvc")
    except Exception as exc:  # noqa: BLE001 - the last line of defence of a command line tool
        if _debug:
            raise
        err_console.print(f"error: {type(exc).__name__}: {exc}", markup=False, highlight=False)
        err_console.print("(an unexpected error: run again with --debug for the traceback, and "
                          "please report it)", style="dim")
        sys.exit(1)
