"""The arithmetic of one training step, shared by the loops of our own (FSDP2, parameter
server), so that they train exactly as each other and as the trainer's recipe.

- :func:`global_batches`: the rows of each global batch, a seeded shuffle per epoch;
- :func:`learning_rate`: linear warm-up and decay, a pure function of the step, so a
  resumed run continues exactly;
- :func:`batch_loss`: MultipleNegativesRankingLoss on the rows' columns.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

MAX_GRAD_NORM = 1.0  # as the trainer the DDP path uses


@dataclass
class Outcome:
    """What one of our loops did, as :func:`training.train.write_result` records it.

    Attributes:
        global_step: optimizer steps taken.
        training_loss: mean loss over them.
        details: what this strategy adds to ``train_result.json`` (shard sizes, staleness).
    """

    global_step: int
    training_loss: float
    details: dict[str, Any] = field(default_factory=dict)


def learning_rate(step: int, total: int, warmup: float, peak: float) -> float:
    """Linear warm-up to ``peak`` then linear decay to 0 at ``total``, as the trainer does.

    Args:
        step: the optimizer step about to be taken (0-based).
        total: all steps of the run.
        warmup: a fraction of ``total`` (< 1) or a number of steps.
        peak: the peak learning rate.
    """
    warm = int(math.ceil(warmup * total)) if warmup < 1 else int(warmup)
    if step < warm:
        return peak * step / max(1, warm)
    return peak * max(0.0, (total - step) / max(1, total - warm))


def global_batches(n_rows: int, batch: int, seed: int, steps: int) -> Iterator[list[int]]:
    """Row numbers of each global batch: a seeded shuffle per epoch, incomplete tails dropped."""
    import torch

    per_epoch = n_rows // batch
    if per_epoch == 0:
        raise ValueError(f"{n_rows} pairs are fewer than one global batch of {batch}")
    for step in range(steps):
        epoch, index = divmod(step, per_epoch)
        order = torch.randperm(n_rows, generator=torch.Generator().manual_seed(seed + epoch))
        yield order[index * batch:(index + 1) * batch].tolist()


def total_steps(args: argparse.Namespace, n_rows: int) -> int:
    """``--max-steps`` when given, else the epochs' worth of full global batches."""
    if args.max_steps > 0:
        return args.max_steps
    return max(1, int(args.epochs * (n_rows // args.batch_size)))


def batch_loss(model: Any, loss_fn: Any, columns: dict[str, list[str]], rows: Sequence[int],
               device: Any) -> Any:
    """The loss of the rows (anchor, positive, negatives... columns in the loss's order)."""
    features = []
    for column in columns:
        inputs = model.preprocess([columns[column][i] for i in rows])
        features.append({k: v.to(device) if hasattr(v, "to") else v for k, v in inputs.items()})
    return loss_fn(features, None)


def clip_and_step(model: Any, optimizer: Any, lr: float) -> None:
    """Clip the gradient norm, take one AdamW step at ``lr``, and clear the gradients."""
    import torch

    torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
