"""``--strategy fsdp`` on CPU (FSDP2 over gloo under torchrun) and ``--strategy ps`` (a
parameter server on Ray), with the tiny model of ``test_training_model`` (2 BERT layers,
hidden 32, dropout off).

The same tolerance as the DDP tests: every parameter within 1e-5 after 8 AdamW steps at lr
1e-3; training moves weights by about 1e-3 and dropping the cross-rank gather by about as
much again, which the control test shows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_training_model import (  # noqa: F401 - fixtures
    TOL,
    loss_steps,
    max_diff,
    quiet_offline_env,
    tiny_model,
    train_tiny,
    triplets,
    weights,
)
from training.train import MODEL_DIR, RESULT

pytestmark = pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs 2 CPU cores")


@pytest.fixture(scope="module")
def fsdp_one(tiny_model: Path, triplets: Path, tmp_path_factory) -> Path:  # noqa: F811
    return train_tiny(tiny_model, triplets, tmp_path_factory.mktemp("fsdp1"), 1, "--strategy", "fsdp")


@pytest.fixture(scope="module")
def fsdp_two(tiny_model: Path, triplets: Path, tmp_path_factory) -> Path:  # noqa: F811
    return train_tiny(tiny_model, triplets, tmp_path_factory.mktemp("fsdp2"), 2, "--strategy", "fsdp")


def test_two_sharded_ranks_match_one_process(tiny_model: Path, fsdp_one: Path, fsdp_two: Path) -> None:  # noqa: F811
    one, two = weights(fsdp_one / MODEL_DIR), weights(fsdp_two / MODEL_DIR)
    assert max_diff(one, weights(tiny_model)) > 100 * TOL  # training did move the weights
    assert max_diff(one, two) < TOL
    steps_one, steps_two = loss_steps(fsdp_one), loss_steps(fsdp_two)
    assert [s for s, _ in steps_two] == list(range(1, 9))
    assert all(abs(a - b) < TOL for (_, a), (_, b) in zip(steps_one, steps_two, strict=True))


def test_without_gathering_sharded_ranks_diverge(tiny_model: Path, triplets: Path,  # noqa: F811
                                                 fsdp_one: Path, tmp_path: Path) -> None:
    """The control: per-rank negatives change training, so the test above can fail."""
    alone = train_tiny(tiny_model, triplets, tmp_path / "nogather", 2, "--strategy", "fsdp", "--no-gather")
    assert max_diff(weights(fsdp_one / MODEL_DIR), weights(alone / MODEL_DIR)) > 100 * TOL


def test_each_rank_holds_half_of_the_parameters_and_optimizer_state(fsdp_two: Path) -> None:
    result = json.loads((fsdp_two / RESULT).read_text())
    assert result["strategy"] == "fsdp" and result["world_size"] == 2
    shards = result["shards"]
    full = shards[0]["full_param_numel"]
    assert len(shards) == 2 and sum(s["param_numel"] for s in shards) >= full
    state = sum(s["optim_numel"] for s in shards)
    assert abs(state - 2 * full) <= 0.01 * full  # AdamW's two moments of (nearly) every parameter
    for shard in shards:
        assert abs(shard["param_numel"] - full / 2) <= 0.02 * full  # dim-0 shards, a little padding
        assert abs(shard["optim_numel"] - state / 2) <= 0.02 * state  # the state is sharded too


def test_sharded_resume_equals_the_uninterrupted_run(tiny_model: Path, triplets: Path,  # noqa: F811
                                                     fsdp_two: Path, tmp_path: Path) -> None:
    run = tmp_path / "resumed"
    train_tiny(tiny_model, triplets, run, 2, "--strategy", "fsdp", "--stop-after-step", "5")
    assert not (run / MODEL_DIR).exists()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["checkpoint-3", "checkpoint-5"]
    (run / "checkpoints" / "checkpoint-7").mkdir()  # a save killed half way: no trainer_state.json
    train_tiny(tiny_model, triplets, run, 2, "--strategy", "fsdp")
    assert max_diff(weights(fsdp_two / MODEL_DIR), weights(run / MODEL_DIR)) < TOL
    assert [s for s, _ in loss_steps(run)] == list(range(1, 9))


def test_the_saved_model_loads_as_a_sentence_transformer(fsdp_two: Path) -> None:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(fsdp_two / MODEL_DIR), device="cpu")
    assert model.encode(["protein kinase"]).shape == (1, 32)


# --- --strategy ps: a parameter server and workers on Ray --------------------------------------
def train_ps(model: Path, data: Path, out: Path, *extra: str) -> Path:
    argv = ["--data", str(data), "--base-model", str(model), "--output-dir", str(out),
            "--batch-size", "8", "--max-steps", "8", "--lr", "1e-3", "--warmup", "0",
            "--logging-steps", "1", "--seed", "3", "--strategy", "ps", *extra]
    done = subprocess.run([sys.executable, "-m", "training.train", *argv], capture_output=True,
                          text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_one_worker_without_staleness_is_single_process_training(
    tiny_model: Path, triplets: Path, fsdp_one: Path, tmp_path: Path  # noqa: F811
) -> None:
    """fsdp_one is one process training on the same global batches with the same recipe."""
    run = train_ps(tiny_model, triplets, tmp_path / "ps1", "--workers", "1", "--staleness", "0")
    assert max_diff(weights(fsdp_one / MODEL_DIR), weights(run / MODEL_DIR)) < TOL
    assert all(abs(a - b) < TOL for (_, a), (_, b) in
               zip(loss_steps(fsdp_one), loss_steps(run), strict=True))
    result = json.loads((run / RESULT).read_text())
    assert (result["refused"], result["staleness"]) == (0, {"0": 8})


def test_asynchronous_workers_stay_within_the_staleness_bound(
    tiny_model: Path, triplets: Path, tmp_path: Path  # noqa: F811
) -> None:
    run = train_ps(tiny_model, triplets, tmp_path / "ps2", "--workers", "2", "--staleness", "1")
    result = json.loads((run / RESULT).read_text())
    assert set(result["staleness"]) <= {"0", "1"} and sum(result["staleness"].values()) == 8
    assert [s for s, _ in loss_steps(run)] == list(range(1, 9))  # every batch applied once
    assert result["workers"] == 2
