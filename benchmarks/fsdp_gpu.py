"""Prepared GPU check: FSDP on N GPUs gives the model one GPU gives (run on a CUDA machine).

Why: ``--strategy fsdp`` (our FSDP2 loop, ``training/fsdp.py``) is tested on CPU over gloo
(``tests/test_training_fsdp.py``: 2 ranks against 1 process within 1e-5); this is the same
check for its GPU path over nccl, with the default model. It trains on SciFact train pairs
for a few steps twice, on 1 GPU and on N, same seed, same global batches, and reports the
largest weight difference and the time of each run. Dropout makes two runs differ slightly
unless the random streams match, so the tolerance is loose (1e-3); a broken sharding or
gather shows up as differences near the size of the updates themselves (about lr x steps).

Usage (exit status 0 when the two agree)::

    .venv/bin/python benchmarks/fsdp_gpu.py [--nproc N] [--steps 20] [--home /tmp/fsdp-check]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
log = logging.getLogger("fsdp_gpu")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line of the check."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=REPO / "data" / "scifact")
    p.add_argument("--home", type=Path, default=Path("/tmp/embedsvc-fsdp-check"))
    p.add_argument("--nproc", type=int, default=0, help="GPUs to use (default: all, up to 8)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--tolerance", type=float, default=1e-3)
    return p.parse_args(argv)


def train_once(args: argparse.Namespace, strategy: str, nproc: int) -> tuple[Path, float]:
    """Train with one strategy in its own run folder; returns (model folder, seconds)."""
    from embedsvc.settings import Settings
    from training.launch import (
        LaunchError,
        LaunchSpec,
        TrainOptions,
        check_base_model,
        prepare_run,
        run_torchrun,
        train_argv,
    )
    from training.pairs import load_pairs
    from training.train import MODEL_DIR

    settings = Settings(home=args.home)
    base = check_base_model(settings.default_model, settings.models_dir)
    options = TrainOptions(
        strategy=strategy, max_steps=args.steps, batch_size=args.batch_size, lr=5e-5,
        warmup=0, save_steps=args.steps, logging_steps=1,
    )  # fmt: skip
    pairs = load_pairs(args.data, "train")
    run_dir = args.home / "runs" / f"{strategy}-{nproc}"
    prepared = prepare_run(pairs, base, options, args.home / "runs", run_dir=run_dir)
    started = time.perf_counter()
    spec = LaunchSpec(nproc=nproc, device="cuda")
    status = run_torchrun(spec, train_argv(prepared, restart=True), args.batch_size)
    if status != 0:
        raise LaunchError(f"{strategy} run failed with exit status {status}")
    return run_dir / MODEL_DIR, time.perf_counter() - started


def max_weight_diff(a: Path, b: Path) -> float:
    """Largest absolute difference between two models' weights."""
    from safetensors.torch import load_file

    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    if wa.keys() != wb.keys():
        raise ValueError(f"different tensors: {sorted(wa.keys() ^ wb.keys())[:5]}")
    return max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa)


def main(argv: list[str] | None = None) -> int:
    """Run FSDP on one GPU, then on N, and compare; 0 when they agree within the tolerance."""
    import torch
    from rich.console import Console

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parse_args(argv)
    if not torch.cuda.is_available():
        log.error("no CUDA GPU visible: this check is for a GPU machine")
        return 2
    nproc = args.nproc or min(torch.cuda.device_count(), 8)
    one, one_s = train_once(args, "fsdp", 1)
    many, many_s = train_once(args, "fsdp", nproc)
    diff = max_weight_diff(one, many)
    result = {
        "gpus": nproc,
        "device": torch.cuda.get_device_name(0),
        "steps": args.steps,
        "one_gpu_seconds": round(one_s, 1),
        "fsdp_seconds": round(many_s, 1),
        "max_weight_diff": diff,
        "tolerance": args.tolerance,
        "agree": diff < args.tolerance,
    }
    Console().print_json(json.dumps(result))
    return 0 if result["agree"] else 1


if __name__ == "__main__":
    sys.exit(main())
