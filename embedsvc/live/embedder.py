"""The embedder of the fresh segment: documents written through the API get their vectors.

It reads a micro-batch of pending documents, embeds them with no transaction open (the
model takes milliseconds to seconds; writers and readers go on meanwhile), and stores the
passages with their vectors in one short write transaction. A document written again while
it was being embedded is left pending: its new text is embedded on the next round, and the
vectors of the old text are thrown away instead of stored.
"""

from __future__ import annotations

import logging

from embedsvc.encoders import Encoder
from embedsvc.passages import LongTexts, embed_passages
from embedsvc.store import Store, document_text, in_list, passage_id, vector_blob

log = logging.getLogger(__name__)


def embed_pending(store: Store, encoder: Encoder, long_texts: LongTexts = "split",
                  limit: int = 32, only: int | None = None) -> int:
    """Embed up to ``limit`` pending documents, oldest first (``only``: that one).

    A batch that fails is embedded document by document; one that fails alone leaves the
    queue, logged, and stays searchable lexically.

    Returns:
        How many documents were taken (0: nothing was pending).
    """
    which = ("", ()) if only is None else ("WHERE p.doc = ?", (only,))
    with store.read() as conn:
        rows = conn.execute(
            "SELECT p.doc, p.seq, d.title, d.text FROM pending p JOIN documents d "
            f"ON d.rowid = p.doc {which[0]} ORDER BY p.seq, p.doc LIMIT ?",
            (*which[1], limit)).fetchall()
    if not rows:
        return 0
    texts = [document_text(title or "", text or "") for _, _, title, text in rows]
    try:
        spans, vectors = embed_passages(encoder, texts, long_texts)
    except Exception:  # noqa: BLE001 - one document must not hold up every one behind it
        if len(rows) == 1:
            _give_up(store, rows[0][0], rows[0][1])
            return 1
        return sum(embed_pending(store, encoder, long_texts, 1, doc) for doc, *_ in rows)
    with store.write() as conn:
        if store.get_meta("model_id") != encoder.spec.model_id:
            return len(rows)  # a build switched models meanwhile: these vectors are of no use
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
            passages += [(passage_id(doc, o), doc, o, start, end, seq, vector_blob(vector))
                         for o, ((start, end), vector) in enumerate(zip(doc_spans, block, strict=True))]
        operand, params = in_list(done)
        conn.execute(f"DELETE FROM passages WHERE doc IN {operand}", params)
        conn.executemany('INSERT INTO passages(id, doc, ord, start, "end", indexed, seq, vector) '
                         "VALUES (?, ?, ?, ?, ?, 0, ?, ?)", passages)
        conn.execute(f"DELETE FROM pending WHERE doc IN {operand}", params)
    log.debug("%s: embedded %d documents (%d passages)", store.path.parent.name, len(done),
              len(passages))
    return len(rows)


def _give_up(store: Store, doc: int, seq: int) -> None:
    """A document that cannot be embedded leaves the queue (BM25 still finds it)."""
    log.exception("%s: document row %d cannot be embedded; it stays searchable lexically only "
                  "(`embedsvc index check` lists such documents)", store.path.parent.name, doc)
    with store.write() as conn:
        conn.execute("DELETE FROM pending WHERE doc = ? AND seq = ?", (doc, seq))
