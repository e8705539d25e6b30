"""How a stream entry becomes a document, or the reason it cannot.

An entry holds one field, ``doc``: a JSON object with the fields of a document of the HTTP
API's upsert (``id`` and ``text``, optional ``title`` and ``metadata``)::

    XADD notes * doc '{"id": "n1", "text": "Low vitamin D and bone density.", "metadata": {"year": 2019}}'

It is checked by the API's own code (its JSON parser, its ``DocumentIn`` schema, strict and
without unknown fields, and its limits: some text, no NUL in the id, finite numbers, at most
EMBEDSVC_MAX_DOCUMENT_BYTES), so the stream accepts exactly the documents the API accepts
and the two never drift apart. What is refused raises :class:`MalformedEntry` with a reason
for the dead-letter stream; it never stops the consumer.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import ValidationError

from embedsvc.api import checks, schemas
from embedsvc.api.errors import ApiError
from embedsvc.api.limits import BadBody, parse_json
from embedsvc.live.writes import DocumentIn
from embedsvc.options import describe
from embedsvc.settings import Settings

DOC_FIELD = b"doc"
# Reasons go into the dead-letter stream and the log: long enough to say what is wrong.
MAX_REASON_CHARS = 500
# JSON writes one byte of text as at most 6 (\u0001), so a document under the byte limit is
# never longer than this as JSON; a longer field is refused before it is parsed at all.
_JSON_EXPANSION = 6
_JSON_SLACK = 64 * 1024  # the id (at most 1,024 characters), keys and punctuation


class MalformedEntry(ValueError):
    """An entry that cannot become a document; ``reason`` says why."""

    def __init__(self, reason: str):
        self.reason = reason if len(reason) <= MAX_REASON_CHARS else reason[:MAX_REASON_CHARS] + "..."
        super().__init__(self.reason)


def parse_entry(fields: Mapping[bytes, bytes], settings: Settings) -> DocumentIn:
    """The document an entry carries.

    Args:
        fields: the entry's fields as Redis returns them (bytes to bytes; empty when the
            entry was deleted from the stream after it was delivered).
        settings: the limits (EMBEDSVC_MAX_DOCUMENT_BYTES).

    Raises:
        MalformedEntry: with the reason, for the dead-letter stream.
    """
    raw = _doc_field(fields)
    if len(raw) > _JSON_EXPANSION * settings.max_document_bytes + _JSON_SLACK:
        raise MalformedEntry(f"doc: {len(raw)} bytes, more than any document under the limit of "
                             f"{settings.max_document_bytes} bytes (EMBEDSVC_MAX_DOCUMENT_BYTES) "
                             "takes as JSON")
    try:
        value = parse_json(raw)
    except BadBody as exc:  # its messages speak of a request's body; here it is the field
        message = str(exc.detail).replace("the body", "doc")
        raise MalformedEntry(message if message.startswith("doc") else f"doc.{message}") from None
    if not isinstance(value, dict):
        raise MalformedEntry(f"doc: a JSON object is needed, not {type(value).__name__}")
    try:
        doc = schemas.DocumentIn.model_validate(value)
    except ValidationError as exc:
        raise MalformedEntry("; ".join(f"doc.{key}: {what}" for key, what in describe(exc))) from None
    if getattr(doc, "vector", None) is not None:  # the API may take vectors made elsewhere
        raise MalformedEntry("doc.vector: a stream takes documents to embed, not vectors made "
                             "elsewhere; write those through PUT /v1/collections/NAME/documents")
    try:
        checks.documents([doc], settings)
    except ApiError as exc:  # "documents[0] ('id'): what is wrong": the entry holds one
        what = exc.message.removeprefix(f"documents[0] ('{doc.id[:80]}'): ").removeprefix("documents[0]: ")
        raise MalformedEntry(f"doc: {what}") from None
    return DocumentIn(doc.id, doc.text, doc.title, doc.metadata)


def _doc_field(fields: Mapping[bytes, bytes]) -> bytes:
    """The ``doc`` field, refusing entries with none or with other fields."""
    if not fields:
        raise MalformedEntry("the entry has no fields (deleted from the stream after delivery?)")
    others = ", ".join(repr(name.decode("utf-8", "replace")) for name in fields if name != DOC_FIELD)
    if DOC_FIELD not in fields:
        raise MalformedEntry(f"no 'doc' field (has {others}): an entry holds one field, 'doc', "
                             "a JSON document")
    if others:
        raise MalformedEntry(f"unknown field(s) {others}: an entry holds one field, 'doc'")
    return fields[DOC_FIELD]
