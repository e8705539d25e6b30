"""``embedsvc train --federated``: FedAvg on Flower's simulation engine, with the tiny model of
``test_training_model`` (2 BERT layers, hidden 32, dropout off).

Two silos of unequal size (12 and 20 triplets) train 2 rounds of 2 local steps each. The
registered model must equal FedAvg computed here by hand from the same client updates,
weighted by pairs, within the tolerance of the other training tests (1e-5). The control:
the unweighted average of the same updates is farther away than that, so the test can tell
weighting from no weighting.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_training_model import (  # noqa: F401 - fixtures
    TOL,
    cli_home,
    invoke,
    max_diff,
    quiet_offline_env,
    tiny_model,
    triplets,
    weights,
)

pytestmark = pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs 2 CPU cores")

SILOS = (12, 20)
ROUNDS, LOCAL_STEPS, BATCH, LR, SEED = 2, 2, 4, 1e-3, 3


@pytest.fixture(scope="module")
def silos(triplets: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    """A folder of two client silos, hospital-a (12 triplets) and hospital-b (20)."""
    rows = triplets.read_text().splitlines(keepends=True)
    folder = tmp_path_factory.mktemp("silos")
    (folder / "hospital-a.jsonl").write_text("".join(rows[:SILOS[0]]))
    (folder / "hospital-b.jsonl").write_text("".join(rows[SILOS[0]:sum(SILOS)]))
    return folder


def federated_args(data: Path, model: Path, *extra: str) -> list[str]:
    return [
        "train", str(data), "--name", "fed", "--base-model", str(model), "--federated",
        "--rounds", str(ROUNDS), "--local-steps", str(LOCAL_STEPS), "--batch-size", str(BATCH),
        "--lr", str(LR), "--warmup", "0", "--seed", str(SEED), "--max-seq-length", "64", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def federated_run(silos: Path, tiny_model: Path, mini_beir: Path,  # noqa: F811
                  tmp_path_factory: pytest.TempPathFactory, bundled_model: Path) -> dict:
    """The CLI's federated run over the two silos, evaluated each round on mini_beir."""
    import embedsvc.settings
    from embedsvc.settings import use_settings
    from tests.conftest import make_settings

    home = tmp_path_factory.mktemp("fed-home")
    saved = embedsvc.settings._current
    use_settings(make_settings(home, bundled_model))
    try:
        result = invoke(home, federated_args(silos, tiny_model, "--partition", "folders",
                                             "--eval-data", str(mini_beir)))
    finally:
        embedsvc.settings._current = saved
    assert result.exit_code == 0, result.output
    version = home / "models" / "fed" / "v0001"
    return {"output": result.output, "version": version,
            "card": json.loads((version / "card.json").read_text())}


def client_update(model, loss_fn, columns: dict, start: dict, server_round: int, client: int) -> dict:
    from training.federated import local_update, parameters, set_parameters

    args = argparse.Namespace(lr=LR, weight_decay=0.01, rounds=ROUNDS, local_steps=LOCAL_STEPS,
                              batch_size=BATCH, seed=SEED, warmup=0.0)
    set_parameters(model, start)
    local_update(model, loss_fn, columns, args, server_round, client)
    return {k: v.clone() for k, v in parameters(model).items()}


def fedavg_by_hand(model_path: Path, silos: Path, weighted: bool) -> dict:
    """Two rounds of FedAvg in this process, from the same client update function."""
    import torch
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    from training.federated import parameters
    from training.train import load_dataset, load_model

    torch.set_num_threads(1)
    model = load_model(str(model_path), 64, "cpu")
    model.train()
    loss_fn = MultipleNegativesRankingLoss(model, scale=20.0)
    clients = [load_dataset(path, "train").to_dict() for path in sorted(silos.glob("*.jsonl"))]
    sizes = [len(c["anchor"]) if weighted else 1 for c in clients]
    global_weights = {k: v.clone() for k, v in parameters(model).items()}
    for server_round in range(1, ROUNDS + 1):
        updates = [client_update(model, loss_fn, c, global_weights, server_round, i)
                   for i, c in enumerate(clients)]
        global_weights = {k: sum(n * u[k] for n, u in zip(sizes, updates, strict=True)) / sum(sizes)
                          for k in global_weights}
    return global_weights


def parameters_of(folder: Path) -> dict:
    from training.federated import parameters
    from training.train import load_model

    return parameters(load_model(str(folder), 64, "cpu"))


def test_federated_run_equals_fedavg_by_hand(federated_run: dict, tiny_model: Path,  # noqa: F811
                                             silos: Path) -> None:
    assert max_diff(weights(federated_run["version"]), weights(tiny_model)) > 100 * TOL  # it trained
    trained = parameters_of(federated_run["version"])
    by_hand = fedavg_by_hand(tiny_model, silos, weighted=True)
    assert max(float((trained[k] - v).abs().max()) for k, v in by_hand.items()) < TOL
    unweighted = fedavg_by_hand(tiny_model, silos, weighted=False)
    assert max(float((trained[k] - v).abs().max()) for k, v in unweighted.items()) > 10 * TOL


def test_each_round_is_evaluated_and_the_model_registered(federated_run: dict) -> None:
    card = federated_run["card"]
    assert "registered fed/v0001" in federated_run["output"]
    train = card["train"]
    assert train["strategy"] == "federated" and card["args"]["federated"] is True
    assert card["args"]["clients"] == 2 and train["world_size"] == 2
    assert [r["round"] for r in train["rounds"]] == [1, 2]
    assert all(0 <= r["metrics"]["nDCG@10"] <= 1 for r in train["rounds"])
    assert card["data"]["client_pairs"] == list(SILOS)
    assert set(card["metrics"]["metrics"]) == {"nDCG@10", "MRR@10", "MAP@100", "Recall@100"}
    loss = [json.loads(line) for line in (federated_run["version"] / "loss.jsonl").read_text().splitlines()]
    assert [(r["round"], r["step"]) for r in loss] == [(1, 2), (2, 4)]


def test_raw_texts_never_reach_the_server_process(federated_run: dict, silos: Path) -> None:
    train = federated_run["card"]["train"]
    assert train["server_opened_client_files"] == []
    received = train["received"]
    assert len(received) == ROUNDS * len(SILOS)
    for reply in received:
        assert reply["names_are_parameters"] and reply["dtypes"] == ["float32"]
        assert reply["config_records"] == 0
        assert set(reply["metrics"]) == {"num-examples", "train-loss"}
    assert sorted(r["metrics"]["num-examples"] for r in received) == sorted(SILOS * ROUNDS)


def test_the_open_audit_does_see_a_silo_opened(silos: Path) -> None:
    """The control for the test above: the hook records a silo file this process reads."""
    code = ("import sys; from pathlib import Path; from training.federated import OpenedFiles; "
            "o = OpenedFiles(); folder = Path(sys.argv[1]); "
            "(folder / 'hospital-a.jsonl').read_text(); print(o.under(folder))")
    out = subprocess.run([sys.executable, "-c", code, str(silos)], capture_output=True, text=True, check=True)
    assert str((silos / "hospital-a.jsonl").resolve()) in out.stdout


def test_federated_input_mistakes_are_refused_before_any_work(cli_home: Path, silos: Path,  # noqa: F811
                                                              tiny_model: Path, triplets: Path) -> None:  # noqa: F811
    few = invoke(cli_home, federated_args(triplets, tiny_model, "--clients", "9"))
    assert few.exit_code == 1 and "cannot give 9 clients a batch of 4" in few.output
    bad = invoke(cli_home, federated_args(triplets, tiny_model, "--partition", "dirichlet:-1"))
    assert bad.exit_code == 2 and "dirichlet needs a positive ALPHA" in bad.output
    unknown = invoke(cli_home, federated_args(triplets, tiny_model, "--partition", "random"))
    assert unknown.exit_code == 2 and "unknown partition 'random'" in unknown.output
    fsdp = invoke(cli_home, federated_args(triplets, tiny_model, "--strategy", "fsdp"))
    assert fsdp.exit_code == 1 and "leave --strategy at ddp" in fsdp.output
    mismatch = invoke(cli_home, federated_args(silos, tiny_model, "--partition", "folders", "--clients", "3"))
    assert mismatch.exit_code == 1 and "holds 2 client silos" in mismatch.output
    assert not list((cli_home / "models").glob("fed/v*"))


@pytest.mark.parametrize("scheme", ["iid", "by-query", "dirichlet:0.5"])
def test_partitions_give_every_pair_to_exactly_one_client(scheme: str) -> None:
    from training.pairs import Pair
    from training.partition import parse_partition, split_pairs

    pairs = [Pair(f"query {i // 2}", f"doc {i}", query_id=str(i // 2)) for i in range(200)]
    labels = [i % 4 for i in range(200)]
    parts = split_pairs(pairs, parse_partition(scheme), 5, SEED, 8, labels)
    assert len(parts) == 5 and min(map(len, parts)) >= 8
    assert sorted(row for part in parts for row in part) == list(range(200))
    if scheme == "by-query":  # a query's pairs stay together
        owner = {pairs[row].query_id: i for i, part in enumerate(parts) for row in part}
        assert all(owner[pairs[row].query_id] == i for i, part in enumerate(parts) for row in part)


def test_dirichlet_skews_topics_more_as_alpha_falls() -> None:
    import numpy as np

    from training.pairs import Pair
    from training.partition import parse_partition, split_pairs

    pairs = [Pair(f"q{i}", f"d{i}") for i in range(2000)]
    labels = np.arange(2000) % 10

    def topic_share(alpha: float) -> float:  # mean share of a client's pairs in its top topic
        parts = split_pairs(pairs, parse_partition(f"dirichlet:{alpha}"), 5, SEED, 8, labels)
        return float(np.mean([np.bincount(labels[p], minlength=10).max() / len(p) for p in parts]))

    assert topic_share(0.1) > topic_share(1.0) > topic_share(100.0)
    assert topic_share(100.0) < 0.2  # near iid: 10 topics, about a tenth each
