"""The training side of the pipeline, end to end with real (tiny) models: ``mine_negatives``,
``train``, ``evaluate`` and ``promote`` stages, and a DDP job SIGKILLed in the middle and
started again with the same command.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from embedsvc.cli import app
from embedsvc.settings import Settings
from tests.test_training_model import (  # noqa: F401 - fixtures
    TOL,
    beir_with_train_split,
    max_diff,
    quiet_offline_env,
    tiny_model,
    weights,
)
from training.registry import get_version, promoted_version, register_model

runner = CliRunner()
pytestmark = pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs 2 CPU cores")


def run_pipeline(settings: Settings, path: Path, text: str) -> dict:
    path.write_text(text)
    result = runner.invoke(app, ["--home", str(settings.home), "pipeline", "run", str(path)])
    assert result.exit_code == 0, result.output
    status = runner.invoke(app, ["--home", str(settings.home), "pipeline", "status", str(path), "--json"])
    return {row["stage"]: row for row in json.loads(status.stdout)}


def test_mine_train_evaluate_stages(settings: Settings, mini_beir: Path, tiny_model: Path,  # noqa: F811
                                    tmp_path: Path) -> None:
    data = beir_with_train_split(mini_beir, tmp_path / "beir")
    stages = run_pipeline(settings, tmp_path / "p.toml", f"""
name = "tiny-train"
[stages.ingest]
kind = "ingest"
collection = "c"
input = "{data}"
model = "{tiny_model}"
[stages.mine]
kind = "mine_negatives"
collection = "${{ingest.collection}}"
data = "{data}"
num_negatives = 1
[stages.train]
kind = "train"
data = "${{mine.pairs}}"
name = "tiny"
base_model = "{tiny_model}"
max_steps = 4
batch_size = 8
lr = 1e-3
warmup = 0
save_steps = 2
max_seq_length = 64
[stages.evaluate]
kind = "evaluate"
model = "${{train.model}}"
beir = "{data}"
""")
    mined = [json.loads(line) for line in Path(stages["mine"]["output"]["pairs"]).read_text().splitlines()]
    assert stages["mine"]["output"]["count"] == len(mined) > 0
    assert all(len(row["negative"]) == 1 and row["negative"][0] != row["positive"] for row in mined)
    assert stages["train"]["output"]["model"] == "tiny/v0001"
    card = get_version(settings.models_dir, "tiny/v0001").card
    assert card["train"]["global_step"] == 4 and card["data"]["negatives_per_pair"] == 1
    assert card["args"]["lr"] == 1e-3  # the table's value reached the ranks
    metrics = stages["evaluate"]["output"]["metrics"]
    assert set(metrics) == {"nDCG@10", "MRR@10", "MAP@100", "Recall@100"}


def test_promote_stage_promotes_only_a_better_model(settings: Settings, mini_beir: Path,
                                                    tiny_model: Path, bundled_model: Path,  # noqa: F811
                                                    tmp_path: Path) -> None:
    models = settings.models_dir
    good = register_model(models, "m", bundled_model, {"base_model": {"path": str(tiny_model)}})
    plan = f'[stages.p]\nkind = "promote"\nmodel = "m/v0001"\nbeir = "{mini_beir}"\n'
    first = run_pipeline(settings, tmp_path / "a.toml", 'name = "a"\n' + plan)["p"]["output"]
    assert first["promoted"] is True and "beats its base model" in first["reason"]
    assert promoted_version(models, "m") == "v0001"

    register_model(models, "m", tiny_model, {"base_model": {"path": str(bundled_model)}})
    worse = plan.replace("m/v0001", "m/v0002")
    second = run_pipeline(settings, tmp_path / "b.toml", 'name = "b"\n' + worse)["p"]["output"]
    assert second["promoted"] is False and "does not beat m/v0001" in second["reason"]
    assert second["candidate"]["nDCG@10"] < second["baseline"]["nDCG@10"]
    assert promoted_version(models, "m") == "v0001" and second["model"] == good.ref


def train_command(home: Path, data: Path, model: Path) -> list[str]:
    return [sys.executable, "-m", "embedsvc", "--home", str(home), "train", str(data),
            "--name", "k", "--base-model", str(model), "--nproc", "2", "--batch-size", "8",
            "--max-steps", "24", "--lr", "1e-3", "--warmup", "0", "--save-steps", "3",
            "--logging-steps", "1", "--seed", "3", "--no-eval", "--max-seq-length", "64"]


def first_checkpoint(home: Path) -> Path | None:
    found = sorted(home.glob("training/k/*/checkpoints/checkpoint-*/trainer_state.json"))
    return found[0] if found else None


def test_a_sigkilled_ddp_job_resumes_and_ends_where_an_uninterrupted_one_does(
    mini_beir: Path, tiny_model: Path, bundled_model: Path, tmp_path: Path  # noqa: F811
) -> None:
    from tests.conftest import make_settings

    data = beir_with_train_split(mini_beir, tmp_path / "beir")
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    for home in (killed, whole):
        make_settings(home, bundled_model)
    job = subprocess.Popen(train_command(killed, data, tiny_model), start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while first_checkpoint(killed) is None and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(job.pid, signal.SIGKILL)  # the launcher, torchrun and both ranks at once
    job.wait()
    checkpoint = first_checkpoint(killed)
    assert checkpoint is not None, "the job wrote no checkpoint before it ended"
    run_dir = checkpoint.parents[2]
    assert not (run_dir / "model").exists(), "the job finished before it could be killed"

    again = subprocess.run(train_command(killed, data, tiny_model), capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming from" in again.stderr and "checkpoint-" in again.stderr
    steps = [json.loads(line)["step"] for line in (run_dir / "loss.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 25))  # the killed run's steps after its checkpoint were redone once
    whole_run = subprocess.run(train_command(whole, data, tiny_model), capture_output=True, text=True)
    assert whole_run.returncode == 0, whole_run.stderr[-2000:]
    assert max_diff(weights(killed / "models" / "k" / "v0001"),
                    weights(whole / "models" / "k" / "v0001")) < TOL
