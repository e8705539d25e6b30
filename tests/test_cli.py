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


def test_collections_commands_and_compact(settings: Settings) -> None:
    from tests.test_compaction import write

    home = settings.home
    created = invoke(home, "collections", "create", "notes", "--indexed-field", "year", "--json")
    assert created.exit_code == 0, created.output
    info = json.loads(created.stdout)
    assert (info["name"], info["model"], info["indexed_fields"]) == ("notes", "all-MiniLM-L6-v2", ["year"])
    again = invoke(home, "collections", "create", "notes")
    assert again.exit_code == 1 and "already exists" in again.output
    bad = invoke(home, "collections", "create", "x", "--indexed-field", "a b")
    assert bad.exit_code == 1 and "field name" in bad.output
    write(settings, "notes", [("a", "Penguins huddle against the cold."), ("b", "Volcanoes erupt.")])
    listed = invoke(home, "collections", "list")
    assert listed.exit_code == 0 and "notes" in listed.stdout
    compacted = invoke(home, "index", "compact", "notes")
    assert compacted.exit_code == 0 and "2 fresh vectors folded in" in compacted.stdout
    shown = json.loads(invoke(home, "collections", "show", "notes", "--json").stdout)
    assert (shown["index_version"], shown["indexed_vectors"], shown["fresh_vectors"]) == (1, 2, 0)
    assert "nothing to compact" in invoke(home, "index", "compact", "notes").stdout
    found = invoke(home, "search", "notes", "penguins", "--filter", '{"year": {"$gt": 1}}', "--json")
    assert found.exit_code == 0 and json.loads(found.stdout)["hits"] == []
    bad_filter = invoke(home, "search", "notes", "penguins", "--filter", '{"year": {"$bad": 1}}')
    assert bad_filter.exit_code == 1 and "unknown operator '$bad'" in bad_filter.output
    not_json = invoke(home, "search", "notes", "penguins", "--filter", "{year")
    assert not_json.exit_code == 1 and "--filter: not valid JSON" in not_json.output
    assert invoke(home, "collections", "delete", "notes", "--yes").exit_code == 0
    gone = invoke(home, "collections", "show", "notes")
    assert gone.exit_code == 1 and "does not exist" in gone.output


def test_unexpected_errors_are_one_line_unless_debug(tmp_path: Path) -> None:
    """A collection whose database is not SQLite: no traceback, except with --debug."""
    import subprocess
    import sys

    folder = tmp_path / "home" / "collections" / "broken"
    folder.mkdir(parents=True)
    (folder / "collection.db").write_bytes(b"this is not a database" * 100)
    command = [sys.executable, "-m", "embedsvc", "--home", str(tmp_path / "home")]
    plain = subprocess.run([*command, "search", "broken", "x"], capture_output=True, text=True)
    assert plain.returncode == 1 and "Traceback" not in plain.stderr
    assert "error: DatabaseError" in plain.stderr and "--debug" in plain.stderr
    debug = subprocess.run([*command, "--debug", "search", "broken", "x"], capture_output=True, text=True)
    assert debug.returncode == 1 and "Traceback" in debug.stderr
