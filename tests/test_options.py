"""One typed definition per job: the CLI, the ranks' arguments and pipeline tables agree with it.

Each test goes through an interface a user touches (``embedsvc train``/``index build``, a
PIPELINE.toml, the rank entry point) and checks it against the model, so a default written a
second time somewhere, or a key dropped silently, fails here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from embedsvc.cli import app
from embedsvc.options import OptionsError, flat_fields, from_flat, option_flag, to_argv
from embedsvc.pipeline.config import PipelineError, parse
from embedsvc.pipeline.stages import PARAMS
from embedsvc.settings import Settings
from indexing.options import BuildOptions
from tests.conftest import make_settings
from training.options import TrainJob, TrainOptions

runner = CliRunner()


def captured_train_job(monkeypatch: pytest.MonkeyPatch, settings: Settings, args: list[str]) -> TrainJob:
    """The job ``embedsvc train ARGS`` hands to the launcher (which is replaced by a recorder)."""
    seen: list[TrainJob] = []

    def record(job: TrainJob, _settings: Settings):
        seen.append(job)
        raise SystemExit(0)

    monkeypatch.setattr("training.launch.run_training_job", record)
    result = runner.invoke(app, ["--home", str(settings.home), "train", *args])
    assert result.exit_code == 0 and seen, result.output
    return seen[0]


def test_train_cli_defaults_are_the_models_defaults(
    monkeypatch: pytest.MonkeyPatch, settings: Settings, tmp_path: Path
) -> None:
    assert captured_train_job(monkeypatch, settings, [str(tmp_path)]) == TrainJob(data=tmp_path)


def test_every_train_option_reaches_the_job(
    monkeypatch: pytest.MonkeyPatch, settings: Settings, tmp_path: Path
) -> None:
    args = [str(tmp_path), "--epochs", "1.5", "--batch-size", "16", "--no-gather", "--nproc", "2",
            "--device", "cpu", "--no-eval", "--max-seq-length", "128", "--strategy", "fsdp"]
    job = captured_train_job(monkeypatch, settings, args)
    assert job.options == TrainOptions(epochs=1.5, batch_size=16, gather=False, max_seq_length=128,
                                       strategy="fsdp")
    assert (job.launch.nproc, job.launch.device, job.evaluate) == (2, "cpu", False)


def test_train_help_lists_every_field_once() -> None:
    result = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for key, (_, info) in flat_fields(TrainJob).items():
        if key == "data":
            continue
        flag = option_flag(key)
        spelled = "--eval" if key == "evaluate" else flag
        assert result.output.count(f"{spelled} ") >= 1, key
    assert "ddp|fsdp" in result.output


def test_a_bad_value_is_a_usage_error_naming_the_option(settings: Settings, tmp_path: Path) -> None:
    result = runner.invoke(app, ["--home", str(settings.home), "train", str(tmp_path),
                                 "--batch-size", "0"])
    assert result.exit_code == 2
    assert "--batch-size: Input should be greater than or equal to 1" in result.output
    built = runner.invoke(app, ["--home", str(settings.home), "index", "build", "c",
                                "--input", str(tmp_path), "--memory-budget", "lots"])
    assert built.exit_code == 2 and "--memory-budget" in built.output and "4GB" in built.output
    assert not (settings.collections_dir / "c").exists()


def test_unknown_keys_are_named_with_the_closest_known_one() -> None:
    with pytest.raises(OptionsError, match="epoch: unknown option; did you mean epochs"):
        from_flat(TrainJob, {"data": "d", "epoch": 3})
    with pytest.raises(OptionsError, match="switch: unknown option"):
        from_flat(BuildOptions, {"switch": False})  # set by the stage, never by a user


def test_rank_arguments_round_trip_to_an_equal_recipe() -> None:
    from training.train import parse_args

    recipe = TrainOptions(strategy="fsdp", epochs=0.5, lr=1e-4, bf16=True, gather=False, seed=7)
    parsed = parse_args(["--data", "d", "--base-model", "m", "--output-dir", "o", *to_argv(recipe)])
    assert TrainOptions(**{k: getattr(parsed, k) for k in TrainOptions.model_fields}) == recipe


def pipeline(stage: dict) -> dict:
    return {"name": "p", "stages": {"s": stage}}


@pytest.mark.parametrize("stage, message", [
    ({"kind": "train", "data": "d", "epoch": 3}, "stage 's' (train): epoch: unknown option; did you mean epochs?"),
    ({"kind": "train", "data": "d", "epochs": "three"}, "stage 's' (train): epochs: Input should be a valid number"),
    ({"kind": "train"}, "stage 's' (train): data: Field required"),
    ({"kind": "index", "collection": "c", "shard": 2}, "shard: unknown option; did you mean shards?"),
    ({"kind": "index", "collection": "c", "long_texts": "wrap"}, "long_texts: Input should be 'split' or 'truncate'"),
    ({"kind": "evaluate", "beir": "b"}, "give either collection or model"),
    ({"kind": "deploy", "collection": "c", "beir": "b", "version": 1, "min_gain": -1},
     "min_gain: Input should be greater than or equal to 0"),
])
def test_pipeline_tables_are_checked_when_read(stage: dict, message: str) -> None:
    with pytest.raises(PipelineError) as info:
        parse(pipeline(stage), PARAMS)
    assert message in str(info.value)


def test_pipeline_values_from_earlier_stages_are_checked_when_filled_in() -> None:
    parsed = parse({"name": "p", "stages": {
        "a": {"kind": "index", "collection": "c", "input": "x"},
        "b": {"kind": "deploy", "collection": "c", "beir": "b", "version": "${a.version}"},
    }}, PARAMS)
    assert parsed.order == ["a", "b"]


def test_index_stage_accepts_every_build_option() -> None:
    every = {"kind": "index", "collection": "c", "input": "x", "model": "m", "on_error": "skip",
             "chunk_size": 8, "long_texts": "truncate", "executor": "process", "workers": 2,
             "ray_address": "auto", "index": "flat", "memory_budget": "1GB", "target_recall": 0.9,
             "shards": 2, "keep_versions": 3, "backend": "torch", "lexical_only": False}
    user_keys = {k for k, (_, info) in flat_fields(BuildOptions).items()
                 if not (info.json_schema_extra or {}).get("internal")}
    assert user_keys - set(every) == {"vectors", "ids"}  # the text path: every other key given
    parse(pipeline(every), PARAMS)


def test_train_stage_uses_the_configured_default_model(tmp_path: Path, bundled_model: Path,
                                                       mini_beir: Path) -> None:
    from embedsvc.pipeline.runner import Runner
    from embedsvc.pipeline.stages import KINDS

    settings = make_settings(tmp_path / "home", bundled_model, default_model="no-such-model")
    plan = parse({"name": "t", "stages": {"t": {"kind": "train", "data": str(mini_beir)}}}, PARAMS)
    with pytest.raises(PipelineError, match="no-such-model"):
        Runner(plan, KINDS, settings).run()


def test_the_example_pipeline_is_valid() -> None:
    from embedsvc.pipeline.config import load

    example = Path(__file__).resolve().parent.parent / "examples" / "scifact-pipeline.toml"
    assert load(example, PARAMS).order[-1] == "deploy"
