"""``embedsvc pipeline run|status``: the DAG of ingest, train, evaluate, index and deploy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from embedsvc.cli_common import console, fail, settings_of
from embedsvc.settings import Settings

pipeline_app = typer.Typer(help="Run a DAG of stages: ingest, train, evaluate, index, deploy.",
                           no_args_is_help=True)


def _pipeline_runner(settings: Settings, path: Path) -> Any:
    from embedsvc.pipeline.config import PipelineError, load
    from embedsvc.pipeline.runner import Runner
    from embedsvc.pipeline.stages import KINDS, PARAMS

    try:
        return Runner(load(path, PARAMS), KINDS, settings)
    except PipelineError as exc:
        raise fail(str(exc)) from exc


@pipeline_app.command("run")
def pipeline_run(ctx: typer.Context, path: Annotated[Path, typer.Argument(help="PIPELINE.toml")]) -> None:
    """Run the stages not done yet, in dependency order; a rerun skips finished stages."""
    from embedsvc.pipeline.config import PipelineError

    runner = _pipeline_runner(settings_of(ctx), path)
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
    runner = _pipeline_runner(settings_of(ctx), path)
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
