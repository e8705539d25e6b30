"""Preparing and launching a training job under torchrun, then registering what it made.

The expensive part runs in torchrun's worker processes; everything that can fail because of
the user's input is checked here first, in the launching process, so a bad ``--nproc``, an
unloadable base model or a pair naming an unknown document is an error in a second, not a
crash in every rank. The prepared pairs (with mined negatives, if asked) are written into the
run folder, so every rank (and every node) trains on exactly the same rows.

The run folder is named by a fingerprint of the data, the base model and the training
arguments: running the same command again after a crash lands in the same folder and resumes
from its last checkpoint.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embedsvc.encoders import (
    ModelError,
    ModelSpec,
    load_sentence_transformer,
    resolve_model,
)
from embedsvc.files import short_hash, write_json
from embedsvc.options import to_argv
from embedsvc.settings import Settings
from training.options import LaunchSpec, TrainJob, TrainOptions
from training.pairs import Pair, fingerprint_pairs, write_pairs_jsonl
from training.partition import load_client_folders, parse_partition, write_clients

__all__ = ["LaunchSpec", "TrainJob", "TrainOptions"]  # defined in training.options

log = logging.getLogger(__name__)

PAIRS_FILE = "pairs.jsonl"
CLIENTS_DIR = "clients"  # --federated: one silo file per client
JOB_FILE = "job.json"
REGISTERED = "registered.json"


class LaunchError(RuntimeError):
    """The job cannot be launched as asked; the message says what to change."""


@dataclass
class PreparedRun:
    """A run folder holding the checked pairs, ready for torchrun."""

    run_dir: Path
    base: ModelSpec
    pairs_path: Path
    data_fingerprint: str
    n_pairs: int
    options: TrainOptions
    data_info: dict[str, Any] = field(default_factory=dict)


def resolve_device(device: str) -> str:
    """``auto`` becomes ``cuda`` when a GPU is visible, else ``cpu``."""
    if device not in ("auto", "cpu", "cuda"):
        raise LaunchError(f"unknown device {device!r}: use auto, cpu or cuda")
    if device == "cpu":
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if device == "cuda":
        raise LaunchError("--device cuda asked for, but no CUDA GPU is visible")
    return "cpu"


def local_slots(device: str) -> int:
    """How many training processes this machine can hold: GPUs, or CPU cores."""
    if device == "cuda":
        import torch

        return torch.cuda.device_count()
    return os.cpu_count() or 1


def check_launch(spec: LaunchSpec, batch_size: int | None = None) -> str:
    """Refuse a launch this machine cannot run, before any work is done.

    Args:
        spec: the launch asked for.
        batch_size: the global batch, which must split evenly over all ranks.

    Returns:
        The device the job will use (``cpu`` or ``cuda``).

    Raises:
        LaunchError: ``nproc`` exceeds the cores/GPUs, ``nnodes > 1`` without a rendezvous
            endpoint, or the batch does not divide over the ranks.
    """
    device = resolve_device(spec.device)
    slots = local_slots(device)
    if spec.nproc > slots:
        what = "GPUs" if device == "cuda" else "CPU cores (os.cpu_count())"
        raise LaunchError(f"--nproc {spec.nproc} is more than the {slots} {what} of this machine")
    if spec.nnodes > 1 and not spec.rdzv_endpoint:
        raise LaunchError("--nnodes > 1 needs --rdzv-endpoint host:port (the same on every node)")
    world = spec.nproc * spec.nnodes
    if batch_size is not None and batch_size % world:
        raise LaunchError(
            f"--batch-size {batch_size} does not split evenly over {world} processes "
            f"({spec.nnodes} node(s) x {spec.nproc}); pick a multiple of {world}"
        )
    return device


def torchrun_command(spec: LaunchSpec, train_argv: Sequence[str]) -> list[str]:
    """The torchrun command line that starts :mod:`training.train` on this node.

    Args:
        spec: processes and rendezvous.
        train_argv: arguments for ``training.train``.

    Returns:
        The argv list; torchrun is run as ``python -m torch.distributed.run`` with this
        interpreter, so the job uses the same environment as the caller.
    """
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(spec.nproc)]
    if spec.nnodes == 1 and not spec.rdzv_endpoint:
        cmd.append("--standalone")  # a private rendezvous on a free port
    else:
        cmd += [
            "--nnodes", str(spec.nnodes), "--rdzv-backend", "c10d",
            "--rdzv-endpoint", str(spec.rdzv_endpoint), "--rdzv-id", spec.rdzv_id,
        ]  # fmt: skip
    return [*cmd, "-m", "training.train", *train_argv]


def torchrun_env(spec: LaunchSpec, device: str) -> dict[str, str]:
    """The environment for torchrun: CPU threads shared fairly between the local ranks."""
    env = dict(os.environ)
    if device == "cpu":
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // spec.nproc))
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("FLWR_TELEMETRY_ENABLED", "0")  # Flower would report usage over the network
    return env


def run_torchrun(spec: LaunchSpec, train_argv: Sequence[str], batch_size: int | None = None) -> int:
    """Check the launch, then run torchrun in the foreground and return its exit status.

    Args:
        spec: processes and rendezvous.
        train_argv: arguments for ``training.train``.
        batch_size: the global batch, checked against the number of processes.

    Returns:
        torchrun's exit status (0 when every rank finished).
    """
    device = check_launch(spec, batch_size)
    cmd = torchrun_command(spec, train_argv)
    log.info("launching: %s", " ".join(cmd))
    return subprocess.run(cmd, env=torchrun_env(spec, device), check=False).returncode


def load_base_model(name: str, models_dir: Path,
                    max_seq_length: int | None = None) -> tuple[ModelSpec, Any]:
    """Resolve and load the base model, so a bad one fails before the launch.

    Raises:
        LaunchError: the name is unknown or the folder does not load as a model.
    """
    try:
        spec = resolve_model(name, models_dir)
    except ModelError as exc:
        raise LaunchError(str(exc)) from exc
    try:
        return spec, load_sentence_transformer(spec.path, "cpu", max_seq_length)
    except ModelError as exc:
        raise LaunchError(f"base model {name!r} cannot be loaded: {exc}") from exc


def check_base_model(name: str, models_dir: Path) -> ModelSpec:
    """The base model's spec, once it is known to load (see :func:`load_base_model`)."""
    return load_base_model(name, models_dir)[0]


def run_fingerprint(data_fingerprint: str, base: ModelSpec, options: TrainOptions) -> str:
    """A short hash naming the run folder: same data, base and options, same folder."""
    return short_hash(
        {"data": data_fingerprint, "base": base.weights_sha256, "options": options.model_dump()}
    )


def prepare_run(
    pairs: Sequence[Pair],
    base: ModelSpec,
    options: TrainOptions,
    runs_dir: Path,
    data_info: dict[str, Any] | None = None,
    run_dir: Path | None = None,
) -> PreparedRun:
    """Write the pairs and the job description into the run folder.

    Args:
        pairs: checked pairs (with negatives, if any).
        base: the base model.
        options: training options.
        runs_dir: parent of run folders (one per fingerprint).
        data_info: where the data came from, for the model card.
        run_dir: use this folder instead of the fingerprinted one.

    Returns:
        The prepared run.
    """
    fingerprint = fingerprint_pairs(pairs)
    run_dir = run_dir or runs_dir / run_fingerprint(fingerprint, base, options)
    run_dir.mkdir(parents=True, exist_ok=True)
    pairs_path = run_dir / PAIRS_FILE
    if not pairs_path.is_file():
        write_pairs_jsonl(pairs, pairs_path)
    prepared = PreparedRun(
        run_dir=run_dir,
        base=base,
        pairs_path=pairs_path,
        data_fingerprint=fingerprint,
        n_pairs=len(pairs),
        options=options,
        data_info=data_info or {},
    )
    job = {
        "base_model": {"id": base.model_id, "path": str(base.path), "sha256": base.weights_sha256},
        "data": {"fingerprint": fingerprint, "pairs": len(pairs), **prepared.data_info},
        "options": options.model_dump(),
        "created": time.time(),
    }
    write_json(run_dir / JOB_FILE, job)
    return prepared


def train_argv(prepared: PreparedRun, restart: bool = False, job: TrainJob | None = None) -> list[str]:
    """The ``training.train`` arguments for a prepared run (of ``job``, when federated)."""
    federated = prepared.options.federated
    data = prepared.run_dir / CLIENTS_DIR if federated else prepared.pairs_path
    argv = [
        "--data", str(data), "--base-model", str(prepared.base.path),
        "--output-dir", str(prepared.run_dir), *to_argv(prepared.options),
    ]  # fmt: skip
    eval_data = job.eval_folder() if job is not None and federated else None
    if eval_data is not None:
        argv += ["--eval-data", str(eval_data), "--eval-split", job.eval_split]
    if restart:
        argv.append("--no-resume")
    return argv


@dataclass
class JobOutcome:
    """What a finished job left: its run folder and, on the node that saved it, the version."""

    run_dir: Path
    version: Any = None  # training.registry.ModelVersion, None on nodes other than rank 0's
    metrics: dict[str, float] | None = None
    base_metrics: dict[str, float] | None = None


def check_job(job: TrainJob) -> str:
    """The checks that need no model or data: launch shape, name, options, eval split.

    Returns:
        The device the job will use.
    """
    from embedsvc.ir_metrics import load_qrels
    from training.registry import check_name

    device = check_launch(job.launch, job.options.batch_size)
    if job.options.strategy == "ps" and job.launch.nproc * job.launch.nnodes > 1:
        raise LaunchError("--strategy ps runs its own workers (--workers N) on Ray: "
                          "leave --nproc and --nnodes at 1")
    if job.options.federated:
        check_federated(job)
    check_name(job.name)
    if job.mine_negatives and not (job.mine_corpus or job.data).is_dir():
        raise LaunchError("mining needs a corpus: train on a BEIR folder or give --mine-corpus")
    eval_data = job.eval_folder()
    if eval_data is not None:
        try:
            load_qrels(eval_data, job.eval_split)
        except FileNotFoundError as exc:
            raise LaunchError(str(exc)) from exc
    return device


def check_federated(job: TrainJob) -> None:
    """--federated runs one process per client on Flower's simulation: no ranks, no mining
    across silos."""
    if job.options.strategy != "ddp":
        raise LaunchError("--federated trains each client in one process: leave --strategy at ddp")
    if job.launch.nproc * job.launch.nnodes > 1:
        raise LaunchError("--federated runs its clients on Ray (--clients N): leave --nproc and --nnodes at 1")
    if job.mine_negatives and parse_partition(job.options.partition).scheme == "folders":
        raise LaunchError("--partition folders keeps each silo as it is: mine negatives inside each "
                          "client's folder before training, not with --mine-negatives")


def split_for_clients(job: TrainJob, pairs: list[Pair], model: Any,
                      silos: list[list[Pair]] | None) -> list[list[Pair]]:
    """Each client's pairs: the silos as given, or ``pairs`` split by ``--partition``."""
    from training.partition import DEFAULT_CLIENTS, PartitionError, split_pairs, topic_labels

    options = job.options
    if silos is not None:
        if options.clients not in (None, len(silos)):
            raise PartitionError(f"--clients {options.clients} but {job.data} holds {len(silos)} "
                                 "client silos: leave --clients out")
        return silos
    partition = parse_partition(options.partition)
    labels = topic_labels(model, pairs, options.seed) if partition.scheme == "dirichlet" else None
    parts = split_pairs(pairs, partition, options.clients or DEFAULT_CLIENTS, options.seed,
                        options.batch_size, labels)
    return [[pairs[i] for i in part] for part in parts]


def mine_for_job(job: TrainJob, pairs: list[Pair], model: Any) -> list[Pair]:
    """Add mined hard negatives found by exact search with the (loaded) base model."""
    from training.evaluate import ExactSearcher
    from training.negatives import mine_hard_negatives
    from training.pairs import load_corpus

    corpus = load_corpus(job.mine_corpus or job.data)
    searcher = ExactSearcher(model, corpus)
    return mine_hard_negatives(
        pairs, searcher, corpus, num_negatives=job.mine_negatives, skip_top=job.mine_skip_top
    )


def prepare_job(job: TrainJob, models_dir: Path, runs_dir: Path, default_model: str) -> PreparedRun:
    """Check everything, load (and mine) the pairs, and write the run folder.

    ``default_model`` is the base when the job names none (``EMBEDSVC_DEFAULT_MODEL``).

    Raises:
        LaunchError, PairsError, RegistryError, TrainError: with what to change, before
            any process is launched.
    """
    from training.pairs import load_pairs

    check_job(job)
    base, model = load_base_model(job.base_model or default_model, models_dir,
                                  job.options.max_seq_length)
    federated = job.options.federated
    silos = None
    if federated and parse_partition(job.options.partition).scheme == "folders":
        silos = load_client_folders(job.data, job.split)
        pairs = [pair for silo in silos for pair in silo]
    else:
        pairs = load_pairs(job.data, job.split)
    if job.mine_negatives:
        pairs = mine_for_job(job, pairs, model)
    clients = split_for_clients(job, pairs, model, silos) if federated else []
    del model  # the launched ranks load their own copy
    info = {
        "source": str(job.data),
        "split": job.split if job.data.is_dir() else None,
        "negatives_per_pair": len(pairs[0].negatives),
        "mined_negatives": job.mine_negatives,
        "mine_skip_top": job.mine_skip_top,
    }
    if not federated:
        return prepare_run(pairs, base, job.options, runs_dir / job.name, info, job.run_dir)
    options = job.options.model_copy(update={"clients": len(clients)})
    info["client_pairs"] = [len(c) for c in clients]
    prepared = prepare_run(pairs, base, options, runs_dir / job.name, info, job.run_dir)
    write_clients(clients, prepared.run_dir / CLIENTS_DIR)
    return prepared


def base_metrics_cached(
    base: ModelSpec, eval_data: Path, split: str, max_seq_length: int | None, cache_dir: Path
) -> dict[str, Any]:
    """Evaluate the base model once per (weights, eval set, split, length) and reuse it."""
    from embedsvc.files import read_json, sha256_file
    from training.evaluate import evaluate_model

    qrels_sha = sha256_file(eval_data / "qrels" / f"{split}.tsv")
    key = short_hash([base.weights_sha256, eval_data.resolve(), qrels_sha, max_seq_length])
    path = cache_dir / f"{key}.json"
    if path.is_file():
        return read_json(path)
    result = evaluate_model(base.path, eval_data, split, max_seq_length).as_dict()
    write_json(path, result)
    return result


def register_run(
    job: TrainJob, prepared: PreparedRun, models_dir: Path, cache_dir: Path
) -> JobOutcome:
    """Evaluate the trained model (and the base), register it, and plot its history."""
    import shutil

    from embedsvc.files import read_json
    from training.evaluate import PLOT_FILE, evaluate_model, plot_training, read_loss_log
    from training.registry import list_versions, register_model, update_card
    from training.train import LOSS_LOG, MODEL_DIR, RESULT

    run_dir = prepared.run_dir
    result = read_json(run_dir / RESULT)
    card: dict[str, Any] = {
        "base_model": {
            "id": prepared.base.model_id, "path": str(prepared.base.path),
            "sha256": prepared.base.weights_sha256,
        },
        "data": {"fingerprint": prepared.data_fingerprint, "pairs": prepared.n_pairs,
                 **prepared.data_info},
        "args": {**prepared.options.model_dump(), "nproc": job.launch.nproc, "nnodes": job.launch.nnodes},
        "train": {k: v for k, v in result.items() if k not in ("args", "final_eval")},
        "run_dir": str(run_dir),
        "libraries": library_versions(),
    }  # fmt: skip
    eval_data = job.eval_folder()
    if eval_data is not None:
        max_len = job.options.max_seq_length
        # a federated run's server scored its last round, these very weights, on this split
        card["metrics"] = result.get("final_eval") or evaluate_model(
            run_dir / MODEL_DIR, eval_data, job.eval_split, max_len
        ).as_dict()
        card["base_metrics"] = base_metrics_cached(
            prepared.base, eval_data, job.eval_split, max_len, cache_dir
        )
    version = register_model(models_dir, job.name, run_dir / MODEL_DIR, card)
    if (run_dir / LOSS_LOG).is_file():
        shutil.copyfile(run_dir / LOSS_LOG, version.path / LOSS_LOG)
    history = plot_history(version, list_versions(models_dir, job.name))
    plot_training(
        version.path / PLOT_FILE, history, read_loss_log(version.path / LOSS_LOG), version.ref
    )
    version = update_card(version, plot=PLOT_FILE)
    return JobOutcome(
        run_dir,
        version,
        (card.get("metrics") or {}).get("metrics"),
        (card.get("base_metrics") or {}).get("metrics"),
    )


def plot_history(version: Any, versions: Sequence[Any]) -> list[tuple[str, dict[str, float]]]:
    """(label, metrics) of the base and of every version evaluated on the same set and split."""
    block = version.card.get("metrics")
    if not block:
        return []
    same = (block["dataset"], block["split"])
    history = []
    base = version.card.get("base_metrics")
    if base:
        history.append(("base", base["metrics"]))
    for v in versions:
        m = v.card.get("metrics")
        if (
            m
            and (m["dataset"], m["split"]) == same
            and int(v.version[1:]) <= int(version.version[1:])
        ):
            history.append((v.version, m["metrics"]))
    return history


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape a trained model, for its card."""
    import importlib.metadata as md

    names = ("torch", "sentence-transformers", "transformers", "accelerate")
    out = {}
    for n in names:
        try:
            out[n] = md.version(n)
        except md.PackageNotFoundError:
            out[n] = "missing"
    return out


def run_training_job(job: TrainJob, settings: Settings) -> JobOutcome:
    """Check, prepare, train under torchrun, evaluate and register: ``embedsvc train``.

    Args:
        job: what to train.
        settings: the registry (``models_dir``), the home folder (run folders go under
            ``<home>/training/<name>/``) and the default base model.

    Returns:
        The run folder, the registered version and its metrics (the version is None on a
        node that did not save the model, in a multi-node job).

    Raises:
        LaunchError: bad input (before launching), or torchrun failed (the message says how
            to resume).
    """
    from training.train import MODEL_DIR

    models_dir = settings.models_dir
    runs_dir = settings.home / "training"
    prepared = prepare_job(job, models_dir, runs_dir, settings.default_model)
    done = registered_outcome(prepared, models_dir)
    if done is not None and not job.restart:
        log.info("%s already trained and registered as %s", prepared.run_dir, done.version.ref)
        return done
    argv = train_argv(prepared, job.restart, job)
    if job.options.strategy == "ps" or job.options.federated:  # one process: the rest are Ray actors
        cmd = [sys.executable, "-m", "training.train", *argv]
        status = subprocess.run(cmd, env=torchrun_env(job.launch, "cpu"), check=False).returncode
    else:
        status = run_torchrun(job.launch, argv, job.options.batch_size)
    if status != 0:
        raise LaunchError(
            f"training exited with status {status}; run the same command again to resume "
            f"from the last checkpoint in {prepared.run_dir / 'checkpoints'}"
        )
    if not (prepared.run_dir / MODEL_DIR).is_dir():
        log.info("no model in %s: another node saves it", prepared.run_dir)
        return JobOutcome(prepared.run_dir)
    outcome = register_run(job, prepared, models_dir, runs_dir / "eval-cache")
    write_json(prepared.run_dir / REGISTERED, {"ref": outcome.version.ref})
    return outcome


def registered_outcome(prepared: PreparedRun, models_dir: Path) -> JobOutcome | None:
    """The outcome of an earlier, completed attempt of the same run, if there is one."""
    from embedsvc.files import read_json
    from training.registry import RegistryError, get_version

    path = prepared.run_dir / REGISTERED
    if not path.is_file():
        return None
    try:
        version = get_version(models_dir, read_json(path)["ref"])
    except (RegistryError, KeyError):
        return None
    metrics = (version.card.get("metrics") or {}).get("metrics")
    base = (version.card.get("base_metrics") or {}).get("metrics")
    return JobOutcome(prepared.run_dir, version, metrics, base)
