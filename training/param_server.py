"""Parameter-server training on Ray actors: asynchronous data parallelism.

A server actor holds the weights and AdamW's state and hands out the global batches in
order; each worker actor pulls the weights, computes the gradient of the loss on its batch
and pushes it; the server applies each push as one optimizer step. Workers never wait for
each other, so a gradient may have been computed on weights a few steps old: its
*staleness*. A push staler than ``--staleness`` is refused and its batch handed out again,
so every batch is applied exactly once and no applied gradient is staler than the bound.
With one worker and staleness 0 this is plain single-process training (a test checks it).

When it is the better choice: workers of uneven speed, or that come and go (preemptible
machines), since nothing waits for the slowest; DDP and FSDP are better when workers are
alike and well connected: they take the same steps as one big-batch process, while here each
step moves the whole model to and from the server and stale gradients cost some quality.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections import deque
from typing import Any

from training.steps import Outcome, batch_loss, clip_and_step, global_batches, learning_rate, total_steps

log = logging.getLogger("training.param_server")

WAIT = "wait"  # no batch free now: one is out with a worker and may come back refused


class Server:
    """The weights, the optimizer and the queue of batches; Ray runs its calls one at a time."""

    def __init__(self, args: argparse.Namespace, n_rows: int, steps: int):
        import torch

        from training.train import load_model

        torch.manual_seed(args.seed)
        self.args, self.steps = args, steps
        self.model = load_model(args.base_model, args.max_seq_length, "cpu")
        self.params = dict(self.model.named_parameters())
        self.optimizer = torch.optim.AdamW(self.params.values(), lr=args.lr,
                                           weight_decay=args.weight_decay)
        self.batches = list(global_batches(n_rows, args.batch_size, args.seed, steps))
        self.queue: deque[int] = deque(range(steps))
        self.version = 0  # optimizer steps applied
        self.losses: list[tuple[int, float]] = []
        self.refused = 0
        self.staleness: dict[int, int] = {}

    def pull(self) -> tuple[int, dict[str, Any], int, list[int]] | str | None:
        """(version, weights, batch number, its rows); WAIT; or None when all are applied."""
        if self.version >= self.steps:
            return None
        if not self.queue:
            return WAIT
        number = self.queue.popleft()
        weights = {name: p.detach().clone() for name, p in self.params.items()}
        return self.version, weights, number, self.batches[number]

    def push(self, grads: dict[str, Any], based_on: int, number: int, loss: float) -> bool:
        """Apply the gradient as the next step, unless it is staler than the bound."""
        stale = self.version - based_on
        if stale > self.args.staleness:
            self.queue.appendleft(number)
            self.refused += 1
            return False
        for name, p in self.params.items():
            p.grad = grads[name]
        lr = learning_rate(self.version, self.steps, self.args.warmup, self.args.lr)
        clip_and_step(self.model, self.optimizer, lr)
        self.version += 1
        self.losses.append((self.version, loss))
        self.staleness[stale] = self.staleness.get(stale, 0) + 1
        return True

    def result(self) -> tuple[dict[str, Any], list[tuple[int, float]], int, dict[int, int]]:
        """The final weights, the losses by step, refusals and the staleness histogram."""
        return self.model.state_dict(), self.losses, self.refused, self.staleness


class Worker:
    """A model replica that turns (weights, batch) into a gradient."""

    def __init__(self, args: argparse.Namespace, columns: dict[str, list[str]]):
        import torch
        from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

        from training.train import load_model

        torch.set_num_threads(1)
        self.model = load_model(args.base_model, args.max_seq_length, "cpu")
        self.model.train()
        self.loss_fn = MultipleNegativesRankingLoss(self.model, scale=args.scale)
        self.columns = columns

    def run(self, server: Any) -> int:
        """Pull, compute, push until the server has applied every batch; returns pushes made."""
        import ray
        import torch

        pushes = 0
        while (job := ray.get(server.pull.remote())) is not None:
            if job == WAIT:
                time.sleep(0.005)
                continue
            version, weights, number, rows = job
            with torch.no_grad():
                for name, p in self.model.named_parameters():
                    p.copy_(weights[name])
            loss = batch_loss(self.model, self.loss_fn, self.columns, rows, "cpu")
            loss.backward()
            grads = {name: p.grad if p.grad is not None else torch.zeros_like(p)
                     for name, p in self.model.named_parameters()}
            ray.get(server.push.remote(grads, version, number, float(loss)))
            self.model.zero_grad(set_to_none=True)
            pushes += 1
        return pushes


def run(args: argparse.Namespace) -> tuple[Outcome, dict[str, Any], list[tuple[int, float]]]:
    """Train with a server and ``args.workers`` worker actors.

    Returns:
        The outcome, the final weights (a state dict of the base model's shape) and the loss
        of each applied step.

    Joins the Ray cluster at ``args.ray_address`` when given, else starts a local Ray with a
    CPU per worker (the server, mostly idle, takes none).
    """
    import ray

    from training.train import load_dataset

    columns = load_dataset(args.data, args.split).to_dict()
    steps = total_steps(args, len(columns["anchor"]))
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=args.ray_address, num_cpus=None if args.ray_address else args.workers,
                 include_dashboard=False, log_to_driver=False)
    try:
        server = ray.remote(num_cpus=0)(Server).remote(args, len(columns["anchor"]), steps)
        workers = [ray.remote(num_cpus=1)(Worker).remote(args, columns) for _ in range(args.workers)]
        ray.get([w.run.remote(server) for w in workers])
        state, losses, refused, staleness = ray.get(server.result.remote())
    finally:
        if started_here:
            ray.shutdown()
    mean = sum(loss for _, loss in losses) / max(1, len(losses))
    log.info("%d steps by %d workers; %d pushes refused as staler than %d", steps, args.workers,
             refused, args.staleness)
    return Outcome(steps, mean, {"refused": refused, "staleness": staleness}), state, losses
