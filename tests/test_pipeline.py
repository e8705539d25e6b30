"""The pipeline: DAG order, parallel stages, skip and resume, retries, refusal to deploy worse."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from embedsvc.cli import app
from embedsvc.collection import open_store
from embedsvc.pipeline.config import PipelineError, load, parse
from embedsvc.pipeline.runner import Runner
from embedsvc.settings import Settings

runner = CliRunner()


class Recorder:
    """Stage kinds for engine tests: each call is recorded; failures are scripted."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.fail_next: dict[str, int] = {}
        self.barrier: threading.Barrier | None = None

    def kinds(self) -> dict:
        def step(ctx, params):
            self.calls.append(ctx.stage)
            if self.fail_next.get(ctx.stage, 0) > 0:
                self.fail_next[ctx.stage] -= 1
                raise RuntimeError(f"{ctx.stage} broke")
            return {"value": params.get("value", ctx.stage)}

        def meet(ctx, params):
            self.calls.append(ctx.stage)
            assert self.barrier is not None
            self.barrier.wait()  # only passes if both stages run at the same time
            return {}

        return {"step": step, "meet": meet}


def diamond(**extra) -> dict:
    return {"name": "p", "max_parallel": 2, "stages": {
        "a": {"kind": "step", "value": "A"},
        "b": {"kind": "step", "after": ["a"], "value": "${a.value}-b"},
        "c": {"kind": "step", "after": ["a"], **extra},
        "d": {"kind": "step", "after": ["b", "c"], "value": "${b.value}+${c.value}"},
    }}


def test_runs_in_dependency_order_with_outputs(settings: Settings) -> None:
    rec = Recorder()
    states = Runner(parse(diamond(), {"step"}), rec.kinds(), settings).run()
    assert rec.calls[0] == "a" and rec.calls[-1] == "d"
    assert states["d"]["output"] == {"value": "A-b+c"}


def test_independent_stages_run_in_parallel(settings: Settings) -> None:
    rec = Recorder()
    rec.barrier = threading.Barrier(2, timeout=30)
    pipeline = parse({"name": "par", "max_parallel": 2, "stages": {
        "x": {"kind": "meet"}, "y": {"kind": "meet"}}}, {"meet"})
    Runner(pipeline, rec.kinds(), settings).run()
    assert sorted(rec.calls) == ["x", "y"]


def test_rerun_skips_done_stages_and_reruns_what_changed(settings: Settings) -> None:
    rec = Recorder()
    Runner(parse(diamond(), {"step"}), rec.kinds(), settings).run()
    rec.calls.clear()
    Runner(parse(diamond(), {"step"}), rec.kinds(), settings).run()
    assert rec.calls == []
    Runner(parse(diamond(value="C2"), {"step"}), rec.kinds(), settings).run()
    assert rec.calls == ["c", "d"]


def test_crash_resumes_at_the_failed_stage(settings: Settings) -> None:
    rec = Recorder()
    rec.fail_next["b"] = 1
    run = Runner(parse(diamond(), {"step"}), rec.kinds(), settings)
    with pytest.raises(PipelineError, match="stage 'b' failed after 1 attempt"):
        run.run()
    assert "d" not in rec.calls
    status = {row["stage"]: row for row in run.status()}
    assert status["b"]["status"] == "failed" and "b broke" in status["b"]["error"]
    assert status["d"]["status"] == "pending"
    rec.calls.clear()
    Runner(parse(diamond(), {"step"}), rec.kinds(), settings).run()
    assert "a" not in rec.calls and rec.calls[-1] == "d"


def test_retries(settings: Settings) -> None:
    rec = Recorder()
    rec.fail_next["a"] = 1
    pipeline = parse({"name": "r", "retries": 1, "stages": {"a": {"kind": "step"}}}, {"step"})
    states = Runner(pipeline, rec.kinds(), settings).run()
    assert states["a"]["status"] == "done" and states["a"]["attempt"] == 2


@pytest.mark.parametrize("text, message", [
    ('[stages.a]\nkind = "step"\nafter = ["b"]\n[stages.b]\nkind = "step"\nafter = ["a"]\n', "cycle"),
    ('[stages.a]\nkind = "teleport"\n', "unknown kind 'teleport'"),
    ('[stages.a]\nkind = "step"\nafter = ["ghost"]\n', "unknown stage(s) ghost"),
    ('[stages.a]\nkind = "step"\nvalue = "${ghost.x}"\n', "unknown stage(s) ghost"),
    ("[stages.a\n", "not valid TOML"),
    ('name = "x"\n', "no [stages.NAME]"),
])
def test_bad_pipeline_files(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "PIPELINE.toml"
    path.write_text(text)
    with pytest.raises(PipelineError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[")):
        load(path, {"step"})


def test_cli_refuses_a_bad_file_before_any_work(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "PIPELINE.toml"
    path.write_text('[stages.a]\nkind = "deploy"\nafter = ["a"]\ncollection = "c"\nversion = 1\nbeir = "b"\n')
    result = runner.invoke(app, ["--home", str(settings.home), "pipeline", "run", str(path)])
    assert result.exit_code == 1 and "cycle" in result.output
    assert not (settings.home / "pipelines").exists()


def tiny_model(folder: Path, bundled_model: Path) -> Path:
    """A random 1-layer BERT with the default tokenizer: a model that is surely worse."""
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(str(bundled_model))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=64)
    BertModel(config).save_pretrained(folder / "bert")
    tokenizer.save_pretrained(folder / "bert")
    encoder = models.Transformer(str(folder / "bert"), max_seq_length=128)
    model = SentenceTransformer(modules=[encoder, models.Pooling(32, "mean")])
    model.save(str(folder / "st"))
    return folder / "st"


def index_and_deploy(mini_beir: Path, model: Path | str, after: str | None) -> str:
    """TOML for an `index` stage (a candidate built with ``model``) and its `deploy`."""
    model_line = f'model = "{model}"\n'
    after_line = f'after = ["{after}"]\n' if after else ""
    return (f'[stages.index]\nkind = "index"\n{after_line}collection = "c"\n'
            f'input = "{mini_beir}"\n{model_line}'
            f'[stages.deploy]\nkind = "deploy"\nversion = "${{index.version}}"\n'
            f'beir = "{mini_beir}"\ncollection = "c"\n')


def test_deploy_switches_only_to_a_better_model(settings: Settings, tmp_path: Path,
                                                bundled_model: Path, mini_beir: Path) -> None:
    tiny = tiny_model(tmp_path / "tiny", bundled_model)
    better = tmp_path / "better.toml"
    better.write_text(f'name = "better"\n[stages.ingest]\nkind = "ingest"\ncollection = "c"\n'
                      f'input = "{mini_beir}"\nmodel = "{tiny}"\n'
                      + index_and_deploy(mini_beir, "all-MiniLM-L6-v2", after="ingest"))
    run = runner.invoke(app, ["--home", str(settings.home), "pipeline", "run", str(better)])
    assert run.exit_code == 0, run.output
    _, store = open_store(settings.collections_dir, "c")
    assert store.get_meta("current_version") == 2 and store.get_meta("model_id") == "all-MiniLM-L6-v2"

    worse = tmp_path / "worse.toml"
    worse.write_text('name = "worse"\n' + index_and_deploy(mini_beir, tiny, after=None))
    run = runner.invoke(app, ["--home", str(settings.home), "pipeline", "run", str(worse)])
    assert run.exit_code == 0, run.output
    assert store.get_meta("current_version") == 2
    status = runner.invoke(app, ["--home", str(settings.home), "pipeline", "status", str(worse),
                                 "--json"])
    deploy = {row["stage"]: row for row in json.loads(status.stdout)}["deploy"]
    assert deploy["output"]["deployed"] is False and "does not beat" in deploy["output"]["reason"]
