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
from pathlib import Path
from typing import Any

from embedsvc.files import atomic_write, read_json

log = logging.getLogger("training.train")

CHECKPOINTS = "checkpoints"
MODEL_DIR = "model"
LOSS_LOG = "loss.jsonl"
RESULT = "train_result.json"
STRATEGIES = ("ddp", "fsdp")


class TrainError(RuntimeError):
    """Training cannot start (bad model, data or strategy); the message says what to change."""


def build_parser() -> argparse.ArgumentParser:
    """The command line of the entry point (the launcher builds it from the CLI options)."""
    p = argparse.ArgumentParser(prog="training.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="JSONL pairs or a BEIR folder")
    p.add_argument("--split", default="train", help="qrels split, for a BEIR folder")
    p.add_argument("--base-model", required=True, help="sentence-transformers model folder")
    p.add_argument("--output-dir", type=Path, required=True, help="run folder (resumable)")
    p.add_argument("--strategy", choices=STRATEGIES, default="ddp")
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--max-steps", type=int, default=-1, help="overrides --epochs when > 0")
    p.add_argument("--batch-size", type=int, default=32, help="global batch, split over ranks")
    p.add_argument("--lr", type=float, default=3e-5)
    p.add_argument("--warmup", type=float, default=0.1, help="fraction (<1) or number of steps")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--scale", type=float, default=20.0, help="MNRL scale (1 / temperature)")
    p.add_argument("--max-seq-length", type=int, default=None)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--save-steps", type=int, default=100)
    p.add_argument("--save-total-limit", type=int, default=2)
    p.add_argument("--logging-steps", type=int, default=10)
    p.add_argument("--bf16", action="store_true", help="bf16 mixed precision (GPU)")
    p.add_argument(
        "--no-gather",
        action="store_true",
        help="do not gather in-batch negatives across ranks (each rank sees only its own)",
    )
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


def check_strategy(strategy: str, use_cuda: bool) -> None:
    """Refuse FSDP on CPU before any work.

    accelerate turns FSDP on only for accelerator devices; on CPU (gloo) it silently trains
    with DDP instead, which would make ``--strategy fsdp`` a lie, so we say so and stop.

    Args:
        strategy: ``ddp`` or ``fsdp``.
        use_cuda: whether training runs on GPUs.

    Raises:
        TrainError: FSDP was asked for on a machine without CUDA.
    """
    if strategy not in STRATEGIES:
        raise TrainError(f"unknown strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")
    if strategy == "fsdp" and not use_cuda:
        raise TrainError(
            "--strategy fsdp needs CUDA GPUs: accelerate (which the sentence-transformers "
            "trainer runs on) enables FSDP only on accelerators and would silently fall back "
            "to DDP on CPU. Use --strategy ddp here, or run benchmarks/fsdp_gpu.py on a GPU "
            "machine."
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


def wrap_classes(model: Any) -> list[str]:
    """The transformer block classes FSDP wraps one by one (e.g. ``BertLayer``)."""
    auto_model = getattr(model[0], "auto_model", None)
    names = list(getattr(auto_model, "_no_split_modules", None) or [])
    if not names:
        raise TrainError("cannot tell which layers of this model FSDP should shard; use ddp")
    return names


def training_arguments(
    args: argparse.Namespace, world: int, use_cuda: bool, fsdp_wrap: list[str] | None = None
) -> Any:
    """Trainer arguments: per-device batch = global / world, seeded shuffling, full drops."""
    from sentence_transformers import SentenceTransformerTrainingArguments
    from sentence_transformers.base.sampler import BatchSamplers

    if args.batch_size % world:
        raise TrainError(f"--batch-size {args.batch_size} is not divisible by {world} ranks")
    extra: dict[str, Any] = {}
    if args.strategy == "fsdp":
        extra["fsdp"] = True
        extra["fsdp_config"] = {"version": 2, "transformer_layer_cls_to_wrap": fsdp_wrap}
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


def make_callbacks(output_dir: Path, rank: int, stop_after: int | None) -> list[Any]:
    """The loss log (rank 0 writes it) and the optional stop after a given step."""
    from transformers import TrainerCallback

    class LossLog(TrainerCallback):
        """Append each logged loss to ``loss.jsonl``: one JSON object per line."""

        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
            if rank != 0 or not logs or "loss" not in logs:
                return
            row = {"step": state.global_step, "epoch": state.epoch, "time": time.time(), **logs}
            with open(output_dir / LOSS_LOG, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(row) + "\n")

    class StopAfter(TrainerCallback):
        """End training after ``stop_after`` steps, saving a checkpoint there first."""

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
            if stop_after is not None and state.global_step >= stop_after:
                control.should_save = True
                control.should_training_stop = True
            return control

    return [LossLog(), StopAfter()]


def trim_loss_log(output_dir: Path, step: int) -> None:
    """Drop loss lines after ``step``: they belong to work the resumed run will redo."""
    path = output_dir / LOSS_LOG
    if not path.is_file():
        return
    keep = [
        line
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip() and json.loads(line)["step"] <= step
    ]
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


def write_result(args: argparse.Namespace, output: Any, world: int, started: float) -> None:
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
            "args": config,
        },
    )


def save_full_state(args: argparse.Namespace, state_dict: dict, output_dir: str) -> None:
    """Write a gathered (FSDP) full state dict as a sentence-transformers folder.

    sentence-transformers' own save reads the live modules, whose parameters are shards
    under FSDP; so the gathered weights are loaded into a fresh CPU copy of the base model
    and that copy is saved.
    """
    model = load_model(args.base_model, args.max_seq_length, "cpu")
    result = model.load_state_dict({k: v.cpu() for k, v in state_dict.items()}, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise TrainError(
            f"gathered FSDP weights do not fit the base model: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )
    model.save_pretrained(output_dir)


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
            if not self.args.should_save:
                return
            if state_dict is not None and self.is_fsdp_enabled:
                save_full_state(args, state_dict, output_dir or self.args.output_dir)
                return
            super()._save(output_dir, state_dict=state_dict)

    return RankZeroSaveTrainer


def run(args: argparse.Namespace) -> int:
    """Train, checkpointing as it goes; returns 0 when finished or stopped as asked."""
    import torch
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    started = time.time()
    rank, local_rank, world = dist_info()
    use_cuda = torch.cuda.is_available()
    check_strategy(args.strategy, use_cuda)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    device = f"cuda:{local_rank}" if use_cuda else "cpu"
    model = load_model(args.base_model, args.max_seq_length, device)
    dataset = load_dataset(args.data, args.split)
    loss = MultipleNegativesRankingLoss(
        model, scale=args.scale, gather_across_devices=not args.no_gather
    )
    fsdp_wrap = wrap_classes(model) if args.strategy == "fsdp" else None
    checkpoint = resume_point(args, rank)
    trainer = trainer_class(args)(
        model=model,
        args=training_arguments(args, world, use_cuda, fsdp_wrap),
        train_dataset=dataset,
        loss=loss,
        callbacks=make_callbacks(args.output_dir, rank, args.stop_after_step),
    )
    if args.strategy == "fsdp" and not trainer.is_fsdp_enabled:
        raise TrainError("accelerate did not enable FSDP on this machine; use --strategy ddp")
    output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    if args.stop_after_step is not None and output.global_step < trainer.state.max_steps:
        log.info("stopped after step %d as asked; run again to resume", output.global_step)
        return 0
    save_final(trainer, args.output_dir, rank, world)
    if rank == 0:
        write_result(args, output, world, started)
        log.info("finished: %d steps, model in %s", output.global_step, args.output_dir / MODEL_DIR)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and train; a bad model, data or strategy exits 2 with a message.

    Args:
        argv: arguments without the program name; ``sys.argv[1:]`` when None.

    Returns:
        The process exit status.
    """
    from training.pairs import PairsError

    args = build_parser().parse_args(argv)
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
