"""The stage kinds a PIPELINE.toml can name. Each takes its parameters and returns a small
JSON-able dict of outputs that later stages can use as ``${stage.key}``.

Heavy packages (indexing, training, torch) are imported inside the stages, so checking a
pipeline file costs nothing.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from embedsvc.pipeline.runner import StageContext, StageFn

log = logging.getLogger(__name__)


def _path(ctx: StageContext, value: str | None) -> Path | None:
    if value is None:
        return None
    path = Path(value).expanduser()
    return path if path.is_absolute() else ctx.base_dir / path


def _build(ctx: StageContext, params: dict[str, Any], switch: bool) -> dict[str, Any]:
    from indexing.job import BuildJob, BuildOptions
    from indexing.layouts import parse_bytes

    budget = params.get("memory_budget")
    options = BuildOptions(
        model=params.get("model"), lexical_only=bool(params.get("lexical_only", False)),
        on_error=params.get("on_error", "fail"), index=params.get("index", "auto"),
        memory_budget=parse_bytes(budget) if budget else None, switch=switch,
    )
    report = BuildJob(ctx.settings, params["collection"], _path(ctx, params["input"]), options).run()
    version = report.version
    if version is None and not options.lexical_only:
        from embedsvc.collection import open_store

        version = open_store(ctx.settings.collections_dir, params["collection"])[1].get_meta(
            "current_version")
    return {"collection": params["collection"], "version": version, "documents": report.documents,
            "model": report.manifest.get("model_id") or options.model or ctx.settings.default_model}


def ingest(ctx: StageContext, params: dict[str, Any]) -> dict[str, Any]:
    """Build (or confirm up to date) the collection that serves today."""
    return _build(ctx, params, switch=True)


def index(ctx: StageContext, params: dict[str, Any]) -> dict[str, Any]:
    """Build a candidate version with a new model, without serving it (deploy decides)."""
    return _build(ctx, params, switch=False)


def _searcher(ctx: StageContext, collection: str, version: int | None = None) -> Any:
    from embedsvc.service import local_searcher

    return local_searcher(ctx.settings, collection, version)


def mine_negatives(ctx: StageContext, params: dict[str, Any]) -> dict[str, Any]:
    """Hard negatives for the training pairs from the collection's index: top hits that are
    not positives. Writes a pairs JSONL file for the train stage."""
    from embedsvc.evaluation import ranked_ids
    from training.negatives import mine_hard_negatives
    from training.pairs import load_corpus, load_pairs, write_pairs_jsonl

    data = _path(ctx, params["data"])
    pairs = load_pairs(data, params.get("split", "train"))
    search = ranked_ids(_searcher(ctx, params["collection"]), "dense")
    mined = mine_hard_negatives(pairs, search, load_corpus(data),
                                num_negatives=int(params.get("num_negatives", 1)),
                                skip_top=int(params.get("skip_top", 0)))
    out = ctx.work_dir / "pairs.jsonl"
    write_pairs_jsonl(mined, out)
    return {"pairs": str(out), "count": len(mined)}


def train(ctx: StageContext, params: dict[str, Any]) -> dict[str, Any]:
    """Fine-tune under torchrun and register the model (see ``embedsvc train``)."""
    from training.launch import LaunchSpec, TrainJob, TrainOptions, run_training_job

    known = TrainOptions.__dataclass_fields__
    options = TrainOptions(**{k: v for k, v in params.items() if k in known})
    job = TrainJob(
        data=_path(ctx, params["data"]), name=params.get("name", "finetuned"),
        base_model=params.get("base_model"), split=params.get("split", "train"),
        eval_data=_path(ctx, params.get("eval_data")), options=options,
        launch=LaunchSpec(nproc=int(params.get("nproc", 1)), device=params.get("device", "auto")),
    )
    outcome = run_training_job(job, ctx.settings.models_dir, ctx.settings.home)
    return {"model": outcome.version.ref, "path": str(outcome.version.path),
            "metrics": outcome.metrics or {}}


def evaluate(ctx: StageContext, params: dict[str, Any]) -> dict[str, Any]:
    """Score a model alone (exact search) or a collection on BEIR judgments."""
    beir, split = _path(ctx, params["beir"]), params.get("split", "test")
    if "collection" in params:
        from embedsvc.evaluation import evaluate_collection

        searcher = _searcher(ctx, params["collection"], params.get("version"))
        return {"metrics": evaluate_collection(searcher, beir, split, params.get("mode", "dense"))}
    from embedsvc.encoders import resolve_model
    from training.evaluate import evaluate_model

    spec = resolve_model(params["model"], ctx.settings.models_dir)
    return {"metrics": evaluate_model(spec.path, beir, split).metrics}


def deploy(ctx: StageContext, params: dict[str, Any]) -> dict[str, Any]:
    """Serve the candidate version only if it beats the served one on the chosen metric."""
    from embedsvc.collection import read_manifest
    from embedsvc.evaluation import evaluate_collection
    from indexing.versions import prune_versions, switch_version

    beir, split = _path(ctx, params["beir"]), params.get("split", "test")
    metric, min_gain = params.get("metric", "nDCG@10"), float(params.get("min_gain", 0.0))
    candidate_version = int(params["version"])
    served = _searcher(ctx, params["collection"])
    served_version = served.store.get_meta("current_version")
    candidate = evaluate_collection(_searcher(ctx, params["collection"], candidate_version), beir, split)
    current = evaluate_collection(served, beir, split) if served_version is not None else None
    if metric not in candidate:
        raise ValueError(f"unknown metric '{metric}': use one of {', '.join(candidate)}")
    if served_version == candidate_version:
        deployed, reason = False, f"version {candidate_version} is already served"
    elif current is None or candidate[metric] > current[metric] + min_gain:
        manifest = read_manifest(served.paths, candidate_version)
        switch_version(served.store, candidate_version, manifest["model_id"],
                       build=manifest.get("build_id"), weights_sha256=manifest.get("weights_sha256"))
        prune_versions(served.paths, candidate_version, int(params.get("keep_versions", 2)))
        deployed = True
        reason = (f"{metric} {candidate[metric]:.4f} beats the served "
                  f"{current[metric] if current else float('nan'):.4f} by more than {min_gain}")
    else:
        deployed = False
        reason = (f"{metric} {candidate[metric]:.4f} does not beat the served "
                  f"{current[metric]:.4f} by more than {min_gain}; version {served_version} stays")
    log.info("deploy %s: %s", params["collection"], reason)
    if deployed and params.get("promote"):
        from training.registry import promote

        promote(ctx.settings.models_dir, params["promote"])
    return {"deployed": deployed, "reason": reason, "candidate": candidate, "served": current,
            "version": candidate_version if deployed else served_version}


KINDS: dict[str, StageFn] = {
    "ingest": ingest, "mine_negatives": mine_negatives, "train": train,
    "evaluate": evaluate, "index": index, "deploy": deploy,
}
