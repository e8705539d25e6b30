"""embedsvc: embeddings and vector search, from batch indexing to an HTTP API and a client."""

__version__ = "0.1.0"
