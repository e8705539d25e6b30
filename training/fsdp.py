"""Sharded data-parallel training with torch's own FSDP2, on CPU (gloo) as on GPU (nccl).

Why not the trainer the DDP path uses: accelerate turns FSDP on only for accelerators and on
CPU silently trains with DDP. ``torch.distributed.fsdp.fully_shard`` has no such limit, so
this is a small training loop of our own around it:

- each transformer layer is one shard unit and the root holds the rest (embeddings,
  pooling); every rank keeps 1/N of each parameter and of AdamW's state, and a layer is
  gathered only while it runs;
- the loss is sentence-transformers' MultipleNegativesRankingLoss with the in-batch
  candidates gathered from every rank, and gradients are averaged over ranks, so N ranks
  with B/N rows each take the same step as one process with the global batch B;
- the global batches are a seeded shuffle per epoch, cut the same way on every rank (rank r
  takes the r-th slice), so step k sees the same rows whatever the number of ranks;
- checkpoints are ``torch.distributed.checkpoint`` folders (each rank writes its shards)
  named ``checkpoint-<step>`` with the same ``trainer_state.json`` marker the trainer
  writes, so :func:`training.train.last_checkpoint` finds the newest complete one; the
  learning rate is a pure function of the step, so a resumed run continues exactly;
- the final model is gathered to rank 0 and saved as a normal sentence-transformers folder.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from embedsvc.files import write_json
from training.steps import Outcome, batch_loss, clip_and_step, global_batches, learning_rate, total_steps

log = logging.getLogger("training.fsdp")

STATE_FILE = "trainer_state.json"  # written last: a checkpoint without it is incomplete


def shard_model(model: Any, mesh: Any, bf16: bool) -> None:
    """Shard each transformer layer (the classes the model names unsplittable), then the root."""
    import torch
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 \
        else MixedPrecisionPolicy()
    names = set(getattr(model[0].auto_model, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ValueError("cannot tell which layers of this model to shard (no _no_split_modules)")
    for layer in layers:
        fully_shard(layer, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)


def local_sizes(model: Any, optimizer: Any) -> dict[str, int]:
    """Elements of parameters and optimizer state this rank holds (its shards only)."""
    def local(t: Any) -> int:
        return int(t.to_local().numel()) if hasattr(t, "to_local") else int(t.numel())

    params = sum(local(p) for p in model.parameters())
    state = sum(local(v) for s in optimizer.state.values() for v in s.values()
                if hasattr(v, "numel") and v.dim() > 0)
    full = sum(int(p.numel()) for p in model.parameters())
    return {"param_numel": params, "optim_numel": state, "full_param_numel": full}


def save_checkpoint(model: Any, optimizer: Any, folder: Path, step: int, rank: int,
                    keep: int) -> None:
    """Every rank writes its shards; rank 0 marks the folder complete, then prunes old ones."""
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    final = folder / f"checkpoint-{step}"
    tmp = folder / f".checkpoint-{step}.tmp"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
    dist.barrier()
    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp))
    torch.save(torch.get_rng_state(), tmp / f"rng-{rank}.pt")
    dist.barrier()
    if rank == 0:
        write_json(tmp / STATE_FILE, {"global_step": step})
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        done = sorted((p for p in folder.glob("checkpoint-*") if p.name[11:].isdigit()),
                      key=lambda p: int(p.name[11:]))
        for old in done[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()


def load_checkpoint(model: Any, optimizer: Any, checkpoint: Path, rank: int) -> int:
    """Load this rank's shards (and its random state); returns the checkpoint's step."""
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    # A parameter that never had a gradient (BERT's pooler under mean pooling) has no AdamW
    # state in the checkpoint; it keeps the fresh one, as the uninterrupted run does.
    dcp.load(state, checkpoint_id=str(checkpoint),
             planner=dcp.DefaultLoadPlanner(allow_partial_load=True))
    set_state_dict(model, optimizer, model_state_dict=state["model"],
                   optim_state_dict=state["optim"])
    rng = checkpoint / f"rng-{rank}.pt"
    if rng.is_file():
        torch.set_rng_state(torch.load(rng))
    return int(json.loads((checkpoint / STATE_FILE).read_text())["global_step"])


def run(args: argparse.Namespace, rank: int, world: int, checkpoint: Path | None,
        use_cuda: bool, device: str) -> Outcome | None:
    """Train with FSDP2 on ``world`` ranks; None when stopped early as asked (to resume).

    Args:
        args: the entry point's arguments (``training.train``), options filled in.
        rank, world: this process and how many take part (torchrun's environment).
        checkpoint: the checkpoint to resume from, or None.
        use_cuda, device: where this rank computes.
    """
    import torch
    import torch.distributed as dist
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from torch.distributed.device_mesh import init_device_mesh

    from training.train import CHECKPOINTS, load_dataset, load_model

    if args.batch_size % world:
        raise ValueError(f"--batch-size {args.batch_size} is not divisible by {world} ranks")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    mesh = init_device_mesh("cuda" if use_cuda else "cpu", (world,))
    torch.manual_seed(args.seed)
    model = load_model(args.base_model, args.max_seq_length, device)
    model.train()
    shard_model(model, mesh, args.bf16 and use_cuda)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    loss_fn = MultipleNegativesRankingLoss(model, scale=args.scale, gather_across_devices=args.gather)
    columns = load_dataset(args.data, args.split).to_dict()
    steps = total_steps(args, len(columns["anchor"]))
    start = load_checkpoint(model, optimizer, checkpoint, rank) if checkpoint else 0
    (args.output_dir / CHECKPOINTS).mkdir(parents=True, exist_ok=True)
    local = args.batch_size // world
    losses: list[float] = []
    for step, rows in enumerate(global_batches(len(columns["anchor"]), args.batch_size, args.seed, steps)):
        if step < start:
            continue
        loss = batch_loss(model, loss_fn, columns, rows[rank * local:(rank + 1) * local], device)
        loss.backward()
        lr = learning_rate(step, steps, args.warmup, args.lr)
        clip_and_step(model, optimizer, lr)
        total = loss.detach().clone()
        dist.all_reduce(total)  # a sum: gloo has no average
        losses.append(float(total) / world)
        if not _after_step(args, model, optimizer, step + 1, steps, rank, losses[-1], lr):
            return None
    shards: list[Any] = [None] * world
    dist.all_gather_object(shards, local_sizes(model, optimizer))
    save_final(model, args, rank)
    return Outcome(steps, sum(losses) / max(1, len(losses)), {"shards": shards})


def _after_step(args: argparse.Namespace, model: Any, optimizer: Any, done: int, steps: int,
                rank: int, loss: float, lr: float) -> bool:
    """Log the loss, checkpoint when due; False when the run is to stop here as asked."""
    from training.train import CHECKPOINTS, append_loss

    if rank == 0 and done % args.logging_steps == 0:
        append_loss(args.output_dir, {"step": done, "loss": loss, "learning_rate": lr})
    stop = args.stop_after_step is not None and args.stop_after_step <= done < steps
    if done % args.save_steps == 0 or done == steps or stop:
        save_checkpoint(model, optimizer, args.output_dir / CHECKPOINTS, done, rank,
                        args.save_total_limit)
    return not stop


def save_final(model: Any, args: argparse.Namespace, rank: int) -> None:
    """Gather the full weights to rank 0 and save them as a sentence-transformers folder."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from training.train import save_gathered

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True,
                                                                cpu_offload=True))
    if rank == 0:
        save_gathered(args, full)
    dist.barrier()
