"""The command line as a user runs it: build, search, eval, and its error messages."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from embedsvc.cli import app
from embedsvc.settings import Settings

runner = CliRunner()


def invoke(home: Path, *args: str):
    return runner.invoke(app, ["--home", str(home), *args])


def test_search_json_has_the_api_shape(served_home: Settings) -> None:
    result = invoke(served_home.home, "search", "lexonly", "patients with cancer cells", "--k", "3", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["mode"] == "lexical" and data["fallback"] == "no_index"
    assert len(data["hits"]) == 3 and {"id", "score", "title"} <= set(data["hits"][0])


def test_search_table_and_unknown_collection(served_home: Settings) -> None:
    result = invoke(served_home.home, "search", "mini", "malaria", "--mode", "lexical")
    assert result.exit_code == 0 and "lexical" in result.stdout
    missing = invoke(served_home.home, "search", "nope", "x")
    assert missing.exit_code == 1 and "does not exist" in missing.output


def test_eval_scores_dense_above_lexical_floor(served_home: Settings, mini_beir: Path) -> None:
    result = invoke(served_home.home, "eval", "mini", "--beir", str(mini_beir), "--json")
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert metrics["queries"] == 40 and metrics["nDCG@10"] > 0.6
    assert 0 <= metrics["Recall@100"] <= 1
    dense_only = invoke(served_home.home, "eval", "lexonly", "--beir", str(mini_beir))
    assert dense_only.exit_code == 1 and "no dense index" in dense_only.output
    bad_split = invoke(served_home.home, "eval", "mini", "--beir", str(mini_beir), "--split", "dev")
    assert bad_split.exit_code == 1 and "dev.tsv" in bad_split.output


def test_build_reports_bad_input_with_its_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"_id": "a", "text": "fine"}\n{oops\n')
    result = invoke(tmp_path / "home", "index", "build", "c", "--input", str(bad), "--lexical-only")
    assert result.exit_code == 1 and "line 2: invalid JSON" in result.output
    skipped = invoke(tmp_path / "home", "index", "build", "c", "--input", str(bad),
                     "--lexical-only", "--on-error", "skip")
    assert skipped.exit_code == 0 and "skipped 1 input lines" in skipped.output
    missing = invoke(tmp_path / "home", "index", "build", "c", "--input", str(tmp_path / "none"))
    assert missing.exit_code == 1 and "does not exist" in missing.output
    bad_name = invoke(tmp_path / "home", "index", "build", "../x", "--input", str(bad))
    assert bad_name.exit_code == 1 and "invalid collection name" in bad_name.output
