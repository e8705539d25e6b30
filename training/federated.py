"""Federated fine-tuning with Flower: the pairs stay with their clients, only weights travel.

Each round the server sends the global weights to every client; a client takes
``--local-steps`` AdamW steps on its own pairs (MultipleNegativesRankingLoss, the same
step arithmetic as our other loops, :mod:`training.steps`) and sends back its weights and
how many pairs it holds; the server averages the weights, weighted by pairs (FedAvg), and
evaluates the average on its own held-out set. The learning rate follows one schedule over
all ``rounds x local_steps`` steps, so a federated run and a centralised one of the same
length warm up and decay alike.

It runs on Flower's simulation engine: the server app in this process, each client app in a
Ray worker process that reads only its own silo (``clients/client-NNN.jsonl``). This process
never opens a silo: every file it opens is recorded with an audit hook and written to
``train_result.json`` with a summary of what each client sent (arrays named as the model's
parameters, and two numbers), so a run shows what reached the server.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from itertools import islice
from pathlib import Path
from typing import Any

from training.steps import Outcome, batch_loss, clip_and_step, global_batches, learning_rate

log = logging.getLogger("training.federated")

WEIGHT_KEY = "num-examples"  # FedAvg weights each client by the pairs it holds
SENT_METRICS = (WEIGHT_KEY, "train-loss")


class FederationError(RuntimeError):
    """A client failed, or the run ended without a global model; the message says which."""


def parameters(model: Any) -> dict[str, Any]:
    """The trainable weights: what travels (buffers such as position ids stay as in the base)."""
    return {name: p.detach() for name, p in model.named_parameters()}


def set_parameters(model: Any, weights: dict[str, Any]) -> None:
    """Load travelled weights into the model's parameters, refusing any other set of names."""
    import torch

    params = dict(model.named_parameters())
    if weights.keys() != params.keys():
        raise FederationError(f"weights do not fit the model: {sorted(weights.keys() ^ params.keys())[:5]}")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(weights[name])


def local_update(model: Any, loss_fn: Any, columns: dict[str, list[str]], args: argparse.Namespace,
                 server_round: int, client: int) -> float:
    """One client's round: ``local_steps`` AdamW steps from the weights in ``model``.

    The client walks through its own seeded shuffle of its pairs, continuing each round
    where the last stopped; the optimizer starts fresh each round (clients keep no state).

    Returns:
        The mean loss of the round's steps.
    """
    import torch

    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    total = args.rounds * args.local_steps
    first = (server_round - 1) * args.local_steps
    stream = global_batches(len(columns["anchor"]), args.batch_size, args.seed + client, total)
    losses = []
    for offset, rows in enumerate(islice(stream, first, first + args.local_steps)):
        loss = batch_loss(model, loss_fn, columns, rows, "cpu")
        loss.backward()
        clip_and_step(model, optimizer, learning_rate(first + offset, total, args.warmup, args.lr))
        losses.append(float(loss.detach()))
    return sum(losses) / len(losses)


class ClientTrainer:
    """The model of a worker process, loaded once and shared by the clients it runs (each
    round starts from the global weights anyway), and each client's pairs, read once."""

    _current: ClientTrainer | None = None

    def __init__(self, args: argparse.Namespace):
        import torch
        from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

        from training.train import load_model

        torch.set_num_threads(1)  # one CPU per client, as the simulation reserves
        self.args = args
        self.model = load_model(args.base_model, args.max_seq_length, "cpu")
        self.model.train()
        self.loss_fn = MultipleNegativesRankingLoss(self.model, scale=args.scale)
        self.silos: dict[int, dict[str, list[str]]] = {}

    @classmethod
    def get(cls, args: argparse.Namespace) -> ClientTrainer:
        if cls._current is None:
            cls._current = cls(args)
        return cls._current

    def pairs(self, client: int) -> dict[str, list[str]]:
        """The client's own silo (the only one it reads)."""
        from training.partition import client_file
        from training.train import load_dataset

        if client not in self.silos:
            self.silos[client] = load_dataset(client_file(self.args.data, client), "train").to_dict()
        return self.silos[client]

    def train(self, client: int, weights: dict[str, Any], server_round: int) -> tuple[dict[str, Any], float]:
        """Train a round from the global weights; returns the new weights and the mean loss."""
        set_parameters(self.model, weights)
        loss = local_update(self.model, self.loss_fn, self.pairs(client), self.args, server_round, client)
        return parameters(self.model), loss


def client_app(args: argparse.Namespace) -> Any:
    """The Flower ClientApp: train a round on this node's silo, reply with weights and counts."""
    from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Any) -> Message:
        client = int(context.node_config["partition-id"])
        trainer = ClientTrainer.get(args)
        weights = msg.content["arrays"].to_torch_state_dict()
        new, loss = trainer.train(client, weights, int(msg.content["config"]["server-round"]))
        metrics = MetricRecord({WEIGHT_KEY: len(trainer.pairs(client)["anchor"]), "train-loss": loss})
        return Message(RecordDict({"arrays": ArrayRecord(new), "metrics": metrics}), reply_to=msg)

    return app


class RoundEvaluator:
    """The server's own evaluation of each round's global weights on its held-out BEIR set;
    the last round's is the registered model's (nothing is scored twice)."""

    def __init__(self, args: argparse.Namespace):
        from training.evaluate import EvalSet
        from training.train import load_model

        self.started = time.time()
        self.rounds: list[dict[str, Any]] = []
        self.last: dict[str, Any] | None = None  # EvalResult.as_dict() of the latest round
        self.data = EvalSet.load(args.eval_data, args.eval_split) if args.eval_data is not None else None
        self.model = load_model(args.base_model, args.max_seq_length, "cpu") if self.data else None

    def __call__(self, server_round: int, arrays: Any) -> Any:
        from flwr.app import MetricRecord

        from training.evaluate import evaluate_loaded

        if server_round == 0:
            return None  # the base model: evaluated (and cached) by the launcher
        row: dict[str, Any] = {"round": server_round, "seconds": round(time.time() - self.started, 1)}
        if self.data is not None:
            set_parameters(self.model, arrays.to_torch_state_dict())
            self.model.eval()
            self.last = evaluate_loaded(self.model, self.data).as_dict()
            row["metrics"] = self.last["metrics"]
            log.info("round %d: nDCG@10 %.4f", server_round, row["metrics"]["nDCG@10"])
        self.rounds.append(row)
        return MetricRecord(row.get("metrics") or {})


def audited_fedavg(clients: int, received: list[dict[str, Any]], names: set[str]) -> Any:
    """FedAvg over every client each round, recording what each reply carried.

    A client that fails makes the round fail, rather than the average silently leaving it out.
    """
    from flwr.serverapp.strategy import FedAvg

    class AuditedFedAvg(FedAvg):
        def aggregate_train(self, server_round: int, replies: Any) -> Any:
            replies = list(replies)
            failed = [m for m in replies if m.has_error()]
            if failed:
                raise FederationError(f"round {server_round}: a client failed: {failed[0].error.reason}")
            for msg in replies:
                received.append(describe_reply(server_round, msg.content, names))
            return super().aggregate_train(server_round, replies)

    return AuditedFedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=clients,
                         min_available_nodes=clients, weighted_by_key=WEIGHT_KEY)


def describe_reply(server_round: int, content: Any, names: set[str]) -> dict[str, Any]:
    """What one reply carried: array names (checked against the model's), dtypes, bytes, metrics."""
    arrays = [a for record in content.array_records.values() for a in record.items()]
    return {
        "round": server_round,
        "arrays": len(arrays),
        "names_are_parameters": {name for name, _ in arrays} == names,
        "dtypes": sorted({a.dtype for _, a in arrays}),
        "bytes": sum(len(a.data) for _, a in arrays),
        "config_records": len(content.config_records),
        "metrics": {k: v for record in content.metric_records.values() for k, v in record.items()},
    }


def server_app(args: argparse.Namespace, evaluator: RoundEvaluator, outcome: dict[str, Any]) -> Any:
    """The Flower ServerApp: run FedAvg from the base weights; the result lands in ``outcome``."""
    from flwr.app import ArrayRecord
    from flwr.serverapp import ServerApp

    from training.train import load_model

    app = ServerApp()
    base = load_model(args.base_model, args.max_seq_length, "cpu")
    initial = parameters(base)

    @app.main()
    def main(grid: Any, context: Any) -> None:
        strategy = audited_fedavg(args.clients, outcome.setdefault("received", []), set(initial))
        try:
            result = strategy.start(grid=grid, initial_arrays=ArrayRecord(initial),
                                    num_rounds=args.rounds, evaluate_fn=evaluator)
        except Exception as exc:  # the simulation would only log it: hand it to run()
            outcome["error"] = exc
            return
        outcome["weights"] = {**base.state_dict(), **result.arrays.to_torch_state_dict()}
        outcome["losses"] = {r: float(m["train-loss"]) for r, m in result.train_metrics_clientapp.items()}

    return app


class OpenedFiles:
    """Every file this process opens from now on (an audit hook: it cannot be switched off)."""

    def __init__(self) -> None:
        self.paths: set[str] = set()
        self._lock = threading.Lock()
        sys.addaudithook(self._hook)

    def _hook(self, event: str, hook_args: tuple[Any, ...]) -> None:
        if event == "open" and isinstance(hook_args[0], str | Path):
            with self._lock:
                self.paths.add(str(Path(hook_args[0]).resolve()))

    def under(self, folder: Path) -> list[str]:
        root = str(folder.resolve())
        with self._lock:
            return sorted(p for p in self.paths if p == root or p.startswith(root + os.sep))


def run(args: argparse.Namespace) -> tuple[Outcome, dict[str, Any], list[tuple[int, float]]]:
    """Run the federation on Flower's simulation engine.

    Args:
        args: the entry point's arguments; ``args.data`` is the folder of client silos.

    Returns:
        The outcome (details: rounds, what reached the server, the silo files it opened),
        the final global weights, and each round's mean client loss.
    """
    from flwr.simulation import run_simulation

    logging.getLogger("flwr").propagate = False  # Flower logs through its own handler: once is enough
    opened = OpenedFiles()
    evaluator = RoundEvaluator(args)
    outcome: dict[str, Any] = {}
    resources = {"num_cpus": 1, "num_gpus": 0}
    init_args: dict[str, Any] = {"address": args.ray_address} if args.ray_address else {
        "num_cpus": min(args.clients, os.cpu_count() or 1), "log_to_driver": False}
    run_simulation(server_app=server_app(args, evaluator, outcome), client_app=client_app(args),
                   num_supernodes=args.clients,
                   backend_config={"client_resources": resources, "init_args": init_args})
    if "error" in outcome or "weights" not in outcome:
        raise FederationError(f"the federated run ended without a model: {outcome.get('error', 'no result')}")
    losses = sorted(outcome["losses"].items())
    details = {"rounds": evaluator.rounds, "received": outcome["received"],
               "server_opened_client_files": opened.under(args.data), "final_eval": evaluator.last}
    mean = sum(loss for _, loss in losses) / max(1, len(losses))
    return Outcome(args.rounds * args.local_steps, mean, details), outcome["weights"], losses
