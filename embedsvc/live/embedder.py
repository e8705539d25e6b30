"""The embedder of the fresh segment: documents written through the API get their vectors.

It reads a micro-batch of pending documents, embeds them with no transaction open (the
model takes milliseconds to seconds; writers and readers go on meanwhile), and stores the
passages with their vectors in one short write transaction. A document written again while
it was being embedded is left pending: its new text is embedded on the next round, and the
vectors of the old text are thrown away instead of stored.
"""

from __future__ import annotations

import logging

import numpy as np

from embedsvc.encoders import Encoder
from embedsvc.passages import LongTexts, embed_passages
from embedsvc.store import Store, document_text, in_list, passage_id

log = logging.getLogger(__name__)


def embed_pending(store: Store, encoder: Encoder, long_texts: LongTexts = "split",
                  limit: int = 32) -> int:
    """Embed up to ``limit`` pending documents, oldest first.

    Returns:
        How many documents were taken (0: nothing was pending).
    """
    with store.read() as conn:
        rows = conn.execute(
            "SELECT p.doc, p.seq, d.title, d.text FROM pending p JOIN documents d "
            "ON d.rowid = p.doc ORDER BY p.seq, p.doc LIMIT ?", (limit,)).fetchall()
    if not rows:
        return 0
    texts = [document_text(title or "", text or "") for _, _, title, text in rows]
    spans, vectors = embed_passages(encoder, texts, long_texts)
    with store.write() as conn:
        seq = store.next_seq(conn)
        operand, params = in_list([doc for doc, *_ in rows])
        still = set(conn.execute(f"SELECT doc, seq FROM pending WHERE doc IN {operand}", params))
        passages, done, offset = [], [], 0
        for (doc, claimed, _, _), doc_spans in zip(rows, spans, strict=True):
            block = vectors[offset:offset + len(doc_spans)]
            offset += len(doc_spans)
            if (doc, claimed) not in still:
                continue  # written again since: its new text is embedded next round
            done.append(doc)
            passages += [(passage_id(doc, o), doc, o, start, end, seq, _blob(vector))
                         for o, ((start, end), vector) in enumerate(zip(doc_spans, block, strict=True))]
        operand, params = in_list(done)
        conn.execute(f"DELETE FROM passages WHERE doc IN {operand}", params)
        conn.executemany('INSERT INTO passages(id, doc, ord, start, "end", indexed, seq, vector) '
                         "VALUES (?, ?, ?, ?, ?, 0, ?, ?)", passages)
        conn.execute(f"DELETE FROM pending WHERE doc IN {operand}", params)
    log.debug("%s: embedded %d documents (%d passages)", store.path.parent.name, len(done),
              len(passages))
    return len(rows)


def _blob(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()
