"""The training commands of the embedsvc CLI: ``train`` and ``models list|show|promote``.

This module is imported whenever the CLI starts, so it imports only typer, rich, the CLI's
shared console and the job's options model (pydantic) at the top; torch,
sentence-transformers and the training code are imported inside the command bodies, and
``embedsvc --help`` stays fast. ``train``'s options are :class:`training.options.TrainJob`'s
fields (see :mod:`embedsvc.options`).
``embedsvc/cli.py`` mounts it; ``embedsvc eval --model`` evaluates a model alone.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from embedsvc.cli_common import console, fail
from embedsvc.options import typer_command
from training.options import TrainJob

models_app = typer.Typer(help="List, inspect and promote trained model versions.")


def _say(message: str) -> None:
    console.print(Text(message), soft_wrap=True)


def _metrics_table(title: str, rows: list[tuple[str, dict[str, float] | None]]) -> Table:
    table = Table(title=title)
    table.add_column("model", no_wrap=True)
    names = next((list(m) for _, m in rows if m), [])
    for name in names:
        table.add_column(name, justify="right")
    for label, metrics in rows:
        if metrics:
            table.add_row(label, *(f"{metrics[n]:.4f}" for n in names))
    return table


@typer_command(TrainJob)
def train_command(job: TrainJob) -> None:
    """Fine-tune a model on pairs under torchrun, evaluate it and register it as a version."""
    from embedsvc.encoders import ModelError
    from embedsvc.settings import get_settings
    from training.launch import LaunchError, run_training_job
    from training.pairs import PairsError
    from training.registry import RegistryError
    from training.train import TrainError

    try:
        outcome = run_training_job(job, get_settings())
    except (LaunchError, PairsError, RegistryError, TrainError, ModelError) as exc:
        raise fail(str(exc)) from exc
    if outcome.version is None:
        _say(f"training finished; the model is saved by rank 0's node ({outcome.run_dir})")
        return
    _say(f"registered {outcome.version.ref} in {outcome.version.path}")
    if outcome.metrics:
        rows = [("base", outcome.base_metrics), (outcome.version.ref, outcome.metrics)]
        console.print(_metrics_table(f"{job.eval_folder()} ({job.eval_split})", rows))


@models_app.command("list")
def list_command(
    name: Annotated[str | None, typer.Argument(help="only this model's versions")] = None,
) -> None:
    """List registered model versions with their main metric; * marks the promoted one."""
    from embedsvc.settings import get_settings
    from training.registry import RegistryError, list_versions, promoted_version

    models_dir = get_settings().models_dir
    try:
        versions = list_versions(models_dir, name)
    except RegistryError as exc:
        raise fail(str(exc)) from exc
    table = Table(title=f"models in {models_dir}")
    for column in ("", "model", "base", "pairs", "nDCG@10", "registered"):
        table.add_column(column, no_wrap=column == "model")
    for v in versions:
        mark = "*" if promoted_version(models_dir, v.name) == v.version else ""
        ndcg = ((v.card.get("metrics") or {}).get("metrics") or {}).get("nDCG@10")
        table.add_row(
            mark, v.ref, str(v.card.get("base_model", {}).get("id", "?")),
            str(v.card.get("data", {}).get("pairs", "?")),
            f"{ndcg:.4f}" if ndcg is not None else "-", str(v.card.get("registered_at", "")),
        )  # fmt: skip
    console.print(table)


@models_app.command("show")
def show_command(
    ref: Annotated[str, typer.Argument(help="name/version, or name for its promoted version")],
) -> None:
    """Show a version's model card."""
    from rich.markdown import Markdown

    from embedsvc.settings import get_settings
    from training.registry import RegistryError, get_version, render_card

    try:
        version = get_version(get_settings().models_dir, ref)
    except RegistryError as exc:
        raise fail(str(exc)) from exc
    console.print(Markdown(render_card(version.card)))
    _say(f"folder: {version.path}")


@models_app.command("promote")
def promote_command(ref: Annotated[str, typer.Argument(help="name/version to promote")]) -> None:
    """Make a version the promoted (served by default) version of its name."""
    from embedsvc.settings import get_settings
    from training.registry import RegistryError, promote

    try:
        version = promote(get_settings().models_dir, ref)
    except RegistryError as exc:
        raise fail(str(exc)) from exc
    _say(f"promoted {version.ref}")
