"""Long documents are cut into overlapping passages; search shows the passage that matched."""

from __future__ import annotations

from pathlib import Path

import pytest

from embedsvc.client import Client
from embedsvc.passages import split_passages, windows
from embedsvc.settings import Settings
from indexing.job import BuildJob, BuildOptions
from tests.conftest import RunningServer, write_jsonl


def test_windows_cover_everything_with_overlap() -> None:
    assert windows(10, 20, 4) == [(0, 10)]
    ranges = windows(100, 40, 10)
    assert ranges == [(0, 40), (30, 70), (60, 100)]
    covered = set().union(*(range(s, e) for s, e in ranges))
    assert covered == set(range(100))


def test_spans_follow_the_tokenizer(bundled_model: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(bundled_model))
    text = " ".join(f"word{i}" for i in range(300))
    [spans], [ids] = split_passages(tokenizer, [text], max_tokens=128, overlap=16)
    assert len(spans) > 2 and spans[0][0] == 0 and spans[-1][1] == len(text)
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert start < end  # consecutive passages overlap
    assert all(len(tokenizer(text[s:e], add_special_tokens=False)["input_ids"]) <= 128
               for s, e in spans)
    # the ids handed on for embedding are the passage's own tokens, not a re-tokenisation's
    assert len(ids) == len(spans) and all(len(p) <= 128 for p in ids)
    assert tokenizer.decode(ids[1]) == tokenizer.decode(
        tokenizer(text[spans[1][0]:spans[1][1]], add_special_tokens=False)["input_ids"])


def test_search_finds_a_fact_past_the_models_window(settings: Settings, tmp_path: Path) -> None:
    filler = " ".join(["Protein synthesis in ribosomes follows the genetic code."] * 60)
    needle = "Zebra populations in Kenya declined sharply after the drought of 2009."
    rows = [{"_id": "long", "title": "Cell biology", "text": f"{filler} {needle}"},
            {"_id": "short", "title": "Baking", "text": "Bread rises when yeast ferments sugar."}]
    BuildJob(settings, "c", write_jsonl(tmp_path / "d.jsonl", rows), BuildOptions()).run()
    with RunningServer(settings) as server, Client(server.url) as client:
        result = client.search("c", "decline of zebra numbers in Kenya", k=2, mode="dense")
    top = result.hits[0]
    assert top.id == "long" and top.passage is not None
    assert top.passage.ord >= 1 and "Zebra populations" in top.passage.text
    assert len({h.id for h in result.hits}) == len(result.hits)  # documents, not passages


@pytest.mark.parametrize("k", [1, 2])
def test_k_counts_documents(settings: Settings, tmp_path: Path, k: int) -> None:
    rows = [{"_id": f"d{i}", "text": " ".join([f"Topic {i} sentence about cells."] * 80)}
            for i in range(3)]
    BuildJob(settings, "c", write_jsonl(tmp_path / "d.jsonl", rows), BuildOptions()).run()
    from tests.test_api import local_search

    assert len(local_search(settings, "c", "cells", k)) == k


def test_truncate_embeds_only_the_first_window(settings: Settings, tmp_path: Path) -> None:
    filler = " ".join(["Protein synthesis in ribosomes follows the genetic code."] * 60)
    rows = [{"_id": "long", "title": "Cell biology", "text": filler}]
    report = BuildJob(settings, "c", write_jsonl(tmp_path / "d.jsonl", rows),
                      BuildOptions(long_texts="truncate")).run()
    assert report.manifest["count"] == 1 and report.manifest["long_texts"] == "truncate"
    from tests.test_api import local_search

    [hit] = local_search(settings, "c", "ribosomes", 1)
    assert hit.passage.ord == 0 and hit.passage.end < len(rows[0]["title"] + " " + filler)
