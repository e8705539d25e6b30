"""Long texts become overlapping passages cut by the model's own tokenizer.

A model reads at most ``max_seq_length`` tokens; the rest of a longer text would be
silently truncated away. Instead each text is cut into windows of that many tokens
(less the special tokens) that overlap by ``overlap`` tokens, each window mapped back to
character offsets so the passage that matched can be shown. A document is then scored
by its best passage.

A passage's vector id is ``doc_rowid << PASSAGE_BITS | ordinal`` (see ``embedsvc.store``):
it is stable across rebuilds as long as the document keeps its row, so an index version
being served stays valid while a new build rewrites the passages.
"""

from __future__ import annotations

from typing import Any

from embedsvc.store import MAX_PASSAGES

DEFAULT_OVERLAP = 32


def windows(n_tokens: int, size: int, overlap: int) -> list[tuple[int, int]]:
    """Token ranges [start, end) covering ``n_tokens``, each ``size`` long, overlapping."""
    if n_tokens <= size:
        return [(0, n_tokens)]
    step = max(1, size - overlap)
    ranges = []
    start = 0
    while True:
        end = min(start + size, n_tokens)
        ranges.append((start, end))
        if end == n_tokens:
            return ranges
        start += step


def split_passages(tokenizer: Any, texts: list[str], max_tokens: int,
                   overlap: int = DEFAULT_OVERLAP) -> list[list[tuple[int, int]]]:
    """Character spans of each text's passages (one span for a text that fits)."""
    encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True,
                        truncation=False, verbose=False)
    spans: list[list[tuple[int, int]]] = []
    for text, offsets in zip(texts, encoded["offset_mapping"], strict=True):
        if len(offsets) <= max_tokens:
            spans.append([(0, len(text))])
            continue
        ranges = windows(len(offsets), max_tokens, overlap)
        if len(ranges) > MAX_PASSAGES:
            raise ValueError(f"a text of {len(offsets)} tokens makes over {MAX_PASSAGES} passages")
        spans.append([(offsets[s][0], offsets[e - 1][1]) for s, e in ranges])
    return spans
