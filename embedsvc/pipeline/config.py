"""PIPELINE.toml: which stages, in what order, with which parameters.

Everything that can be wrong with the file (unknown stage kinds, unknown dependencies,
cycles, references to stages that do not come before) is found here, before any work.

    name = "scifact-finetune"
    retries = 1              # extra attempts per stage (default 0)
    max_parallel = 2         # independent stages run side by side

    [stages.ingest]
    kind = "ingest"
    collection = "scifact"
    input = "data/scifact"

    [stages.train]
    kind = "train"
    after = ["ingest"]
    data = "data/scifact"
    base_model = "${ingest.model}"   # an output of an earlier stage
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from graphlib import CycleError, TopologicalSorter
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from embedsvc.options import OptionsError, from_flat

# Stage kind → the model its table is checked against (None: any keys).
Kinds = Mapping[str, type[BaseModel] | None]

M = TypeVar("M", bound=BaseModel)
_REF = re.compile(r"\$\{([A-Za-z0-9_-]+)\.([A-Za-z0-9_]+)\}")
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


class PipelineError(Exception):
    """The pipeline file is invalid or a stage failed; the message says which and why."""


@dataclass
class Stage:
    name: str
    kind: str
    after: list[str]
    params: dict[str, Any]
    retries: int


@dataclass
class Pipeline:
    name: str
    stages: dict[str, Stage]
    max_parallel: int = 1
    source: Path | None = None
    order: list[str] = field(default_factory=list)

    def graph(self) -> dict[str, set[str]]:
        return {name: set(stage.after) | references(stage.params) for name, stage in self.stages.items()}


def references(value: Any) -> set[str]:
    """Names of the stages whose outputs ``${stage.key}`` strings in ``value`` use."""
    if isinstance(value, str):
        return {m.group(1) for m in _REF.finditer(value)}
    if isinstance(value, dict):
        return set().union(*(references(v) for v in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(references(v) for v in value)) if value else set()
    return set()


def resolve(value: Any, outputs: dict[str, dict[str, Any]]) -> Any:
    """Replace ``${stage.key}`` with the finished stage's output (the whole string keeps its type)."""
    if isinstance(value, str):
        whole = _REF.fullmatch(value)
        if whole:
            return _output(outputs, whole.group(1), whole.group(2))
        return _REF.sub(lambda m: str(_output(outputs, m.group(1), m.group(2))), value)
    if isinstance(value, dict):
        return {k: resolve(v, outputs) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, outputs) for v in value]
    return value


def _output(outputs: dict[str, dict[str, Any]], stage: str, key: str) -> Any:
    if key not in outputs.get(stage, {}):
        raise PipelineError(f"stage '{stage}' has no output '{key}' (it has "
                            f"{sorted(outputs.get(stage, {}))})")
    return outputs[stage][key]


def parse(data: dict[str, Any], kinds: Kinds | Collection[str], source: Path | None = None) -> Pipeline:
    """The checked pipeline: stage kinds, their tables (keys and the values known before the
    run, against each kind's model), dependencies and order."""
    where = str(source or "pipeline")
    if not isinstance(kinds, Mapping):
        kinds = dict.fromkeys(kinds)
    name = data.get("name") or (source.stem if source else "pipeline")
    if not _NAME.fullmatch(str(name)):
        raise PipelineError(f"{where}: name {name!r} must be letters, digits, '_' or '-'")
    raw = data.get("stages")
    if not isinstance(raw, dict) or not raw:
        raise PipelineError(f"{where}: no [stages.NAME] tables")
    default_retries = int(data.get("retries", 0))
    stages = {}
    for stage_name, table in raw.items():
        stages[stage_name] = _stage(where, stage_name, table, kinds, default_retries)
    pipeline = Pipeline(str(name), stages, max(1, int(data.get("max_parallel", 1))), source)
    pipeline.order = _order(where, pipeline)
    return pipeline


def _stage(where: str, name: str, table: Any, known: Kinds, retries: int) -> Stage:
    if not _NAME.fullmatch(name):
        raise PipelineError(f"{where}: stage name {name!r} must be letters, digits, '_' or '-'")
    if not isinstance(table, dict):
        raise PipelineError(f"{where}: [stages.{name}] must be a table")
    table = dict(table)
    kind = table.pop("kind", None)
    if kind not in known:
        raise PipelineError(f"{where}: stage '{name}' has unknown kind {kind!r}; "
                            f"use one of {', '.join(sorted(known))}")
    after = table.pop("after", [])
    if isinstance(after, str):
        after = [after]
    stage_retries = int(table.pop("retries", retries))
    model = known[kind]
    if model is not None:
        _check_table(where, name, kind, model, table)
    return Stage(name, kind, list(after), table, stage_retries)


def _check_table(where: str, name: str, kind: str, model: type[BaseModel], table: dict[str, Any]) -> None:
    """Refuse unknown keys and bad values now; a ``${stage.key}`` value is checked when the
    run fills it in (see :func:`stage_params`)."""
    later = {key for key, value in table.items() if references(value)}
    try:
        from_flat(model, table)
    except OptionsError as exc:
        problems = [(key, what) for key, what in exc.problems
                    if key not in later or what.startswith("unknown option")]
        if problems:
            raise PipelineError(f"{where}: stage '{name}' ({kind}): " + "; ".join(
                f"{key}: {what}" for key, what in problems)) from exc


def stage_params(stage: str, model: type[M], params: dict[str, Any]) -> M:
    """A stage's resolved table as its model; a bad value names the stage and the key."""
    try:
        return from_flat(model, params)
    except OptionsError as exc:
        raise PipelineError(f"stage '{stage}': {exc}") from exc


def _order(where: str, pipeline: Pipeline) -> list[str]:
    graph = pipeline.graph()
    for name, deps in graph.items():
        unknown = deps - set(pipeline.stages)
        if unknown:
            raise PipelineError(f"{where}: stage '{name}' depends on unknown stage(s) "
                                f"{', '.join(sorted(unknown))}")
    try:
        return list(TopologicalSorter(graph).static_order())
    except CycleError as exc:
        cycle = " → ".join(exc.args[1])
        raise PipelineError(f"{where}: the stages form a cycle: {cycle}") from exc


def load(path: Path, kinds: Kinds | Collection[str]) -> Pipeline:
    if not path.is_file():
        raise PipelineError(f"{path} does not exist")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise PipelineError(f"{path}: not valid TOML ({exc})") from exc
    return parse(data, kinds, path)
