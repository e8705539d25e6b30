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

import numpy as np

from embedsvc.store import MAX_PASSAGES
from indexing.options import LongTexts  # split | truncate: an option of every build

DEFAULT_OVERLAP = 32
# split: overlapping passages cover the whole text; truncate: only the model's first window
# is embedded (the protocol of MTEB / BEIR leaderboards, to compare with them)


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
                   overlap: int = DEFAULT_OVERLAP) -> tuple[list[list[tuple[int, int]]],
                                                            list[list[list[int]]]]:
    """Each text's passages: their character spans, and their token ids (no special tokens).

    The ids are the ones this one tokenisation made, so embedding a passage never
    tokenises its text again.
    """
    encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True,
                        truncation=False, verbose=False)
    spans: list[list[tuple[int, int]]] = []
    ids: list[list[list[int]]] = []
    for text, tokens, offsets in zip(texts, encoded["input_ids"], encoded["offset_mapping"],
                                     strict=True):
        if len(offsets) <= max_tokens:
            spans.append([(0, len(text))])
            ids.append([tokens])
            continue
        ranges = windows(len(offsets), max_tokens, overlap)
        if len(ranges) > MAX_PASSAGES:
            raise ValueError(f"a text of {len(offsets)} tokens makes over {MAX_PASSAGES} passages")
        spans.append([(offsets[s][0], offsets[e - 1][1]) for s, e in ranges])
        ids.append([tokens[s:e] for s, e in ranges])
    return spans, ids


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
    spans, ids = split_passages(encoder.tokenizer, texts, encoder.max_tokens)
    if long_texts == "truncate":  # the first window is all the model will see
        spans, ids = [s[:1] for s in spans], [i[:1] for i in ids]
    return spans, encoder.encode_ids([window for text_ids in ids for window in text_ids])
