"""The whole HTTP API fuzzed from its own OpenAPI schema (schemathesis), against the real
uvicorn server: no request may get a 500, and every answer must match what the schema
declares (status, content type, headers, body) with every check schemathesis has on.

Both schema-valid requests (which must be accepted: 2xx, or 404/409 for what the server's
state decides) and schema-violating ones (which must be refused with a 4xx) are generated,
so the schema has to state the server's real rules: limits of the settings, the name
pattern, the filter grammar. What JSON Schema cannot state is listed in INEXPRESSIBLE.

Bounded: a few examples per operation, fixed seeds (the same cases on every run, no
example database written), small limits so that valid requests stay small.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import requests
import schemathesis
from hypothesis import settings
from schemathesis.config import SchemathesisConfig
from schemathesis.core.failures import Failure

from embedsvc.keys import digest
from tests.conftest import RunningServer, make_settings, wait_for

# Limits of the fuzzed server: small, so that what the schema allows is quick to serve.
LIMITS = {"max_k": 50, "max_query_chars": 300, "max_embed_texts": 8, "max_batch_documents": 20,
          "max_document_bytes": 20_000, "max_body_bytes": 200_000, "max_filter_depth": 3,
          "max_filter_conditions": 16}
EXAMPLES_PER_OPERATION = 10
# Operations with a JSON body: their optional fields are often left out of a generated
# body, so it takes this many examples to try each one at its limits.
BODY_OPERATIONS = ["search", "upsert_documents", "delete_documents", "create_collection", "embed"]
EXAMPLES_PER_BODY_OPERATION = 50
# The server has an admin key, so that auth is enforced and the ignored_auth check means
# something (without keys every call is allowed, on loopback only).
FUZZ_KEY = "fuzz-admin-key"
KEYS = {"api_keys": f"{digest(FUZZ_KEY)} admin fuzz"}

# Rules the server enforces that JSON Schema cannot state, each a (code, phrase of the
# message) of the 422 that refuses them. A schema-valid request refused for one of these
# is not a mismatch; refused for anything else, it is.
INEXPRESSIBLE = [
    ("invalid_request", "send each id once per call"),  # ids distinct across array items
    ("invalid_filter", "conditions; simplify it"),  # a count over the whole filter tree
    ("too_large", "EMBEDSVC_MAX_DOCUMENT_BYTES"),  # bytes of title + text + metadata as UTF-8
    ("invalid_request", "nor a registered model version"),  # which models the server holds
    ("too_large", "EMBEDSVC_MAX_BODY_BYTES"),  # bytes of the whole body
    # /v1/embeddings: `dimensions` must be the size of the model asked for, which the server holds
    ("invalid_request", "cannot shorten them"),
    # Requests are strict: 5.0 is not taken for the integer 5. JSON Schema has no way to say
    # so (5.0 and 5 are the same number to it), so a generated 5.0 for an integer is refused.
    ("invalid_request", "Input should be a valid integer (got a number)"),
    # vectors made elsewhere: their dimension is the collection's, and a zero vector has no direction
    ("invalid_request", "-dimensional vectors"),
    ("invalid_request", "a zero vector has no direction"),
    ("invalid_request", "needs a text query; a vector searches densely"),  # mode given with a vector
    ("invalid_request", "holds no vectors (it was built lexical only)"),
]


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory, bundled_model: Path) -> Iterator[RunningServer]:
    """A server with a collection of a few embedded documents ('fuzz') and one to be
    deleted ('doomed'), its model loaded, so valid requests reach the search and write code."""
    home = tmp_path_factory.mktemp("fuzz-home")
    with RunningServer(make_settings(home, bundled_model, **LIMITS, **KEYS)) as running, \
            httpx.Client(base_url=running.url, timeout=60, headers={"X-API-Key": FUZZ_KEY}) as http:
        for name in ("fuzz", "doomed"):
            http.post("/v1/collections", json={"name": name, "indexed_fields": ["year"]}).raise_for_status()
        docs = [{"id": f"doc-{i}", "title": f"Study {i}", "text": f"A study of topic {i % 3}.",
                 "metadata": {"year": 2010 + i, "kind": "review" if i % 2 else "trial"}} for i in range(6)]
        http.put("/v1/collections/fuzz/documents", json={"documents": docs}).raise_for_status()
        wait_for(lambda: http.get("/v1/collections/fuzz").json()["pending"] == 0, timeout=120, interval=0.5)
        wait_for(lambda: set(http.get("/readyz").json()["models"].values()) == {"ready"}, timeout=120,
                 interval=0.5)
        yield running


@pytest.fixture(scope="module")
def fuzz_session() -> Iterator[requests.Session]:
    """One keep-alive session for every call, as a real client holds one."""
    with requests.Session() as session:
        yield session


@pytest.fixture(scope="module")
def fuzz_url(fuzz_server: RunningServer) -> str:
    """The fuzzed server's URL, once it is seen to serve the schema the tests came from."""
    assert httpx.get(f"{fuzz_server.url}/openapi.json").json() == served_schema()
    return fuzz_server.url


def fuzz_config() -> SchemathesisConfig:
    """Every check on; positive and negative data; the coverage phase (boundary values and
    methods the schema does not list) and the fuzzing phase; no stateful phase (the schema
    has no links to chain calls with)."""
    checks = {name: {"enabled": True} for name in (
        "not_a_server_error", "status_code_conformance", "content_type_conformance",
        "response_schema_conformance", "response_headers_conformance", "positive_data_acceptance",
        "negative_data_rejection", "use_after_free", "ensure_resource_availability",
        "missing_required_header", "ignored_auth", "object_level_authorization", "unsupported_method",
        "allow_header_conformance")}
    # A schema-violating body may also be over EMBEDSVC_MAX_BODY_BYTES, which the server refuses
    # first, by size: 413 is a rejection too (long generated vectors make such bodies common).
    checks["negative_data_rejection"]["expected-statuses"] = [
        "400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "5xx"]
    return SchemathesisConfig.from_dict({
        "checks": {**checks, "max_response_time": 30},
        "generation": {"mode": "all", "max-examples": EXAMPLES_PER_OPERATION, "deterministic": True,
                       "database": "none"},
        "phases": {"examples": {"enabled": True}, "coverage": {"enabled": True},
                   "fuzzing": {"enabled": True}, "stateful": {"enabled": False}},
        "request-timeout": 60,
        "auth": {"openapi": {"HTTPBearer": {"bearer": FUZZ_KEY}, "APIKeyHeader": {"api_key": FUZZ_KEY}}},
        "suppress-health-check": ["too_slow", "data_too_large", "filter_too_much"],
        # Most generated collection names and document ids are ones that exist, so
        # that valid requests get past the 404 to the code behind it.
        "dictionaries": {"collections": {"values": ["fuzz"]}, "doomed": {"values": ["doomed"]},
                         "documents": {"values": ["doc-1", "doc-2"]}},
        "parameters": {"path.name": {"dictionary": "collections", "probability": 0.8},
                       "path.doc_id": {"dictionary": "documents", "probability": 0.8}},
        "operations": [{"include-operation-id": BODY_OPERATIONS,
                        "generation": {"max-examples": EXAMPLES_PER_BODY_OPERATION}},
                       {"include-operation-id": "delete_collection",
                        "parameters": {"path.name": {"dictionary": "doomed", "probability": 0.5}}},
                       # not ready is a 503 by design (and declared): not a server error there
                       {"include-operation-id": "readyz", "checks": {"not_a_server_error": {
                           "expected-statuses": ["2xx", "3xx", "4xx", "503"]}}},
                       # .../documents/delete is also an instance of .../documents/{doc_id}, whose
                       # GET really is served there (the document with id 'delete'), so the Allow
                       # header of a 405 rightly lists GET; the check compares with one path only.
                       {"include-operation-id": "delete_documents",
                        "checks": {"allow_header_conformance": {"enabled": False}}}],
    })


def inexpressible(failure: Failure, response: schemathesis.Response) -> bool:
    """A valid request refused for one of the rules of INEXPRESSIBLE."""
    if type(failure).__name__ != "RejectedPositiveData":
        return False
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        return False
    return any(error.get("code") == code and phrase in error.get("message", "") for code, phrase in INEXPRESSIBLE)


def served_schema() -> dict:
    """The OpenAPI schema of a server with LIMITS, made in process: the tests are generated
    from it when this module is collected, before any server runs (the fixture checks that
    the real server serves exactly this schema)."""
    from embedsvc.api.app import create_app
    from embedsvc.settings import Settings

    return create_app(Settings(home=Path("/nonexistent/embedsvc-fuzz"), **LIMITS, **KEYS)).openapi()


schema = schemathesis.openapi.from_dict(served_schema(), config=fuzz_config())


@schema.hook("filter_failure")
def keep_failure(context: schemathesis.HookContext, failure: Failure, case: schemathesis.Case,
                 response: schemathesis.Response) -> bool:
    return not inexpressible(failure, response)


@schema.parametrize()
@settings(deadline=timedelta(seconds=20))
def test_api_answers_as_its_schema_says(case: schemathesis.Case, fuzz_url: str,
                                        fuzz_session: requests.Session) -> None:
    case.call_and_validate(base_url=fuzz_url, session=fuzz_session)


def test_schema_states_the_limits_of_the_settings() -> None:
    from embedsvc.collection import NAME_PATTERN

    document = served_schema()
    models = document["components"]["schemas"]
    search = models["SearchRequest"]["properties"]
    assert search["k"]["maximum"] == LIMITS["max_k"]
    assert search["query"]["anyOf"][0]["maxLength"] == LIMITS["max_query_chars"]
    texts = models["EmbedRequest"]["properties"]["texts"]
    assert (texts["maxItems"], texts["items"]["maxLength"]) == (LIMITS["max_embed_texts"], LIMITS["max_query_chars"])
    assert models["UpsertRequest"]["properties"]["documents"]["maxItems"] == LIMITS["max_batch_documents"]
    ids = models["DeleteRequest"]["properties"]["ids"]["anyOf"][0]
    assert ids["maxItems"] == LIMITS["max_batch_documents"]
    assert models["CreateCollectionRequest"]["properties"]["name"]["pattern"] == f"^{NAME_PATTERN}$"
    levels = [name for name in models if name == "Filter" or name.startswith("FilterLevel")]
    assert len(levels) == LIMITS["max_filter_depth"] + 1
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            names = [p for p in operation.get("parameters", []) if p["name"] == "name" and p["in"] == "path"]
            assert all(p["schema"]["pattern"] == f"^{NAME_PATTERN}$" for p in names), path
            if "requestBody" in operation:  # every body route says how it refuses a bad body
                assert {"400", "413", "415", "422"} <= set(operation["responses"]), (method, path)
            if names:
                assert {"400", "404"} <= set(operation["responses"]), (method, path)


def test_docs_load_nothing_from_the_internet(fuzz_url: str) -> None:
    """/docs is served whole by the server: a machine without internet gets the page."""
    with httpx.Client(base_url=fuzz_url) as http:
        page = http.get("/docs")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        assert len(assets) >= 3 and not re.search(r"https?://|//cdn", page.text), assets
        for asset in assets:
            response = http.get(asset)
            assert response.status_code == 200 and len(response.content) > 100, asset
        assert "swagger-ui-bundle.js" in page.text and '"validatorUrl": null' in page.text
        assert http.get("/redoc").status_code == 404
