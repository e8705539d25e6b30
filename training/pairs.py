"""Training pairs: (query, positive[, hard negatives]) read from a BEIR folder or a JSONL file.

Training data is checked completely before any process is launched: a pair that names a
document missing from the corpus, or a JSONL line without a query, is reported with its file
and line number, because finding out after a torchrun job has started (or, worse, training on
silently dropped rows) wastes the run. Pairs are plain text by the time they leave this module,
so the training entry point never needs the corpus.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from embedsvc.ir_metrics import load_queries
from embedsvc.store import document_text
from indexing.sources import SourceError, beir_corpus, open_text

log = logging.getLogger(__name__)

# How many offending lines an error message lists before it only counts the rest.
_MAX_REPORTED = 10


class PairsError(ValueError):
    """Training data is missing, empty or inconsistent; the message says where and what."""


@dataclass(frozen=True)
class Pair:
    """One training example: a query, a relevant text, and optional hard negatives.

    ``query_id``/``positive_id`` are kept when the pair came from a corpus, so hard-negative
    mining can recognise every judged positive of a query by id.
    """

    query: str
    positive: str
    negatives: tuple[str, ...] = ()
    query_id: str | None = None
    positive_id: str | None = None
    negative_ids: tuple[str, ...] = ()


def corpus_path(beir_dir: Path) -> Path:
    """The corpus file of a BEIR folder: the one the index reads (``indexing.sources``)."""
    try:
        return beir_corpus(beir_dir)
    except SourceError as exc:
        raise PairsError(str(exc)) from exc


def load_corpus(beir_dir: Path) -> dict[str, str]:
    """Read a BEIR corpus into ``{doc_id: title + " " + text}``.

    Args:
        beir_dir: a BEIR dataset folder.

    Returns:
        Document texts by id, in file order.
    """
    path = corpus_path(beir_dir)
    corpus: dict[str, str] = {}
    with open_text(path) as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                doc_id = str(row["_id"])
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise PairsError(
                    f"{path}:{lineno}: not a corpus row with an '_id' ({exc})"
                ) from exc
            corpus[doc_id] = document_text(row.get("title") or "", row.get("text") or "")
    if not corpus:
        raise PairsError(f"{path} holds no documents")
    return corpus


def _raise_problems(path: Path, problems: list[str], what: str) -> None:
    if not problems:
        return
    shown = "\n  ".join(problems[:_MAX_REPORTED])
    more = len(problems) - _MAX_REPORTED
    tail = f"\n  ... and {more} more" if more > 0 else ""
    raise PairsError(f"{path}: {len(problems)} {what}:\n  {shown}{tail}")


def _read_qrels_rows(path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh, delimiter="\t")
        missing = {"query-id", "corpus-id", "score"} - set(reader.fieldnames or ())
        if missing:
            raise PairsError(
                f"{path}:1: header lacks {sorted(missing)} (want query-id corpus-id score)"
            )
        for row in reader:
            yield reader.line_num, row


def load_beir_pairs(beir_dir: Path, split: str = "train") -> list[Pair]:
    """Pairs from ``qrels/<split>.tsv``: every judgment with score > 0 is one pair.

    Args:
        beir_dir: a BEIR dataset folder (corpus, queries.jsonl, qrels/).
        split: which qrels file to read.

    Returns:
        One :class:`Pair` per positive judgment, in file order.

    Raises:
        PairsError: the folder or split is missing, a line names a query or document that is
            not in the queries or corpus file (all such lines are listed), or no pair is left.
    """
    qrels_path = beir_dir / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        raise PairsError(
            f"{qrels_path} not found: is {beir_dir} a BEIR folder with split '{split}'?"
        )
    if not (beir_dir / "queries.jsonl").is_file():
        raise PairsError(f"{beir_dir / 'queries.jsonl'} not found")
    corpus = load_corpus(beir_dir)
    queries = load_queries(beir_dir)
    pairs: list[Pair] = []
    problems: list[str] = []
    for lineno, row in _read_qrels_rows(qrels_path):
        qid, did = row["query-id"], row["corpus-id"]
        try:
            score = int(row["score"])
        except (TypeError, ValueError):
            problems.append(f"line {lineno}: score {row['score']!r} is not an integer")
            continue
        if qid not in queries:
            problems.append(f"line {lineno}: query id {qid!r} is not in queries.jsonl")
        elif did not in corpus:
            problems.append(
                f"line {lineno}: corpus id {did!r} is not in {corpus_path(beir_dir).name}"
            )
        elif score > 0:
            pairs.append(Pair(queries[qid], corpus[did], query_id=qid, positive_id=did))
    _raise_problems(qrels_path, problems, "bad qrels lines")
    if not pairs:
        raise PairsError(f"{qrels_path} has no judgment with score > 0: nothing to train on")
    return pairs


def _jsonl_pair(row: object, lineno: int) -> tuple[Pair | None, str | None]:
    if not isinstance(row, dict):
        return None, f"line {lineno}: expected a JSON object"
    query, positive = row.get("query"), row.get("positive")
    for key, value in (("query", query), ("positive", positive)):
        if not isinstance(value, str) or not value.strip():
            return None, f"line {lineno}: '{key}' must be a non-empty string"
    negative = row.get("negative", [])
    negatives = [negative] if isinstance(negative, str) else negative
    if not isinstance(negatives, list) or not all(
        isinstance(n, str) and n.strip() for n in negatives
    ):
        return None, f"line {lineno}: 'negative' must be a non-empty string or a list of them"
    return Pair(query, positive, tuple(negatives)), None


def load_jsonl_pairs(path: Path) -> list[Pair]:
    """Pairs from JSONL lines ``{"query": ..., "positive": ..., "negative": ...}``.

    ``negative`` is optional and may be one text or a list; every line must then have the same
    number of negatives, because a batch is a table with one column per negative.

    Args:
        path: the JSONL file (``.gz`` is read transparently).

    Returns:
        The pairs in file order.

    Raises:
        PairsError: a line is not valid JSON or lacks a field (all such lines are listed), the
            negative counts differ, or the file has no pair.
    """
    if not path.is_file():
        raise PairsError(f"{path} not found")
    pairs: list[Pair] = []
    problems: list[str] = []
    counts: dict[int, int] = {}
    with open_text(path) as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                pair, problem = _jsonl_pair(json.loads(line), lineno)
            except json.JSONDecodeError as exc:
                pair, problem = None, f"line {lineno}: not valid JSON ({exc.msg})"
            if problem:
                problems.append(problem)
            elif pair is not None:
                counts.setdefault(len(pair.negatives), lineno)
                pairs.append(pair)
    _raise_problems(path, problems, "bad lines")
    if not pairs:
        raise PairsError(f"{path} holds no pairs: nothing to train on")
    if len(counts) > 1:
        seen = ", ".join(f"{n} (first at line {line})" for n, line in sorted(counts.items()))
        raise PairsError(f"{path}: lines have different numbers of negatives: {seen}")
    return pairs


def load_pairs(source: Path, split: str = "train") -> list[Pair]:
    """Pairs from a BEIR folder (a directory) or a JSONL file.

    Args:
        source: a BEIR folder or a JSONL file.
        split: the qrels split, for a BEIR folder.

    Returns:
        The validated pairs.
    """
    source = Path(source)
    if source.is_dir():
        pairs = load_beir_pairs(source, split)
    else:
        pairs = load_jsonl_pairs(source)
    log.info("read %d pairs from %s", len(pairs), source)
    return pairs


def write_pairs_jsonl(pairs: Iterable[Pair], path: Path) -> None:
    """Write pairs in the JSONL form :func:`load_jsonl_pairs` reads (negatives as a list)."""
    from embedsvc.files import atomic_write

    with atomic_write(path) as fh:
        for p in pairs:
            row: dict[str, object] = {"query": p.query, "positive": p.positive}
            if p.negatives:
                row["negative"] = list(p.negatives)
            fh.write(json.dumps(row, ensure_ascii=False).encode() + b"\n")


def pairs_columns(pairs: Sequence[Pair]) -> dict[str, list[str]]:
    """The columns a sentence-transformers dataset is built from, in the loss's order.

    Args:
        pairs: pairs that all have the same number of negatives.

    Returns:
        ``anchor``, ``positive`` and ``negative_1`` ... ``negative_n`` columns.
    """
    n_neg = {len(p.negatives) for p in pairs}
    if len(n_neg) != 1:
        raise PairsError(f"pairs have different numbers of negatives: {sorted(n_neg)}")
    columns: dict[str, list[str]] = {
        "anchor": [p.query for p in pairs],
        "positive": [p.positive for p in pairs],
    }
    for i in range(n_neg.pop()):
        columns[f"negative_{i + 1}"] = [p.negatives[i] for p in pairs]
    return columns


def fingerprint_pairs(pairs: Iterable[Pair]) -> str:
    """A sha256 over the pairs' texts in order: the data identity a model card records.

    Args:
        pairs: the training pairs.

    Returns:
        Hex digest; equal for equal data, different if any text, negative or order differs.
    """
    digest = hashlib.sha256()
    for p in pairs:
        record = [p.query, p.positive, *p.negatives]
        digest.update(json.dumps(record, ensure_ascii=False).encode())
        digest.update(b"\n")
    return digest.hexdigest()
