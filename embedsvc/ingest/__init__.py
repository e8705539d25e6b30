"""Streaming ingestion: documents from a message stream into live upserts of a collection.

``embedsvc ingest COLLECTION --from redis://HOST:PORT/STREAM`` runs one consumer
(:mod:`embedsvc.ingest.redis_stream`). What it accepts is :class:`IngestOptions`
(:mod:`embedsvc.ingest.options`); how an entry becomes a document is
:mod:`embedsvc.ingest.entries`; its progress, which the server's ``/metrics`` exports, is
kept in the collection's SQLite (:mod:`embedsvc.ingest.progress`).
"""
