"""The training commands of the embedsvc CLI: ``train`` and ``models list|show|promote``.

This module is imported whenever the CLI starts, so it imports only typer, rich and the
CLI's shared console at the top; torch, sentence-transformers and the training code are
imported inside the command bodies, and ``embedsvc --help`` stays fast.
``embedsvc/cli.py`` mounts it; ``embedsvc eval --model`` evaluates a model alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from embedsvc.cli_common import console, fail

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


def train_command(
    data: Annotated[Path, typer.Argument(help="BEIR folder (train qrels) or JSONL of pairs")],
    name: Annotated[str, typer.Option(help="registry name of the trained model")] = "finetuned",
    base_model: Annotated[
        str | None, typer.Option(help="model to start from (default: the default model)")
    ] = None,
    split: Annotated[str, typer.Option(help="qrels split to train on")] = "train",
    eval_data: Annotated[
        Path | None, typer.Option(help="BEIR folder to evaluate on (default: DATA if BEIR)")
    ] = None,
    eval_split: Annotated[str, typer.Option(help="qrels split to evaluate on")] = "test",
    no_eval: Annotated[bool, typer.Option("--no-eval", help="skip evaluation")] = False,
    nproc: Annotated[int, typer.Option(help="processes on this node (torchrun)")] = 1,
    nnodes: Annotated[int, typer.Option(help="machines taking part")] = 1,
    rdzv_endpoint: Annotated[
        str | None, typer.Option(help="host:port of the rendezvous (multi-node)")
    ] = None,
    rdzv_id: Annotated[str, typer.Option(help="job id shared by the nodes")] = "embedsvc-train",
    device: Annotated[str, typer.Option(help="auto, cpu or cuda")] = "auto",
    strategy: Annotated[str, typer.Option(help="ddp, or fsdp (GPU only)")] = "ddp",
    epochs: Annotated[float, typer.Option(help="passes over the pairs")] = 3.0,
    max_steps: Annotated[int, typer.Option(help="stop after this many steps (>0)")] = -1,
    batch_size: Annotated[int, typer.Option(help="global batch (split over ranks)")] = 32,
    lr: Annotated[float, typer.Option(help="peak learning rate")] = 3e-5,
    warmup: Annotated[float, typer.Option(help="warm-up: fraction (<1) or steps")] = 0.1,
    max_seq_length: Annotated[int, typer.Option(help="tokens per text")] = 256,
    seed: Annotated[int, typer.Option(help="seed of the shuffling and initialisation")] = 42,
    save_steps: Annotated[int, typer.Option(help="checkpoint every N steps")] = 100,
    logging_steps: Annotated[int, typer.Option(help="loss log every N steps")] = 10,
    mine_negatives: Annotated[
        int, typer.Option(help="hard negatives mined per pair with the base model")
    ] = 0,
    mine_skip_top: Annotated[int, typer.Option(help="top ranks skipped when mining")] = 0,
    mine_corpus: Annotated[
        Path | None, typer.Option(help="BEIR folder searched for negatives (default: DATA)")
    ] = None,
    run_dir: Annotated[
        Path | None, typer.Option(help="run folder (default: fingerprinted)")
    ] = None,
    restart: Annotated[bool, typer.Option("--restart", help="ignore old checkpoints")] = False,
) -> None:
    """Fine-tune a model on pairs under torchrun, evaluate it and register it as a version."""
    from embedsvc.encoders import ModelError
    from embedsvc.settings import get_settings
    from training.launch import LaunchError, LaunchSpec, TrainJob, TrainOptions, run_training_job
    from training.pairs import PairsError
    from training.registry import RegistryError
    from training.train import TrainError

    settings = get_settings()
    if eval_data is None and not no_eval and (data / "qrels" / f"{eval_split}.tsv").is_file():
        eval_data = data
    job = TrainJob(
        data=data, name=name, base_model=base_model or settings.default_model, split=split,
        eval_data=None if no_eval else eval_data, eval_split=eval_split,
        mine_negatives=mine_negatives, mine_skip_top=mine_skip_top, mine_corpus=mine_corpus,
        options=TrainOptions(
            strategy=strategy, epochs=epochs, max_steps=max_steps, batch_size=batch_size, lr=lr,
            warmup=warmup, max_seq_length=max_seq_length, seed=seed, save_steps=save_steps,
            logging_steps=logging_steps,
        ),
        launch=LaunchSpec(nproc=nproc, nnodes=nnodes, rdzv_endpoint=rdzv_endpoint,
                          rdzv_id=rdzv_id, device=device),
        run_dir=run_dir, restart=restart,
    )  # fmt: skip
    try:
        outcome = run_training_job(job, settings.models_dir, settings.home)
    except (LaunchError, PairsError, RegistryError, TrainError, ModelError) as exc:
        raise fail(str(exc)) from exc
    if outcome.version is None:
        _say(f"training finished; the model is saved by rank 0's node ({outcome.run_dir})")
        return
    _say(f"registered {outcome.version.ref} in {outcome.version.path}")
    if outcome.metrics:
        rows = [("base", outcome.base_metrics), (outcome.version.ref, outcome.metrics)]
        console.print(_metrics_table(f"{eval_data} ({eval_split})", rows))


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
