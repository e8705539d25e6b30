"""Training with a real (tiny) model under torchrun: DDP equivalence, resume, registry, CLI.

The model is a 2-layer BERT with hidden size 32, built here from a config and the default
model's tokenizer, with mean pooling and dropout off, so a few training steps take a second
and the runs are deterministic. Data order is a seeded shuffle that is the same on every rank.

Tolerance for "the same weights": every parameter within 1e-5 (absolute) after 8 AdamW steps
at lr 1e-3. Runs that agree differ by about 2e-7 (float32 reduction order); training moves
weights by about 1e-3, and dropping the cross-rank gather moves them by about as much again.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

from embedsvc.encoders import resolve_model
from embedsvc.settings import use_settings
from tests.conftest import make_settings
from training.launch import LaunchError, LaunchSpec, check_base_model, run_torchrun
from training.train import LOSS_LOG, MODEL_DIR

TOL = 1e-5
WORDS = (
    "protein cell gene tumor vitamin insulin neuron virus immune kinase receptor mutation "
    "dose trial brain liver blood heart lung bone skin muscle enzyme hormone"
).split()

pytestmark = pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs 2 CPU cores")


@pytest.fixture(scope="module", autouse=True)
def quiet_offline_env(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keep library caches inside the temp folder and the hub offline, for child processes too."""
    cache = tmp_path_factory.mktemp("lib-cache")
    saved = {k: os.environ.get(k) for k in ("HF_HOME", "HF_HUB_OFFLINE", "MPLCONFIGDIR")}
    os.environ.update(HF_HOME=str(cache / "hf"), HF_HUB_OFFLINE="1", MPLCONFIGDIR=str(cache))
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, bundled_model: Path) -> Path:
    """A 2-layer, 32-wide BERT with the default model's tokenizer and mean pooling."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import AutoTokenizer, BertConfig, BertModel

    root = tmp_path_factory.mktemp("tiny")
    tokenizer = AutoTokenizer.from_pretrained(str(bundled_model))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=64, max_position_embeddings=128,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    torch.manual_seed(0)
    BertModel(config, add_pooling_layer=False).save_pretrained(root / "hf")
    tokenizer.save_pretrained(root / "hf")
    transformer = Transformer(str(root / "hf"), max_seq_length=64)
    model = SentenceTransformer(modules=[transformer, Pooling(32, "mean")])
    model.save(str(root / "st"))
    return root / "st"


@pytest.fixture(scope="module")
def triplets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """32 (query, positive, hard negative) rows: 4 steps per epoch at a global batch of 8."""
    rng = random.Random(7)
    rows = []
    for _ in range(32):
        query = rng.sample(WORDS, 3)
        rows.append(
            {
                "query": " ".join(query),
                "positive": " ".join(query + rng.sample(WORDS, 4)),
                "negative": " ".join(query[:1] + rng.sample(WORDS, 5)),
            }
        )
    path = tmp_path_factory.mktemp("pairs") / "triplets.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def train_tiny(model: Path, data: Path, out: Path, nproc: int, *extra: str) -> Path:
    argv = [
        "--data", str(data), "--base-model", str(model), "--output-dir", str(out),
        "--batch-size", "8", "--max-steps", "8", "--lr", "1e-3", "--warmup", "0",
        "--save-steps", "3", "--logging-steps", "1", "--seed", "3", *extra,
    ]  # fmt: skip
    status = run_torchrun(LaunchSpec(nproc=nproc, device="cpu"), argv, batch_size=8)
    assert status == 0, f"torchrun exited {status}"
    return out


def weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def loss_steps(run: Path) -> list[tuple[int, float]]:
    rows = [json.loads(x) for x in (run / LOSS_LOG).read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows]


@pytest.fixture(scope="module")
def one_process(tiny_model: Path, triplets: Path, tmp_path_factory) -> Path:
    return train_tiny(tiny_model, triplets, tmp_path_factory.mktemp("one"), 1)


@pytest.fixture(scope="module")
def two_ranks(tiny_model: Path, triplets: Path, tmp_path_factory) -> Path:
    return train_tiny(tiny_model, triplets, tmp_path_factory.mktemp("two"), 2)


def test_two_ranks_match_one_process_with_hard_negatives(
    tiny_model: Path, one_process: Path, two_ranks: Path
) -> None:
    one, two = weights(one_process / MODEL_DIR), weights(two_ranks / MODEL_DIR)
    assert max_diff(one, weights(tiny_model)) > 100 * TOL  # training did move the weights
    assert max_diff(one, two) < TOL
    steps_one, steps_two = loss_steps(one_process), loss_steps(two_ranks)
    assert [s for s, _ in steps_one] == list(range(1, 9))
    assert [s for s, _ in steps_two] == list(range(1, 9))
    assert all(abs(a - b) < TOL for (_, a), (_, b) in zip(steps_one, steps_two, strict=True))


def test_without_gathering_two_ranks_diverge(
    tiny_model: Path, triplets: Path, one_process: Path, tmp_path: Path
) -> None:
    """The control that shows the test above can fail: per-rank negatives change training."""
    alone = train_tiny(tiny_model, triplets, tmp_path / "nogather", 2, "--no-gather")
    assert max_diff(weights(one_process / MODEL_DIR), weights(alone / MODEL_DIR)) > 100 * TOL


def test_resume_after_a_stop_equals_the_uninterrupted_run(
    tiny_model: Path, triplets: Path, two_ranks: Path, tmp_path: Path
) -> None:
    run = tmp_path / "resumed"
    train_tiny(tiny_model, triplets, run, 2, "--stop-after-step", "5")
    assert not (run / MODEL_DIR).exists()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "checkpoint-3",
        "checkpoint-5",
    ]
    # A process killed while writing checkpoint-7 leaves a folder without trainer_state.json.
    (run / "checkpoints" / "checkpoint-7").mkdir()
    (run / "checkpoints" / "checkpoint-7" / "model.safetensors").write_bytes(b"partial")
    train_tiny(tiny_model, triplets, run, 2)
    assert max_diff(weights(two_ranks / MODEL_DIR), weights(run / MODEL_DIR)) < TOL
    assert [s for s, _ in loss_steps(run)] == list(range(1, 9))
    result = json.loads((run / "train_result.json").read_text())
    assert result["global_step"] == 8 and result["world_size"] == 2


def test_registry_round_trip(one_process: Path, tmp_path: Path) -> None:
    from embedsvc.encoders import Encoder
    from training.registry import (
        get_version,
        list_versions,
        promote,
        promoted_version,
        register_model,
    )

    models = tmp_path / "models"
    card = {"base_model": {"id": "tiny"}, "data": {"fingerprint": "abc", "pairs": 32}}
    first = register_model(models, "tiny", one_process / MODEL_DIR, card)
    second = register_model(models, "tiny", one_process / MODEL_DIR, card)
    assert (first.ref, second.ref) == ("tiny/v0001", "tiny/v0002")
    assert json.loads((first.path / "card.json").read_text())["data"]["fingerprint"] == "abc"
    assert "tiny/v0001" in (first.path / "README.md").read_text()

    spec = resolve_model("tiny/v0001", models)
    assert spec.path == first.path
    vectors = Encoder(spec).encode(["protein kinase"])
    assert vectors.shape == (1, 32)

    assert [v.ref for v in list_versions(models)] == ["tiny/v0001", "tiny/v0002"]
    assert promoted_version(models, "tiny") is None
    assert get_version(models, "tiny").version == "v0002"  # latest when none promoted
    promote(models, "tiny/v0001")
    assert get_version(models, "tiny").version == "v0001"
    assert json.loads((models / "tiny" / "promoted.json").read_text())["version"] == "v0001"


def test_evaluate_model_and_plot(one_process: Path, mini_beir: Path, tmp_path: Path) -> None:
    from training.evaluate import evaluate_model, plot_training, read_loss_log

    result = evaluate_model(one_process / MODEL_DIR, mini_beir, "test")
    assert set(result.metrics) == {"nDCG@10", "MRR@10", "MAP@100", "Recall@100"}
    assert all(0.0 <= v <= 1.0 for v in result.metrics.values())
    assert result.queries == 40
    png = plot_training(
        tmp_path / "p.png",
        [("base", result.metrics), ("v0001", result.metrics)],
        read_loss_log(one_process / LOSS_LOG),
    )
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unloadable_base_model_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad-model"
    bad.mkdir()
    (bad / "modules.json").write_text("not json")
    (bad / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(LaunchError, match="cannot be loaded"):
        check_base_model(str(bad), tmp_path / "models")
    with pytest.raises(LaunchError, match="unknown model"):
        check_base_model(str(tmp_path / "missing"), tmp_path / "models")


# --- the CLI, end to end -------------------------------------------------------------------


@pytest.fixture
def cli_home(tmp_path: Path, bundled_model: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    import embedsvc.settings

    home = tmp_path / "home"
    monkeypatch.setattr(embedsvc.settings, "_current", None)  # put back after the test
    use_settings(make_settings(home, bundled_model))
    return home


def invoke(home: Path, args: list[str]):
    """Run the real ``embedsvc`` CLI against the test's home."""
    from embedsvc.cli import app

    return CliRunner().invoke(app, ["--home", str(home), *args])


def beir_with_train_split(mini_beir: Path, folder: Path, extra_qrels: str = "") -> Path:
    """mini_beir with its judgments also as the train split (the tests train on them)."""
    folder.mkdir()
    for name in ("corpus.jsonl", "queries.jsonl"):
        (folder / name).symlink_to(mini_beir / name)
    (folder / "qrels").mkdir()
    qrels = (mini_beir / "qrels" / "test.tsv").read_text()
    (folder / "qrels" / "test.tsv").write_text(qrels)
    (folder / "qrels" / "train.tsv").write_text(qrels + extra_qrels)
    return folder


def test_cli_refuses_bad_input_before_any_work(
    cli_home: Path, mini_beir: Path, tiny_model: Path, tmp_path: Path
) -> None:
    data = beir_with_train_split(mini_beir, tmp_path / "beir", "1\tmissing-doc\t1\n")
    base = ["train", str(data), "--base-model", str(tiny_model)]

    too_many = invoke(cli_home, [*base, "--nproc", str((os.cpu_count() or 1) + 1)])
    assert too_many.exit_code == 1
    assert "more than the" in too_many.output

    unknown = invoke(cli_home, base)
    assert unknown.exit_code == 1
    assert "corpus id 'missing-doc' is not in corpus.jsonl" in unknown.output

    ps = invoke(cli_home, [*base, "--strategy", "ps", "--nproc", "2"])
    assert ps.exit_code == 1 and "leave --nproc and --nnodes at 1" in ps.output

    bad = invoke(cli_home, [*base[:2], "--base-model", str(tmp_path / "nowhere")])
    assert bad.exit_code == 1 and "unknown model" in bad.output
    assert not (cli_home / "training").exists()


def test_cli_train_mine_evaluate_register_promote(
    cli_home: Path, mini_beir: Path, tiny_model: Path, tmp_path: Path
) -> None:
    data = beir_with_train_split(mini_beir, tmp_path / "beir")
    args = [
        "train", str(data), "--name", "tiny", "--base-model", str(tiny_model),
        "--nproc", "2", "--batch-size", "8", "--max-steps", "4", "--lr", "1e-3",
        "--save-steps", "2", "--logging-steps", "1", "--mine-negatives", "1",
        "--max-seq-length", "64",
    ]  # fmt: skip
    first = invoke(cli_home, args)
    assert first.exit_code == 0, first.output
    assert "registered tiny/v0001" in first.output
    version = cli_home / "models" / "tiny" / "v0001"
    card = json.loads((version / "card.json").read_text())
    assert card["data"]["negatives_per_pair"] == 1 and card["data"]["mined_negatives"] == 1
    assert card["train"]["world_size"] == 2 and card["train"]["global_step"] == 4
    assert set(card["metrics"]["metrics"]) == {"nDCG@10", "MRR@10", "MAP@100", "Recall@100"}
    assert card["base_metrics"]["split"] == "test"
    assert (version / "training.png").read_bytes()[:4] == b"\x89PNG"
    assert len((version / LOSS_LOG).read_text().splitlines()) == 4
    pairs = (Path(card["run_dir"]) / "pairs.jsonl").read_text().splitlines()
    assert all(len(json.loads(line)["negative"]) == 1 for line in pairs)

    again = invoke(cli_home, args)  # same command: already done, nothing retrained
    assert again.exit_code == 0 and "registered tiny/v0001" in again.output
    assert not (cli_home / "models" / "tiny" / "v0002").exists()

    listed = invoke(cli_home, ["models", "list"])
    assert listed.exit_code == 0 and "tiny/v0001" in listed.output
    assert invoke(cli_home, ["models", "promote", "tiny/v0001"]).exit_code == 0
    shown = invoke(cli_home, ["models", "show", "tiny"])
    assert shown.exit_code == 0 and "tiny/v0001" in shown.output
    missing = invoke(cli_home, ["models", "show", "tiny/v0009"])
    assert missing.exit_code == 1 and "versions of tiny: v0001" in missing.output


def test_cli_eval_a_model_folder(cli_home: Path, one_process: Path, mini_beir: Path) -> None:
    from embedsvc.cli import app

    home = ["--home", str(cli_home)]
    model = str(one_process / MODEL_DIR)
    result = CliRunner().invoke(app, [*home, "eval", "--model", model, "--beir", str(mini_beir),
                                      "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["queries"] == 40
    missing = CliRunner().invoke(app, [*home, "eval", "--model", model, "--beir", str(cli_home)])
    assert missing.exit_code == 1 and "not found" in missing.output
    both = CliRunner().invoke(app, [*home, "eval", "c", "--model", model])
    assert both.exit_code == 1 and "not both" in both.output
