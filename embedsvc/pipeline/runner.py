"""Runs a pipeline's stages in dependency order, independent ones side by side.

Each stage's result is recorded with a fingerprint of what it was run with (its kind,
its parameters after upstream outputs are filled in, and its upstream stages'
fingerprints). A rerun skips a stage whose fingerprint is unchanged and that finished;
a run that crashed resumes at the stage that failed. A failing stage is retried
``retries`` times, then the run stops with that stage's error, letting stages already
running finish.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from graphlib import TopologicalSorter
from pathlib import Path
from typing import Any

from embedsvc.files import read_json, short_hash, write_json
from embedsvc.pipeline.config import Pipeline, PipelineError, resolve
from embedsvc.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class StageContext:
    """What a stage function gets besides its parameters."""

    settings: Settings
    work_dir: Path  # a folder of its own for files it produces
    stage: str
    base_dir: Path  # relative paths in parameters are relative to the pipeline file


StageFn = Callable[[StageContext, dict[str, Any]], dict[str, Any]]


class StateFile:
    """The recorded state of every stage, rewritten atomically after each change."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        self.data: dict[str, Any] = read_json(path) if path.is_file() else {"stages": {}}

    def stage(self, name: str) -> dict[str, Any]:
        return self.data["stages"].get(name, {})

    def update(self, name: str, **fields: Any) -> None:
        with self._lock:
            self.data["stages"].setdefault(name, {}).update(fields)
            write_json(self.path, self.data)


def fingerprint(kind: str, params: dict[str, Any], upstream: dict[str, str]) -> str:
    return short_hash([kind, params, upstream])


class Runner:
    def __init__(self, pipeline: Pipeline, kinds: dict[str, StageFn], settings: Settings):
        self.pipeline = pipeline
        self.kinds = kinds
        self.settings = settings
        self.folder = settings.home / "pipelines" / pipeline.name
        self.state = StateFile(self.folder / "state.json")
        self.base_dir = pipeline.source.parent if pipeline.source else Path.cwd()

    def run(self) -> dict[str, dict[str, Any]]:
        """Run every stage that is not done; return each stage's recorded state."""
        sorter = TopologicalSorter(self.pipeline.graph())
        sorter.prepare()
        outputs: dict[str, dict[str, Any]] = {}
        failure: PipelineError | None = None
        with ThreadPoolExecutor(max_workers=self.pipeline.max_parallel) as pool:
            running: dict[Future, str] = {}
            while sorter.is_active() and failure is None or running:
                if failure is None:
                    for name in sorter.get_ready():
                        running[pool.submit(self._run_stage, name, dict(outputs))] = name
                if not running:
                    break
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    name = running.pop(future)
                    try:
                        outputs[name] = future.result()
                        sorter.done(name)
                    except PipelineError as exc:
                        failure = failure or exc
        if failure is not None:
            raise failure
        return self.state.data["stages"]

    def _run_stage(self, name: str, outputs: dict[str, dict[str, Any]]) -> dict[str, Any]:
        stage = self.pipeline.stages[name]
        params = resolve(stage.params, outputs)
        upstream = {dep: self.state.stage(dep).get("fingerprint", "") for dep in sorted(self.pipeline.graph()[name])}
        stage_fp = fingerprint(stage.kind, params, upstream)
        recorded = self.state.stage(name)
        if recorded.get("status") == "done" and recorded.get("fingerprint") == stage_fp:
            log.info("stage %s: done before with the same inputs, skipped", name)
            self.state.update(name, skipped=True)
            return recorded["output"]
        ctx = StageContext(self.settings, self.folder / name, name, self.base_dir)
        ctx.work_dir.mkdir(parents=True, exist_ok=True)
        for attempt in range(1, stage.retries + 2):
            started = time.time()
            self.state.update(name, status="running", fingerprint=stage_fp, attempt=attempt,
                              started_at=started, skipped=False, error=None)
            try:
                output = self.kinds[stage.kind](ctx, params) or {}
            except Exception as exc:  # noqa: BLE001 - any stage failure is recorded, then retried
                log.warning("stage %s failed (attempt %d of %d): %s", name, attempt,
                            stage.retries + 1, exc)
                self.state.update(name, status="failed", error=f"{type(exc).__name__}: {exc}",
                                  traceback=traceback.format_exc(limit=5),
                                  seconds=round(time.time() - started, 3))
                last = exc
                continue
            self.state.update(name, status="done", output=output,
                              seconds=round(time.time() - started, 3), finished_at=time.time())
            log.info("stage %s done in %.1fs", name, time.time() - started)
            return output
        raise PipelineError(f"stage '{name}' failed after {stage.retries + 1} attempt(s): {last}")

    def status(self) -> list[dict[str, Any]]:
        """Each stage in run order with its recorded state (``pending`` if never run)."""
        rows = []
        for name in self.pipeline.order:
            recorded = self.state.stage(name)
            rows.append({"stage": name, "kind": self.pipeline.stages[name].kind,
                         "status": recorded.get("status", "pending"), **{
                             k: recorded.get(k) for k in ("seconds", "attempt", "output", "error",
                                                          "skipped")}})
        return rows
