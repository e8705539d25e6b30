"""Embeddings from embedsvc with the official OpenAI client (pip install openai).

Run against a server (embedsvc serve): EMBEDSVC_URL and EMBEDSVC_API_KEY, when set, say
where it is and which key to send (a read key is enough; any text when it has no keys).
"""

import os

from openai import OpenAI

client = OpenAI(base_url=os.environ.get("EMBEDSVC_URL", "http://127.0.0.1:8000") + "/v1",
                api_key=os.environ.get("EMBEDSVC_API_KEY", "no-key"))
print("models:", [model.id for model in client.models.list()])
result = client.embeddings.create(model="all-MiniLM-L6-v2",
                                  input=["vitamin D deficiency", "bone density in older adults"])
for item in result.data:
    print(item.index, len(item.embedding), [round(x, 4) for x in item.embedding[:3]])
print("tokens:", result.usage.prompt_tokens)
