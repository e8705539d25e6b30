"""Integrations of embedsvc with other frameworks, each in its own module and each behind an
optional extra, so that importing :mod:`embedsvc` never needs them:

- :mod:`embedsvc.integrations.langchain` (``pip install 'embedsvc[langchain]'``): a LangChain
  ``Embeddings`` over the server's embed route and a ``VectorStore`` over a collection.
"""
