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

from typing import Any, Literal

import numpy as np

from embedsvc.store import MAX_PASSAGES

DEFAULT_OVERLAP = 32
# split: overlapping passages cover the whole text; truncate: only the model's first window
# is embedded (the protocol of MTEB / BEIR leaderboards, to compare with them)
LongTexts = Literal["split", "truncate"]


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


def embed_passages(encoder: Any, texts: list[str],
                   long_texts: LongTexts = "split") -> tuple[list[list[tuple[int, int]]], np.ndarray]:
    """Cut texts into passages and embed them: what a build's chunk and a live write share.

    Args:
        encoder: a loaded :class:`embedsvc.encoders.Encoder`.
        texts: the documents' texts (``document_text`` of title and body).
        long_texts: ``split`` or ``truncate`` (see :data:`LongTexts`).

    Returns:
        (per text, its passages' character spans; (passages, dim) float32 unit vectors in
        text order).
    """
    special = encoder.tokenizer.num_special_tokens_to_add(pair=False)
    spans = split_passages(encoder.tokenizer, texts, encoder.max_seq_length - special)
    if long_texts == "truncate":  # the first window is all the model will see
        spans = [doc_spans[:1] for doc_spans in spans]
    passages = [text[start:end] for text, doc_spans in zip(texts, spans, strict=True)
                for start, end in doc_spans]
    return spans, encoder.encode(passages)
