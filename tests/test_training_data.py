"""Training inputs without a model: pairs, hard-negative mining, launch checks, registry rules.

Everything here is checked before a torchrun job starts, so each bad input must fail with a
message that names the file, the line and what to change.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from embedsvc.options import to_argv
from training.launch import LaunchError, LaunchSpec, TrainOptions, check_launch, torchrun_command
from training.negatives import mine_hard_negatives
from training.pairs import (
    Pair,
    PairsError,
    fingerprint_pairs,
    load_beir_pairs,
    load_corpus,
    load_jsonl_pairs,
    load_pairs,
    pairs_columns,
    write_pairs_jsonl,
)
from training.registry import RegistryError, check_name
from training.train import last_checkpoint, trim_loss_log


def write_beir(folder: Path, qrels: list[tuple[str, str, int]]) -> Path:
    """A small BEIR folder: docs d1..d6, queries q1..q3, the given train qrels."""
    folder.mkdir(parents=True, exist_ok=True)
    docs = [{"_id": f"d{i}", "title": f"Title {i}", "text": f"text {i}"} for i in range(1, 7)]
    (folder / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    queries = [{"_id": f"q{i}", "text": f"query {i}"} for i in range(1, 4)]
    (folder / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (folder / "qrels").mkdir(exist_ok=True)
    lines = ["query-id\tcorpus-id\tscore", *(f"{q}\t{d}\t{s}" for q, d, s in qrels)]
    (folder / "qrels" / "train.tsv").write_text("\n".join(lines) + "\n")
    return folder


def test_beir_pairs_join_title_and_text_and_skip_zero_scores(tmp_path: Path) -> None:
    beir = write_beir(tmp_path / "b", [("q1", "d1", 1), ("q1", "d2", 1), ("q2", "d3", 0)])
    pairs = load_beir_pairs(beir, "train")
    assert [(p.query_id, p.positive_id) for p in pairs] == [("q1", "d1"), ("q1", "d2")]
    assert pairs[0].query == "query 1"
    assert pairs[0].positive == "Title 1 text 1"
    assert load_corpus(beir)["d4"] == "Title 4 text 4"


def test_beir_pairs_report_unknown_ids_with_line_numbers(tmp_path: Path) -> None:
    beir = write_beir(
        tmp_path / "b", [("q1", "d1", 1), ("q1", "nope", 1), ("q9", "d2", 1), ("q2", "d3", 1)]
    )
    with pytest.raises(PairsError) as err:
        load_beir_pairs(beir, "train")
    message = str(err.value)
    assert "2 bad qrels lines" in message
    assert "line 3: corpus id 'nope' is not in corpus.jsonl" in message
    assert "line 4: query id 'q9' is not in queries.jsonl" in message


def test_beir_without_positive_judgments_is_empty_data(tmp_path: Path) -> None:
    beir = write_beir(tmp_path / "b", [("q1", "d1", 0)])
    with pytest.raises(PairsError, match="no judgment with score > 0"):
        load_beir_pairs(beir, "train")


def test_beir_missing_split_says_which_file(tmp_path: Path) -> None:
    beir = write_beir(tmp_path / "b", [("q1", "d1", 1)])
    with pytest.raises(PairsError, match=r"qrels/dev\.tsv not found"):
        load_pairs(beir, "dev")


def test_jsonl_pairs_with_negatives(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    rows = [
        {"query": "a", "positive": "b", "negative": "c"},
        {"query": "d", "positive": "e", "negative": ["f"]},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    pairs = load_pairs(path)
    assert pairs == [Pair("a", "b", ("c",)), Pair("d", "e", ("f",))]
    assert pairs_columns(pairs) == {
        "anchor": ["a", "d"],
        "positive": ["b", "e"],
        "negative_1": ["c", "f"],
    }


def test_jsonl_bad_lines_are_listed(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"query": "a", "positive": "b"}\n{"query": ""}\nnot json\n[1]\n')
    with pytest.raises(PairsError) as err:
        load_jsonl_pairs(path)
    message = str(err.value)
    assert "3 bad lines" in message
    assert "line 2: 'query' must be a non-empty string" in message
    assert "line 3: not valid JSON" in message
    assert "line 4: expected a JSON object" in message


def test_jsonl_empty_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text("\n")
    with pytest.raises(PairsError, match="holds no pairs"):
        load_jsonl_pairs(path)


def test_jsonl_negative_counts_must_agree(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text(
        '{"query": "a", "positive": "b", "negative": "c"}\n{"query": "d", "positive": "e"}\n'
    )
    with pytest.raises(PairsError, match=r"0 \(first at line 2\), 1 \(first at line 1\)"):
        load_jsonl_pairs(path)


def test_written_pairs_read_back_identically(tmp_path: Path) -> None:
    pairs = [Pair("q", "p", ("n1", "n2")), Pair("q2", "p2", ("n3", "n4"))]
    write_pairs_jsonl(pairs, tmp_path / "out.jsonl")
    again = load_jsonl_pairs(tmp_path / "out.jsonl")
    assert again == pairs
    assert fingerprint_pairs(again) == fingerprint_pairs(pairs)
    assert fingerprint_pairs(pairs[::-1]) != fingerprint_pairs(pairs)


def test_mining_skips_every_positive_of_the_query(tmp_path: Path) -> None:
    beir = write_beir(tmp_path / "b", [("q1", "d1", 1), ("q1", "d2", 1), ("q2", "d3", 1)])
    corpus = load_corpus(beir)
    ranking = {"query 1": ["d2", "d1", "d5", "d4", "d6"], "query 2": ["d3", "d5", "d1", "d6", "d4"]}
    calls: list[tuple[list[str], int]] = []

    def search(queries: list[str], k: int) -> list[list[str]]:
        calls.append((queries, k))
        return [ranking[q][:k] for q in queries]

    mined = mine_hard_negatives(load_beir_pairs(beir), search, corpus, num_negatives=2)
    assert [p.negative_ids for p in mined] == [("d5", "d4"), ("d5", "d4"), ("d5", "d1")]
    assert mined[0].negatives == (corpus["d5"], corpus["d4"])
    assert len(calls) == 1 and calls[0][0] == ["query 1", "query 2"]  # each query once

    skipped = mine_hard_negatives(load_beir_pairs(beir), search, corpus, 1, skip_top=3)
    assert [p.negative_ids for p in skipped] == [("d4",), ("d4",), ("d6",)]


def test_mining_without_ids_compares_texts() -> None:
    corpus = {"x": "pos text", "y": "other", "z": "third"}
    pairs = [Pair("q", "pos text")]
    mined = mine_hard_negatives(pairs, lambda qs, k: [["x", "y", "z"]] * len(qs), corpus, 1)
    assert mined[0].negatives == ("other",)


def test_mining_too_few_results_is_an_error() -> None:
    corpus = {"x": "pos", "y": "neg"}
    with pytest.raises(PairsError, match="only 1 non-positive results of 2"):
        mine_hard_negatives(
            [Pair("q", "pos", positive_id="x")], lambda qs, k: [["x", "y"]], corpus, 2
        )


def test_nproc_larger_than_the_machine_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("training.launch.os.cpu_count", lambda: 2)
    assert check_launch(LaunchSpec(nproc=2, device="cpu"), batch_size=32) == "cpu"
    with pytest.raises(LaunchError, match="--nproc 3 is more than the 2 CPU cores"):
        check_launch(LaunchSpec(nproc=3, device="cpu"))


def test_launch_shape_checks() -> None:
    with pytest.raises(LaunchError, match="needs --rdzv-endpoint"):
        check_launch(LaunchSpec(nproc=1, nnodes=2, device="cpu"))
    with pytest.raises(LaunchError, match="does not split evenly over 2 processes"):
        check_launch(LaunchSpec(nproc=1, nnodes=2, rdzv_endpoint="h:1", device="cpu"), 33)
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        LaunchSpec(nproc=0, device="cpu")


def test_torchrun_command_single_and_multi_node() -> None:
    argv = ["--data", "p.jsonl"]
    single = torchrun_command(LaunchSpec(nproc=2), argv)
    assert single[1:] == [
        "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
        "-m", "training.train", "--data", "p.jsonl",
    ]  # fmt: skip
    multi = torchrun_command(LaunchSpec(nproc=4, nnodes=2, rdzv_endpoint="head:29400"), argv)
    assert "--standalone" not in multi
    joined = " ".join(multi)
    assert "--nnodes 2 --rdzv-backend c10d --rdzv-endpoint head:29400" in joined
    assert joined.endswith("-m training.train --data p.jsonl")


def test_train_options_become_entry_point_arguments() -> None:
    from training.train import parse_args

    options = TrainOptions(batch_size=64, lr=3e-5, max_seq_length=128, gather=False)
    parsed = parse_args(["--data", "d", "--base-model", "m", "--output-dir", "o", *to_argv(options)])
    assert (parsed.batch_size, parsed.lr, parsed.max_seq_length) == (64, 3e-5, 128)
    assert parsed.gather is False and parsed.strategy == "ddp"
    # what a rank does with no option given is exactly the model's default recipe
    bare = parse_args(["--data", "d", "--base-model", "m", "--output-dir", "o"])
    assert {k: getattr(bare, k) for k in TrainOptions.model_fields} == TrainOptions().model_dump()


def test_a_rank_refuses_a_bad_recipe_value_naming_the_option(capsys: pytest.CaptureFixture) -> None:
    from training.train import parse_args

    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--data", "d", "--base-model", "m", "--output-dir", "o", "--lr", "fast"])
    assert exit_info.value.code == 2
    assert "--lr: Input should be a valid number" in capsys.readouterr().err


def test_last_checkpoint_skips_incomplete_folders(tmp_path: Path) -> None:
    assert last_checkpoint(tmp_path / "none") is None
    for step in (2, 4):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(
            json.dumps({"global_step": step})
        )
    (tmp_path / "checkpoint-6").mkdir()  # killed before its state was written
    (tmp_path / "checkpoint-8").mkdir()
    (tmp_path / "checkpoint-8" / "trainer_state.json").write_text('{"global_st')  # cut short
    assert last_checkpoint(tmp_path) == tmp_path / "checkpoint-4"


def test_loss_log_is_trimmed_to_the_resumed_step(tmp_path: Path) -> None:
    rows = [{"step": s, "loss": 1.0 / s} for s in (1, 2, 3, 4)]
    text = "".join(json.dumps(r) + "\n" for r in rows)
    (tmp_path / "loss.jsonl").write_text(text[:-9])  # the last line cut short by a kill
    trim_loss_log(tmp_path, 2)
    kept = [json.loads(x)["step"] for x in (tmp_path / "loss.jsonl").read_text().splitlines()]
    assert kept == [1, 2]


@pytest.mark.parametrize("name", ["", "_bundled", "a/b", "../x", "x" * 65])
def test_registry_names_are_folder_safe(name: str) -> None:
    with pytest.raises(RegistryError):
        check_name(name)
