"""The training entry point that torchrun starts once per rank.

Run it through :mod:`training.launch` (or ``embedsvc train``), which checks the data and the
machine first; by hand: ``torchrun --standalone --nproc-per-node 2 -m training.train --data
pairs.jsonl --base-model MODEL_DIR --output-dir RUN_DIR``.

It is a thin layer over sentence-transformers' own trainer: MultipleNegativesRankingLoss with
the in-batch candidates gathered from every rank (``gather_across_devices``), so N ranks with
B/N examples each compute the same loss and gradient as one process with batch B. The batch
size given is therefore the *global* one. The sampler is shuffled with a fixed seed that is the
same on every rank, so global step k sees the same examples whatever the number of ranks.

Everything a resumed run needs is under ``--output-dir``: ``checkpoints/checkpoint-<step>``
(written every ``--save-steps``), ``loss.jsonl`` (one line per logging step), and when done,
``model/`` (sentence-transformers format) and ``train_result.json``. Starting the same command
again after a crash resumes from the last complete checkpoint.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from embedsvc.files import atomic_write, read_json
from embedsvc.options import OptionsError, add_arguments, from_namespace
from training.options import TrainOptions
from training.steps import learning_rate

log = logging.getLogger("training.train")

CHECKPOINTS = "checkpoints"
MODEL_DIR = "model"
LOSS_LOG = "loss.jsonl"
RESULT = "train_result.json"


class TrainError(RuntimeError):
    """Training cannot start (bad model, data or strategy); the message says what to change."""


def build_parser() -> argparse.ArgumentParser:
    """The command line of the entry point: where the run is, plus :class:`TrainOptions`."""
    p = argparse.ArgumentParser(prog="training.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True,
                   help="JSONL pairs or a BEIR folder; with --federated, the folder of client silos")
    p.add_argument("--split", default="train", help="qrels split, for a BEIR folder")
    p.add_argument("--base-model", required=True, help="sentence-transformers model folder")
    p.add_argument("--output-dir", type=Path, required=True, help="run folder (resumable)")
    add_arguments(p, TrainOptions)  # the recipe: names, defaults and checks in one place
    p.add_argument("--eval-data", type=Path, default=None,
                   help="--federated: BEIR folder the server scores each round on")
    p.add_argument("--eval-split", default="test", help="qrels split of --eval-data")
    p.add_argument("--no-resume", action="store_true", help="ignore existing checkpoints")
    p.add_argument(
        "--stop-after-step",
        type=int,
        default=None,
        help="stop after this global step (and its checkpoint); run again to resume",
    )
    return p


def dist_info() -> tuple[int, int, int]:
    """(rank, local rank, world size) as torchrun sets them; (0, 0, 1) when run directly."""
    return (
        int(os.environ.get("RANK", "0")),
        int(os.environ.get("LOCAL_RANK", "0")),
        int(os.environ.get("WORLD_SIZE", "1")),
    )


def last_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The newest *complete* checkpoint, or None.

    The trainer writes ``trainer_state.json`` last, so a folder without a readable one (a
    process killed while saving) is skipped rather than resumed from.

    Args:
        checkpoint_dir: the folder holding ``checkpoint-<step>`` folders.

    Returns:
        The checkpoint folder with the highest step whose state names that step.
    """
    if not checkpoint_dir.is_dir():
        return None
    found: list[tuple[int, Path]] = []
    for path in checkpoint_dir.glob("checkpoint-*"):
        step = path.name.removeprefix("checkpoint-")
        if not step.isdigit():
            continue
        try:
            state = read_json(path / "trainer_state.json")
        except (OSError, json.JSONDecodeError):
            log.warning("skipping incomplete checkpoint %s", path)
            continue
        if state.get("global_step") == int(step):
            found.append((int(step), path))
    return max(found)[1] if found else None


def load_model(base_model: str, max_seq_length: int | None, device: str) -> Any:
    """The base model, from its local folder."""
    from embedsvc.encoders import ModelError, load_sentence_transformer

    try:
        return load_sentence_transformer(base_model, device, max_seq_length)
    except ModelError as exc:
        raise TrainError(f"base model: {exc}") from exc


def load_dataset(data: Path, split: str) -> Any:
    """The training pairs as a ``datasets.Dataset`` (anchor, positive, negative_1..n)."""
    from datasets import Dataset

    from training.pairs import load_pairs, pairs_columns

    return Dataset.from_dict(pairs_columns(load_pairs(data, split)))


def training_arguments(args: argparse.Namespace, world: int, use_cuda: bool) -> Any:
    """Trainer arguments: per-device batch = global / world, seeded shuffling, full drops."""
    from sentence_transformers import SentenceTransformerTrainingArguments
    from sentence_transformers.base.sampler import BatchSamplers

    if args.batch_size % world:
        raise TrainError(f"--batch-size {args.batch_size} is not divisible by {world} ranks")
    extra: dict[str, Any] = {}
    if world > 1:
        extra["ddp_backend"] = "nccl" if use_cuda else "gloo"
        # The pooler of a BERT checkpoint gets no gradient under mean pooling.
        extra["ddp_find_unused_parameters"] = True
    return SentenceTransformerTrainingArguments(
        output_dir=str(args.output_dir / CHECKPOINTS),
        per_device_train_batch_size=args.batch_size // world,
        num_train_epochs=args.epochs,
        max_steps=args.max_steps,
        learning_rate=args.lr,
        warmup_steps=args.warmup,
        weight_decay=args.weight_decay,
        seed=args.seed,
        data_seed=args.seed,
        # Every rank must contribute a full slice, or the all-gather shapes disagree.
        dataloader_drop_last=True,
        batch_sampler=BatchSamplers.BATCH_SAMPLER,
        save_strategy="steps",
        save_steps=args.save_steps,
        save_total_limit=args.save_total_limit,
        logging_steps=args.logging_steps,
        report_to="none",
        use_cpu=not use_cuda,
        bf16=args.bf16,
        **extra,
    )


def append_loss(output_dir: Path, row: dict[str, Any]) -> None:
    """One line of ``loss.jsonl`` (the step, its loss, ...; the time is added): every
    strategy's loop writes its log through this."""
    with open(output_dir / LOSS_LOG, "a", encoding="utf-8") as fh:
        fh.write(json.dumps({**row, "time": time.time()}) + "\n")


def make_callbacks(output_dir: Path, rank: int, stop_after: int | None) -> list[Any]:
    """The loss log (rank 0 writes it) and the optional stop after a given step."""
    from transformers import TrainerCallback

    class LossLog(TrainerCallback):
        """Append each logged loss to ``loss.jsonl``: one JSON object per line."""

        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
            if rank != 0 or not logs or "loss" not in logs:
                return
            append_loss(output_dir, {"step": state.global_step, "epoch": state.epoch, **logs})

    class StopAfter(TrainerCallback):
        """End training after ``stop_after`` steps, saving a checkpoint there first."""

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
            if stop_after is not None and state.global_step >= stop_after:
                control.should_save = True
                control.should_training_stop = True
            return control

    return [LossLog(), StopAfter()]


def trim_loss_log(output_dir: Path, step: int) -> None:
    """Drop loss lines after ``step``: they belong to work the resumed run will redo.

    A line cut short by a kill is dropped too (it can only be the last one).
    """
    path = output_dir / LOSS_LOG
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    with atomic_write(path) as fh:  # a crash here must not lose the steps kept
        fh.write("".join(line + "\n" for line in keep).encode())


def resume_point(args: argparse.Namespace, rank: int) -> Path | None:
    """The checkpoint to resume from (None for a fresh start); rank 0 trims the loss log."""
    checkpoint_dir = args.output_dir / CHECKPOINTS
    if args.no_resume:
        if rank == 0:
            shutil.rmtree(checkpoint_dir, ignore_errors=True)
            (args.output_dir / LOSS_LOG).unlink(missing_ok=True)
        return None
    checkpoint = last_checkpoint(checkpoint_dir)
    if rank == 0:
        step = int(checkpoint.name.removeprefix("checkpoint-")) if checkpoint else 0
        trim_loss_log(args.output_dir, step)
        if checkpoint:
            log.info("resuming from %s", checkpoint)
    return checkpoint


def save_final(trainer: Any, output_dir: Path, rank: int, world: int) -> None:
    """Save the model to ``model/`` atomically: all ranks take part (FSDP gathers shards)."""
    import torch.distributed as dist

    tmp = output_dir / f".{MODEL_DIR}.tmp"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
    trainer.save_model(str(tmp))
    if world > 1 and dist.is_initialized():
        dist.barrier()
    if rank == 0:
        final = output_dir / MODEL_DIR
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)


def write_result(args: argparse.Namespace, output: Any, world: int, started: float,
                 **extra: Any) -> None:
    """Record what the run did, for the launcher, the model card and the benchmark."""
    from embedsvc.files import write_json

    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    write_json(
        args.output_dir / RESULT,
        {
            "global_step": output.global_step,
            "train_loss": output.training_loss,
            "seconds": round(time.time() - started, 1),
            "world_size": world,
            "strategy": args.strategy,
            "args": config,
            **extra,
        },
    )


def save_full_state(args: argparse.Namespace, state_dict: dict, output_dir: str) -> None:
    """Write a gathered (FSDP) full state dict as a sentence-transformers folder.

    sentence-transformers' own save reads the live modules, whose parameters are shards
    under FSDP; so the gathered weights are loaded into a fresh CPU copy of the base model
    and that copy is saved (see :func:`training.fsdp.save_final`).
    """
    model = load_model(args.base_model, args.max_seq_length, "cpu")
    result = model.load_state_dict({k: v.cpu() for k, v in state_dict.items()}, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise TrainError(
            f"gathered FSDP weights do not fit the base model: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )
    model.save_pretrained(output_dir)


def save_gathered(args: argparse.Namespace, state_dict: dict) -> None:
    """Save full weights as ``<output-dir>/model`` atomically: no half-written model folder."""
    tmp = args.output_dir / f".{MODEL_DIR}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    save_full_state(args, state_dict, str(tmp))
    shutil.rmtree(args.output_dir / MODEL_DIR, ignore_errors=True)
    tmp.rename(args.output_dir / MODEL_DIR)


def trainer_class(args: argparse.Namespace) -> type:
    """sentence-transformers' trainer, writing model files from the saving rank only.

    transformers 5.x calls ``Trainer._save`` on every rank and checks ``should_save`` inside
    it (so sharded weights can be gathered first); sentence-transformers 6.2 overrides
    ``_save`` assuming only rank 0 gets there. Without this guard every rank writes the same
    checkpoint files at once, and a rank can crash writing into a folder rank 0 has already
    renamed or rotated away.
    """
    from sentence_transformers import SentenceTransformerTrainer

    class RankZeroSaveTrainer(SentenceTransformerTrainer):
        def _save(self, output_dir: str | None = None, state_dict: Any = None) -> None:
            if self.args.should_save:
                super()._save(output_dir, state_dict=state_dict)

    return RankZeroSaveTrainer


def run(args: argparse.Namespace) -> int:
    """Train, checkpointing as it goes; returns 0 when finished or stopped as asked."""
    import torch

    started = time.time()
    rank, local_rank, world = dist_info()
    use_cuda = torch.cuda.is_available()
    args.output_dir.mkdir(parents=True, exist_ok=True)
    device = f"cuda:{local_rank}" if use_cuda else "cpu"
    if args.federated:
        return run_federated(args, started)
    if args.strategy == "ps":
        return run_ps(args, started)
    checkpoint = resume_point(args, rank)
    if args.strategy == "fsdp":
        return run_fsdp(args, checkpoint, use_cuda, device, started)
    return run_ddp(args, checkpoint, use_cuda, device, started)


def run_ps(args: argparse.Namespace, started: float) -> int:
    """A parameter server and workers on Ray (:mod:`training.param_server`), one process here."""
    from training import param_server

    def train() -> tuple[Any, dict, list[dict[str, Any]]]:
        outcome, state, losses = param_server.run(args)
        rows = [{"step": step, "loss": loss} for step, loss in losses if step % args.logging_steps == 0]
        return outcome, state, rows

    return run_without_ranks(args, started, train, 1, workers=args.workers)


def run_federated(args: argparse.Namespace, started: float) -> int:
    """Flower's simulation of FedAvg over the client silos (:mod:`training.federated`)."""
    from training import federated

    def train() -> tuple[Any, dict, list[dict[str, Any]]]:
        try:
            outcome, state, losses = federated.run(args)
        except federated.FederationError as exc:
            raise TrainError(str(exc)) from exc
        rows = [{"step": r * args.local_steps, "round": r, "loss": loss} for r, loss in losses]
        return outcome, state, rows

    return run_without_ranks(args, started, train, args.clients, strategy="federated")


def run_without_ranks(args: argparse.Namespace, started: float,
                      train: Callable[[], tuple[Any, dict, list[dict[str, Any]]]], world: int,
                      **extra: Any) -> int:
    """One process whose helpers are Ray actors (parameter server, federated clients): train,
    log each loss row with its learning rate, save the model, record the run.

    It keeps no checkpoints: an interrupted run starts again from the base model.
    """
    (args.output_dir / LOSS_LOG).unlink(missing_ok=True)
    try:
        outcome, state, rows = train()
    except ValueError as exc:
        raise TrainError(str(exc)) from exc
    for row in rows:
        lr = learning_rate(row["step"] - 1, outcome.global_step, args.warmup, args.lr)
        append_loss(args.output_dir, {**row, "learning_rate": lr})
    save_gathered(args, state)
    write_result(args, outcome, world, started, **outcome.details, **extra)
    log.info("finished: %d steps, model in %s", outcome.global_step, args.output_dir / MODEL_DIR)
    return 0


def run_fsdp(args: argparse.Namespace, checkpoint: Path | None, use_cuda: bool, device: str,
             started: float) -> int:
    """FSDP2 (:mod:`training.fsdp`); the result records each rank's share of the state."""
    from training import fsdp

    rank, _, world = dist_info()
    try:
        outcome = fsdp.run(args, rank, world, checkpoint, use_cuda, device)
    except ValueError as exc:
        raise TrainError(str(exc)) from exc
    if outcome is None:
        log.info("stopped after step %d as asked; run again to resume", args.stop_after_step)
        return 0
    if rank == 0:
        write_result(args, outcome, world, started, **outcome.details)
        log.info("finished: %d steps, model in %s", outcome.global_step, args.output_dir / MODEL_DIR)
    return 0


def run_ddp(args: argparse.Namespace, checkpoint: Path | None, use_cuda: bool, device: str,
            started: float) -> int:
    """sentence-transformers' trainer, under DDP when there is more than one rank."""
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    rank, _, world = dist_info()
    model = load_model(args.base_model, args.max_seq_length, device)
    dataset = load_dataset(args.data, args.split)
    loss = MultipleNegativesRankingLoss(
        model, scale=args.scale, gather_across_devices=args.gather
    )
    trainer = trainer_class(args)(
        model=model,
        args=training_arguments(args, world, use_cuda),
        train_dataset=dataset,
        loss=loss,
        callbacks=make_callbacks(args.output_dir, rank, args.stop_after_step),
    )
    output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    if args.stop_after_step is not None and output.global_step < trainer.state.max_steps:
        log.info("stopped after step %d as asked; run again to resume", output.global_step)
        return 0
    save_final(trainer, args.output_dir, rank, world)
    if rank == 0:
        write_result(args, output, world, started)
        log.info("finished: %d steps, model in %s", output.global_step, args.output_dir / MODEL_DIR)
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The arguments, with every recipe option checked and filled in by :class:`TrainOptions`."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        options = from_namespace(TrainOptions, args)
    except OptionsError as exc:
        parser.error(str(exc))
    vars(args).update(options.model_dump())
    return args


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and train; a bad model, data or strategy exits 2 with a message.

    Args:
        argv: arguments without the program name; ``sys.argv[1:]`` when None.

    Returns:
        The process exit status.
    """
    from training.pairs import PairsError

    args = parse_args(argv)
    rank, _, _ = dist_info()
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s [rank {rank}] %(name)s %(levelname)s: %(message)s",
    )
    try:
        return run(args)
    except (TrainError, PairsError) as exc:
        log.error("%s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
