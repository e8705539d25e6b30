"""The stage kinds a PIPELINE.toml can name. Each takes its parameters and returns a small
JSON-able dict of outputs that later stages can use as ``${stage.key}``.

Each kind's table is a pydantic model (:data:`PARAMS`): ``ingest`` and ``index`` take every
option of ``embedsvc index build`` and ``train`` every option of ``embedsvc train``, from the
same models, so an unknown or mistyped key is refused when the file is read, naming the stage
and the key. Heavy packages (the build, training, torch) are imported inside the stages, so
checking a pipeline file costs next to nothing.
"""

from __future__ import annotations

import logging
import typing
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from embedsvc.api.schemas import Mode
from embedsvc.options import flat_fields
from embedsvc.pipeline.config import stage_params
from embedsvc.pipeline.runner import StageContext, StageFn
from indexing.options import BuildOptions
from training.options import TrainJob

M = TypeVar("M", bound=BaseModel)

log = logging.getLogger(__name__)


_STAGE = ConfigDict(extra="forbid", frozen=True)


class BuildStage(BaseModel):
    """``ingest`` and ``index``: build a collection from an input, with any build option."""

    model_config = _STAGE
    collection: str = Field(description="Collection to build (created if missing).")
    input: Path | None = Field(None, description="JSONL[.gz], CSV, Parquet or BEIR folder.")
    build: BuildOptions = Field(default_factory=BuildOptions)


class MineStage(BaseModel):
    """``mine_negatives``: hard negatives for training pairs from a collection's index."""

    model_config = _STAGE
    collection: str = Field(description="Collection searched for negatives.")
    data: Path = Field(description="BEIR folder (its --split qrels) or JSONL pairs.")
    split: str = Field("train", description="Qrels split, for a BEIR folder.")
    num_negatives: int = Field(1, ge=1, description="Negatives per pair.")
    skip_top: int = Field(0, ge=0, description="Top ranks skipped (likely unjudged positives).")


class EvaluateStage(BaseModel):
    """``evaluate``: a collection (as served, or one version) or a model alone on judgments."""

    model_config = _STAGE
    beir: Path = Field(description="BEIR folder with the judgments.")
    split: str = Field("test", description="Qrels split to score.")
    collection: str | None = Field(None, description="Collection to score (or give model).")
    version: int | None = Field(None, ge=1, description="Index version (default: the served one).")
    mode: Mode = Field("dense", description="Search mode scored for a collection.")
    model: str | None = Field(None, description="Model scored alone with exact search.")

    @model_validator(mode="after")
    def _one_subject(self) -> EvaluateStage:
        if (self.collection is None) == (self.model is None):
            raise ValueError("give either collection or model")
        return self


class DeployStage(BaseModel):
    """``deploy``: serve a candidate version only if it beats the served one."""

    model_config = _STAGE
    collection: str = Field(description="Collection whose versions are compared.")
    version: int = Field(ge=1, description="Candidate version (an index stage's output).")
    beir: Path = Field(description="BEIR folder with the judgments.")
    split: str = Field("test", description="Qrels split to score.")
    metric: str = Field("nDCG@10", description="Metric compared.")
    min_gain: float = Field(0.0, ge=0, description="How much better the candidate must be.")
    keep_versions: int = Field(2, ge=1, description="Index versions kept on disk.")
    promote: str | None = Field(None, description="Registry model promoted when deployed.")


class PromoteStage(BaseModel):
    """``promote``: make a trained version the served one of its name, only if it is better."""

    model_config = _STAGE
    model: str = Field(description="Registered version to promote (name/version).")
    beir: Path = Field(description="BEIR folder with the judgments.")
    split: str = Field("test", description="Qrels split to score.")
    metric: str = Field("nDCG@10", description="Metric compared.")
    min_gain: float = Field(0.0, ge=0, description="How much better the candidate must be.")


def _params(ctx: StageContext, model: type[M], params: dict[str, Any]) -> M:
    """The stage's table as its model; relative paths are relative to the pipeline file."""
    fields = flat_fields(model)
    anchored = {key: ctx.base_dir / Path(value).expanduser()
                if key in fields and _is_path(fields[key][1].annotation) and isinstance(value, str)
                else value for key, value in params.items()}
    return stage_params(ctx.stage, model, anchored)


def _is_path(annotation: Any) -> bool:
    return annotation is Path or Path in typing.get_args(annotation)


def _build(ctx: StageContext, params: dict[str, Any], switch: bool) -> dict[str, Any]:
    from indexing.job import BuildJob

    stage = _params(ctx, BuildStage, params)
    options = stage.build.model_copy(update={"switch": switch})
    report = BuildJob(ctx.settings, stage.collection, stage.input, options).run()
    version = report.version
    if version is None and not options.lexical_only:
        from embedsvc.collection import open_store

        version = open_store(ctx.settings.collections_dir, stage.collection)[1].get_meta(
            "current_version")
    return {"collection": stage.collection, "version": version, "documents": report.documents,
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

    stage = _params(ctx, MineStage, params)
    pairs = load_pairs(stage.data, stage.split)
    search = ranked_ids(_searcher(ctx, stage.collection), "dense")
    mined = mine_hard_negatives(pairs, search, load_corpus(stage.data),
                                num_negatives=stage.num_negatives, skip_top=stage.skip_top)
    out = ctx.work_dir / "pairs.jsonl"
    write_pairs_jsonl(mined, out)
    return {"pairs": str(out), "count": len(mined)}


def train(ctx: StageContext, params: dict[str, Any]) -> dict[str, Any]:
    """Fine-tune under torchrun and register the model: ``embedsvc train``'s options."""
    from training.launch import run_training_job

    outcome = run_training_job(_params(ctx, TrainJob, params), ctx.settings)
    if outcome.version is None:
        raise RuntimeError(f"training finished, but another node saved the model ({outcome.run_dir})")
    return {"model": outcome.version.ref, "path": str(outcome.version.path),
            "metrics": outcome.metrics or {}}


def evaluate(ctx: StageContext, params: dict[str, Any]) -> dict[str, Any]:
    """Score a model alone (exact search) or a collection on BEIR judgments."""
    stage = _params(ctx, EvaluateStage, params)
    if stage.collection is not None:
        from embedsvc.evaluation import evaluate_collection

        searcher = _searcher(ctx, stage.collection, stage.version)
        return {"metrics": evaluate_collection(searcher, stage.beir, stage.split, stage.mode)}
    from embedsvc.encoders import resolve_model
    from training.evaluate import evaluate_model

    spec = resolve_model(stage.model, ctx.settings.models_dir)
    return {"metrics": evaluate_model(spec.path, stage.beir, stage.split).metrics}


def deploy(ctx: StageContext, params: dict[str, Any]) -> dict[str, Any]:
    """Serve the candidate version only if it beats the served one on the chosen metric."""
    from embedsvc.collection import read_manifest
    from embedsvc.evaluation import evaluate_collection
    from indexing.versions import prune_versions, switch_version

    stage = _params(ctx, DeployStage, params)
    served = _searcher(ctx, stage.collection)
    served_version = served.store.get_meta("current_version")
    candidate = evaluate_collection(_searcher(ctx, stage.collection, stage.version), stage.beir,
                                    stage.split)
    current = (evaluate_collection(served, stage.beir, stage.split)
               if served_version is not None else None)
    deployed, reason = _deploy_decision(stage, served_version, candidate, current)
    if deployed:
        manifest = read_manifest(served.paths, stage.version)
        switch_version(served.store, stage.version, manifest["model_id"],
                       build=manifest.get("build_id"), weights_sha256=manifest.get("weights_sha256"))
        prune_versions(served.paths, stage.version, stage.keep_versions)
    log.info("deploy %s: %s", stage.collection, reason)
    if deployed and stage.promote:
        from training.registry import promote

        promote(ctx.settings.models_dir, stage.promote)
    return {"deployed": deployed, "reason": reason, "candidate": candidate, "served": current,
            "version": stage.version if deployed else served_version}


def _deploy_decision(stage: DeployStage, served_version: int | None, candidate: dict[str, float],
                     current: dict[str, float] | None) -> tuple[bool, str]:
    """Whether the candidate is served, and the reason, in words for the log and the state."""
    metric, gain = stage.metric, stage.min_gain
    if metric not in candidate:
        raise ValueError(f"unknown metric '{metric}': use one of {', '.join(candidate)}")
    if served_version == stage.version:
        return False, f"version {stage.version} is already served"
    if current is None:
        return True, f"{metric} {candidate[metric]:.4f}; no version was served"
    if candidate[metric] > current[metric] + gain:
        return True, (f"{metric} {candidate[metric]:.4f} beats the served "
                      f"{current[metric]:.4f} by more than {gain}")
    return False, (f"{metric} {candidate[metric]:.4f} does not beat the served "
                   f"{current[metric]:.4f} by more than {gain}; version {served_version} stays")


def promote(ctx: StageContext, params: dict[str, Any]) -> dict[str, Any]:
    """Promote the version if it beats the promoted one (or, with none, its base model).

    Both are scored here with exact search on the same judgments, so the comparison does not
    depend on what an earlier run recorded.
    """
    from training import registry
    from training.evaluate import evaluate_model

    stage = _params(ctx, PromoteStage, params)
    models = ctx.settings.models_dir
    candidate = registry.get_version(models, stage.model)
    current = registry.promoted_version(models, candidate.name)
    if current == candidate.version:
        return {"promoted": False, "reason": f"{candidate.ref} is already promoted",
                "model": candidate.ref}
    rival = (registry.get_version(models, f"{candidate.name}/{current}").path if current
             else Path(candidate.card["base_model"]["path"]))
    rival_name = f"{candidate.name}/{current}" if current else "its base model"
    ours = evaluate_model(candidate.path, stage.beir, stage.split).metrics
    theirs = evaluate_model(rival, stage.beir, stage.split).metrics
    if stage.metric not in ours:
        raise ValueError(f"unknown metric '{stage.metric}': use one of {', '.join(ours)}")
    better = ours[stage.metric] > theirs[stage.metric] + stage.min_gain
    verb = "beats" if better else "does not beat"
    reason = (f"{stage.metric} {ours[stage.metric]:.4f} {verb} {rival_name}'s "
              f"{theirs[stage.metric]:.4f} by more than {stage.min_gain}")
    if better:
        registry.promote(models, candidate.ref)
    log.info("promote %s: %s", candidate.ref, reason)
    served = candidate.ref if better else (f"{candidate.name}/{current}" if current else None)
    return {"promoted": better, "reason": reason, "candidate": ours, "baseline": theirs,
            "model": served}


KINDS: dict[str, StageFn] = {
    "ingest": ingest, "mine_negatives": mine_negatives, "train": train,
    "evaluate": evaluate, "index": index, "deploy": deploy, "promote": promote,
}
# The model each kind's table is checked against when the file is read.
PARAMS: dict[str, type[BaseModel]] = {
    "ingest": BuildStage, "index": BuildStage, "mine_negatives": MineStage, "train": TrainJob,
    "evaluate": EvaluateStage, "deploy": DeployStage, "promote": PromoteStage,
}
