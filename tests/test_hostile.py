"""Hostile input through the real server, sent as raw bytes: what no client library would
send (invalid UTF-8, lone surrogates, NUL bytes, bodies of 10 MB, JSON nested 10,000 deep,
paths that climb out of the home folder, names made of shell and SQL metacharacters).

Every answer is a 4xx whose JSON error names what to change, never a 500; the connection
stays usable afterwards; and nothing is created outside the home folder.
"""

from __future__ import annotations

import json
import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from embedsvc.settings import Settings
from tests.conftest import RunningServer, make_settings, wait_for

LIMITS = {"max_batch_documents": 50, "max_document_bytes": 20_000, "max_filter_depth": 3,
          "max_filter_conditions": 8}
SMALL_BODY = 1_000_000
MB10 = 10 * 1024 * 1024

HOSTILE_NAMES = ["../x", "..", ".", "%2e%2e", "%2e%2e%2fx", "..%2f", "..\\x", "/etc/passwd", "C:\\x",
                 "nl\n", "a;b", "a'b", 'a"b', "a`b", "$(touch pwned)", "a|b", "*", "--", "a b", "a\x00b",
                 "x/../y", "é", "🦄", "", "x" * 65, "-x", "_x", "CON:", "a\tb", "'; DROP TABLE meta; --"]
HOSTILE_IDS = ["../x", "../../etc/passwd", "%2e%2e", "..%2f", "/etc/passwd", "C:\\x", "a\nb", ";", "'", '"',
               "`", "$(touch pwned)", "|", "*", "--", "🦄", "שלום", "مرحبا", "e\u0301", "\u202eevil",
               "a/b/c", "a?b#c", "%00", " ", "\\", ".", ".."]


def tree(root: Path) -> set[str]:
    """Every file and folder under ``root``, relative to it."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def segment(value: str) -> str:
    """A path segment that arrives as ``value``: dots too are encoded, since a client would
    otherwise resolve '.' and '..' away before sending."""
    return quote(value, safe="").replace(".", "%2E")


def error_of(response: httpx.Response) -> dict[str, str]:
    """The error of a 4xx, checked to be the API's JSON error body with a message."""
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    error = response.json()["error"]
    assert set(error) == {"code", "message"} and error["message"], error
    return error


def connection(response: httpx.Response) -> tuple:
    """The local address of the connection a response came on (equal: the same connection)."""
    return response.extensions["network_stream"].get_extra_info("client_addr")


def raw_request(url: str, request: bytes) -> tuple[int, dict]:
    """Send ``request`` as is (a path no HTTP client would send) and read the answer."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        head, body = data.split(b"\r\n\r\n", 1)
        length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
        while len(body) < length:
            body += sock.recv(65536)
    return int(head.split()[1]), json.loads(body)


@pytest.fixture(scope="module")
def home_parent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hostile")


@pytest.fixture(scope="module")
def hostile_settings(home_parent: Path, bundled_model: Path) -> Settings:
    return make_settings(home_parent / "home", bundled_model, **LIMITS)


@pytest.fixture(scope="module")
def hostile_server(hostile_settings: Settings) -> Iterator[RunningServer]:
    with RunningServer(hostile_settings) as running, httpx.Client(base_url=running.url) as http:
        http.post("/v1/collections", json={"name": "target"}).raise_for_status()
        http.put("/v1/collections/target/documents",
                 json={"documents": [{"id": "seed", "text": "malaria parasites", "metadata": {"year": 2020}}]})
        yield running


@pytest.fixture
def http(hostile_server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=hostile_server.url, timeout=60) as client:
        yield client


@pytest.fixture
def outside_home(home_parent: Path, hostile_settings: Settings) -> Iterator[None]:
    """Fails the test if anything appears next to the home folder, in the working folder,
    or at the absolute paths the hostile names point to."""
    def outside() -> set[str]:
        return {p for p in tree(home_parent) if p != "home" and not p.startswith("home/")}

    before, passwd = outside(), os.stat("/etc/passwd")
    yield
    assert outside() == before
    assert os.stat("/etc/passwd").st_mtime == passwd.st_mtime
    for stray in ("pwned", "x", "y", "C:\\x", "CON:"):
        assert not Path(stray).exists() and not (Path("/") / stray).exists()


def test_hostile_collection_names_are_refused(http: httpx.Client, outside_home: None,
                                              hostile_settings: Settings) -> None:
    before = tree(hostile_settings.home)
    first = None
    for name in HOSTILE_NAMES:
        answers = [http.post("/v1/collections", json={"name": name})]
        if name:
            path = f"/v1/collections/{segment(name)}"
            answers += [http.get(path), http.delete(path), http.post(f"{path}/compact"),
                        http.post(f"{path}/search", json={"query": "x"}),
                        http.put(f"{path}/documents", json={"documents": [{"id": "a", "text": "x"}]}),
                        http.get(f"{path}/documents/a")]
        for response in answers:
            error = error_of(response)
            if "/" not in name or response.url.path == "/v1/collections":
                assert response.status_code == 400, (name, response.url, error)
                assert "invalid collection name" in error["message"] and "use 1-64 letters" in error["message"]
            else:  # a '/' makes two path segments: no route has that shape
                assert error == {"code": "not_found", "message": "no such endpoint; see /docs for the API"}
            first = first or connection(response)
            assert connection(response) == first  # every refusal kept the connection open
    assert tree(hostile_settings.home) == before


@pytest.mark.parametrize("target", [b"/v1/collections/%2e%2e", b"/v1/collections/..%2fetc",
                                    b"/v1/collections/%2e%2e%2f%2e%2e%2fetc/search",
                                    b"/v1/collections/%ff%fe", b"/v1/collections/a%00b",
                                    b"/v1/collections/%2Fetc%2Fpasswd"])
def test_raw_paths_that_climb_out_are_refused(hostile_server: RunningServer, outside_home: None,
                                              target: bytes) -> None:
    method = b"POST" if target.endswith(b"/search") else b"GET"
    body = b'{"query": "x"}' if method == b"POST" else b""
    status, answer = raw_request(hostile_server.url, method + b" " + target + b" HTTP/1.1\r\nHost: x\r\n"
                                 b"Content-Type: application/json\r\nContent-Length: "
                                 + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
    assert status in (400, 404), answer
    assert answer["error"]["message"]


def test_hostile_document_ids_round_trip(http: httpx.Client, outside_home: None) -> None:
    """Ids are data, never paths: every one is stored, found by GET and search, and deleted."""
    docs = [{"id": doc_id, "text": f"hostile number {i}", "title": doc_id} for i, doc_id in enumerate(HOSTILE_IDS)]
    created = http.put("/v1/collections/target/documents", json={"documents": docs})
    assert created.status_code == 200 and created.json()["created"] == len(docs), created.text
    for i, doc_id in enumerate(HOSTILE_IDS):
        got = http.get(f"/v1/collections/target/documents/{segment(doc_id)}")
        assert got.status_code == 200, (doc_id, got.url, got.text)
        assert got.json()["id"] == doc_id and got.json()["text"] == docs[i]["text"]
    hits = http.post("/v1/collections/target/search",
                     json={"query": "hostile number", "mode": "lexical", "k": 50}).json()["hits"]
    assert {h["id"] for h in hits} >= set(HOSTILE_IDS)
    deleted = http.post("/v1/collections/target/documents/delete", json={"ids": HOSTILE_IDS})
    assert deleted.json()["deleted"] == len(HOSTILE_IDS), deleted.text
    assert error_of(http.get(f"/v1/collections/target/documents/{segment('../x')}"))["code"] == "not_found"


def test_nul_bytes_in_text_queries_and_filters(http: httpx.Client) -> None:
    doc = {"id": "nul-text", "title": "nul\x00title", "text": "before\x00after", "metadata": {"k\x00": "v\x00"}}
    assert http.put("/v1/collections/target/documents", json={"documents": [doc]}).status_code == 200
    assert http.get(f"/v1/collections/target/documents/{segment(doc['id'])}").json()["text"] == doc["text"]
    for body in [{"query": "before\x00after", "mode": "lexical"}, {"query": "\x00"},
                 {"query": "x", "filter": {"kind": "v\x00"}}, {"query": "x", "filter": {"year": {"$in": ["\x00"]}}}]:
        assert http.post("/v1/collections/target/search", json=body).status_code == 200, body
    assert http.post("/v1/embed", json={"texts": ["a\x00b"]}).status_code in (200, 503)
    # ids cannot hold one: the store could not find such a document again (see checks.ids)
    for path, body in [("/v1/collections/target/documents", {"documents": [{"id": "a\x00b", "text": "x"}]}),
                       ("/v1/collections/target/documents/delete", {"ids": ["ok", "a\x00"]})]:
        refused = http.request("PUT" if path.endswith("documents") else "POST", path, json=body)
        assert refused.status_code == 422 and "NUL character" in error_of(refused)["message"]
    # a NUL byte that is not escaped is not JSON
    raw = http.post("/v1/collections/target/search", content=b'{"query": "a\x00b"}',
                    headers={"content-type": "application/json"})
    assert error_of(raw)["code"] == "invalid_json"


# (body, content type) -> (status, code, phrase of the message): one answer per kind of bad body
BAD_BODIES = [
    (b'{"query": "\xff\xfe"}', "application/json", 400, "invalid_json", "not UTF-8"),
    (b'{"query": "x"', "application/json", 400, "invalid_json", "not valid JSON"),
    (b'\xef\xbb\xbf{"query": "x"}', "application/json", 400, "invalid_json", "not valid JSON"),
    (b'{"query": "x", "k": ' + b"9" * 5000 + b"}", "application/json", 400, "invalid_json", "number"),
    (b"[" * 10_000 + b"]" * 10_000, "application/json", 400, "invalid_json", "deeper than 64 levels"),
    (b'{"query": "x", "filter": ' + b'{"$and": [' * 10_000 + b"{}" + b"]}" * 10_000 + b"}", "application/json",
     400, "invalid_json", "deeper than 64 levels"),
    (b"", "application/json", 400, "invalid_json", "no body"),
    (b'{"query": "x"}', "text/plain", 415, "unsupported_media_type", "Content-Type: application/json"),
    (b'{"query": "x"}', "application/x-www-form-urlencoded", 415, "unsupported_media_type", "send JSON"),
    (b'{"query": "x"}', None, 415, "unsupported_media_type", "without a Content-Type"),
    (b'{"query": "\\ud800"}', "application/json", 422, "invalid_request", "not valid Unicode"),
    (b'{"query": "x", "filter": {"a\\udfff": 1}}', "application/json", 422, "invalid_request", "Unicode"),
    (b'["query"]', "application/json", 422, "invalid_request", "body"),
    (b"null", "application/json", 422, "invalid_request", "body"),
    (b'{"query": "x", "extra": 1}', "application/json", 422, "invalid_request", "extra"),
    (b'{"query": "x", "k": "5"}', "application/json", 422, "invalid_request", "k: Input should be a valid integer"),
    (b'{"query": "x", "k": 5.0}', "application/json", 422, "invalid_request", "k: Input should be a valid integer"),
    (b'{"query": "x", "k": true}', "application/json", 422, "invalid_request", "(got a boolean)"),
    (b'{"query": "x", "dense_weight": Infinity}', "application/json", 422, "invalid_request", "finite"),
    (b'{"query": "x", "dense_weight": NaN}', "application/json", 422, "invalid_request", "finite"),
    (b'{"query": "x", "k": 18446744073709551616}', "application/json", 422, "invalid_request", "EMBEDSVC_MAX_K"),
]


def test_each_kind_of_bad_body_has_one_answer(http: httpx.Client) -> None:
    first = None
    for body, content_type, status, code, phrase in BAD_BODIES:
        headers = {"content-type": content_type} if content_type else {}
        response = http.post("/v1/collections/target/search", content=body, headers=headers)
        assert response.status_code == status, (body[:40], response.text[:300])
        assert error_of(response)["code"] == code and phrase in response.json()["error"]["message"], \
            (body[:40], response.text[:300])
        first = first or connection(response)
        assert connection(response) == first, body[:40]  # the connection survives every one


def test_lone_surrogate_in_embed_is_a_422_and_the_connection_lives(http: httpx.Client) -> None:
    """The probe: this was a 500 from the tokenizer, and the server dropped the connection."""
    answers = [http.post(path, content=body, headers={"content-type": "application/json"}) for path, body in [
        ("/v1/embed", b'{"texts": ["\\ud800"]}'),
        ("/v1/embed", b'{"texts": ["ok", "x\\udfffy"]}'),
        ("/v1/collections/target/search", b'{"query": "\\ud800"}'),
        ("/v1/collections/target/documents/delete", b'{"ids": ["\\ud800"]}'),
        ("/v1/collections", b'{"name": "\\ud800"}')]]
    answers.append(http.get("/healthz"))
    for response in answers[:-1]:
        assert response.status_code == 422 and "Unicode" in error_of(response)["message"]
    assert answers[-1].status_code == 200
    assert len({connection(r) for r in answers}) == 1


def nested_filter(levels: int) -> dict:
    inner: dict = {"year": 2020}
    for _ in range(levels):
        inner = {"$and": [inner]}
    return inner


def test_filter_depth_and_size_are_refused_naming_their_settings(http: httpx.Client) -> None:
    search = "/v1/collections/target/search"
    assert http.post(search, json={"query": "malaria", "filter": nested_filter(3)}).status_code == 200
    deep = http.post(search, json={"query": "malaria", "filter": nested_filter(4)})
    assert deep.status_code == 422 and "EMBEDSVC_MAX_FILTER_DEPTH" in error_of(deep)["message"]
    wide = http.post(search, json={"query": "x", "filter": {f"f{i}": i for i in range(9)}})
    assert wide.status_code == 422 and "EMBEDSVC_MAX_FILTER_CONDITIONS" in error_of(wide)["message"]
    deepest = b'{"$or": [' * 5000 + b'{"year": 1}' + b"]}" * 5000  # 10,000 levels of JSON
    for path, body in [(search, b'{"query": "x", "filter": ' + deepest + b"}"),
                       ("/v1/collections/target/documents/delete", b'{"filter": ' + deepest + b"}")]:
        response = http.post(path, content=body, headers={"content-type": "application/json"})
        assert response.status_code == 400 and "deeper than 64" in error_of(response)["message"]


def test_metadata_just_under_the_nesting_limit_is_stored(http: httpx.Client) -> None:
    value: object = "leaf"
    for _ in range(60):
        value = {"n": value}
    doc = {"id": "deep-metadata", "text": "deep", "metadata": {"m": value}}
    assert http.put("/v1/collections/target/documents", json={"documents": [doc]}).status_code == 200
    assert http.get("/v1/collections/target/documents/deep-metadata").json()["metadata"] == doc["metadata"]


def test_limits_are_refused_naming_their_settings(http: httpx.Client) -> None:
    docs = [{"id": str(i), "text": "x"} for i in range(51)]
    cases = [
        ("PUT", "/v1/collections/target/documents", {"documents": docs}, 413, "EMBEDSVC_MAX_BATCH_DOCUMENTS"),
        ("POST", "/v1/collections/target/documents/delete", {"ids": [str(i) for i in range(51)]}, 413,
         "EMBEDSVC_MAX_BATCH_DOCUMENTS"),
        ("PUT", "/v1/collections/target/documents", {"documents": [{"id": "big", "text": "x" * 20_001}]}, 413,
         "EMBEDSVC_MAX_DOCUMENT_BYTES"),
        ("POST", "/v1/collections/target/search", {"query": "x", "k": 1001}, 422, "EMBEDSVC_MAX_K"),
        ("POST", "/v1/collections/target/search", {"query": "x" * 4097}, 422, "EMBEDSVC_MAX_QUERY_CHARS"),
        ("POST", "/v1/embed", {"texts": ["x"] * 257}, 422, "EMBEDSVC_MAX_EMBED_TEXTS"),
        ("POST", "/v1/embed", {"texts": ["x" * 4097]}, 422, "EMBEDSVC_MAX_QUERY_CHARS"),
    ]
    for method, path, body, status, setting in cases:
        response = http.request(method, path, json=body)
        assert response.status_code == status and setting in error_of(response)["message"], (path, response.text)


def test_ten_megabytes_under_the_body_limit_are_read_and_refused_for_what_they_hold(http: httpx.Client) -> None:
    """The default limit (16 MB) lets 10 MB through; what is in them is then refused."""
    query = http.post("/v1/collections/target/search", json={"query": "x" * MB10})
    assert query.status_code == 422 and "EMBEDSVC_MAX_QUERY_CHARS" in error_of(query)["message"]
    document = http.put("/v1/collections/target/documents", json={"documents": [{"id": "huge", "text": "x" * MB10}]})
    assert document.status_code == 413 and "EMBEDSVC_MAX_DOCUMENT_BYTES" in error_of(document)["message"]
    assert http.get("/healthz").status_code == 200


@pytest.fixture(scope="module")
def small_server(tmp_path_factory: pytest.TempPathFactory, bundled_model: Path) -> Iterator[RunningServer]:
    settings = make_settings(tmp_path_factory.mktemp("small-body"), bundled_model, max_body_bytes=SMALL_BODY,
                             preload_models=False)
    with RunningServer(settings) as running:
        yield running


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_ten_megabytes_over_the_body_limit_are_a_413(small_server: RunningServer, chunked: bool) -> None:
    """Over EMBEDSVC_MAX_BODY_BYTES: refused with a 413 naming it, whether the size is
    announced (Content-Length) or not (chunked: httpx sends a generator so)."""
    body = json.dumps({"query": "x" * MB10}).encode()
    content = (body[i:i + 65536] for i in range(0, len(body), 65536)) if chunked else body
    with httpx.Client(base_url=small_server.url, timeout=60) as http:
        response = http.post("/v1/collections/any/search", content=content,
                             headers={"content-type": "application/json"})
        assert response.status_code == 413
        assert f"over {SMALL_BODY} bytes" in error_of(response)["message"]
        assert "EMBEDSVC_MAX_BODY_BYTES" in response.json()["error"]["message"]
        assert http.get("/healthz").status_code == 200  # the server is fine (on a new connection)


def test_hostile_names_never_reach_the_disk_through_the_cli_settings(hostile_settings: Settings) -> None:
    """The same rule guards the code under the API: no path is made from a bad name."""
    from embedsvc.collection import CollectionError, collection_paths

    for name in HOSTILE_NAMES:
        with pytest.raises(CollectionError, match="invalid collection name"):
            collection_paths(hostile_settings.collections_dir, name)


def test_server_still_answers_after_everything(http: httpx.Client) -> None:
    result = wait_for(lambda: http.post("/v1/collections/target/search", json={"query": "malaria"}), timeout=30)
    assert result.status_code == 200 and result.json()["hits"][0]["id"] == "seed"
