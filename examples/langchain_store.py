"""LangChain over embedsvc (pip install 'embedsvc[langchain]'): the server's model as LangChain
embeddings, a collection as a LangChain vector store, a filtered search and a retriever.

Run against a server (embedsvc serve): python examples/langchain_store.py [URL]. The URL is the
argument, else EMBEDSVC_URL, else http://127.0.0.1:8000; EMBEDSVC_API_KEY, when set, is sent.
"""

import os
import sys

from embedsvc.integrations.langchain import EmbedsvcEmbeddings, EmbedsvcVectorStore

url = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("EMBEDSVC_URL", "http://127.0.0.1:8000")
api_key = os.environ.get("EMBEDSVC_API_KEY")

embeddings = EmbedsvcEmbeddings(url, api_key=api_key)  # the server's default model
with EmbedsvcVectorStore("langchain-notes", embeddings, url=url, api_key=api_key) as store:
    # created on the first write (vectors of the embedding's dimension); the same ids replace
    store.add_texts(
        ["Low vitamin D is linked to lower bone density in older adults.",
         "Mosquitoes carry the malaria parasite from one person to another.",
         "Vitamin D supplements did not prevent fractures in a large trial.",
         "Regular exercise makes bones stronger."],
        metadatas=[{"kind": "review", "year": 2019}, {"kind": "review", "year": 2021},
                   {"kind": "trial", "year": 2022}, {"kind": "trial", "year": 2018}],
        ids=["n1", "n2", "n3", "n4"],
    )
    print("trials about vitamin D and bones:")
    for doc, score in store.similarity_search_with_score("vitamin D and bones", k=2,
                                                         filter={"kind": "trial"}):
        print(f"  {score:.3f} {doc.id} {doc.metadata} {doc.page_content}")

    retriever = store.as_retriever(search_kwargs={"k": 1, "filter": {"year": {"$gte": 2020}}})
    for doc in retriever.invoke("insects that spread disease"):
        print(f"retrieved: {doc.id} {doc.page_content}")
    # diverse results: store.as_retriever(search_type="mmr", search_kwargs={"k": 2, "fetch_k": 10})
embeddings.close()
