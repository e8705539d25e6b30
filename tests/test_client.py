"""The Python client against the real uvicorn server over real sockets: typed errors from the
server's answers, retries through a flaky TCP proxy, the retry policy's arithmetic, the async
client generated from the sync one, and the API key kept out of sight."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
import random
import re
import socket
import subprocess
import sys
import textwrap
import threading
import typing
from collections.abc import Iterator
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path

import pytest

from embedsvc.client import (
    AsyncClient,
    Client,
    Conflict,
    ConnectionFailed,
    EmbedsvcError,
    Forbidden,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    RetryPolicy,
    SearchResult,
    ServerError,
    Unauthorized,
    Unavailable,
    parse_retry_after,
)
from embedsvc.client import _routes as routes
from embedsvc.client._generate import RENAMES, SOURCE, TARGET, generate
from embedsvc.responses import Health, Readiness
from tests.conftest import RunningServer, free_port, make_settings

FAST = {"backoff": 0.01, "max_backoff": 0.05}  # retries in tests take milliseconds
DOCS = [{"id": "d1", "title": "Zebra", "text": "zebra migration across the plains"},
        {"id": "d2", "title": "Malaria", "text": "malaria parasites carried by mosquitoes"}]
SECRET = "esk_do-not-print-me-0123456789"


# --- a small real TCP proxy in front of the server -------------------------------------------
class FlakyProxy:
    """A loopback TCP proxy: connection number i gets ``plan[i]``, later ones are forwarded.

    Treatments: "reset" (RST at once), "drop" (read the request, close without answering),
    "stall" (read the request, answer nothing until the proxy stops), "forward", an int
    status (a canned JSON error answer with ``Retry-After: <retry_after>``) or a (status,
    body) pair (that answer, as JSON). ``received``
    holds every byte the clients sent, so a test can look at the headers on the wire.
    """

    def __init__(self, target_port: int, plan: list, retry_after: str = "0"):
        self.target_port, self.plan, self.retry_after = target_port, list(plan), retry_after
        self.connections = 0
        self.received = bytearray()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def __enter__(self) -> FlakyProxy:
        self._spawn(self._accept_loop)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        with self._lock:
            for sock in self._sockets:
                _close(sock)
        for thread in list(self._threads):
            thread.join(timeout=5)
        self._listener.close()

    def _spawn(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                action = self.plan[self.connections] if self.connections < len(self.plan) else "forward"
                self.connections += 1
                self._sockets.append(conn)
            self._spawn(self._handle, conn, action)

    def _handle(self, conn: socket.socket, action: str | int | tuple[int, bytes]) -> None:
        conn.settimeout(10)
        try:
            if action == "reset":
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            elif action == "forward":
                self._forward(conn)
                return
            else:
                self._read_request(conn)
                if action == "stall":
                    self._stop.wait()
                elif isinstance(action, int):
                    conn.sendall(self._canned(action, b'{"error": {"code": "canned", "message": "the proxy says no"}}'))
                elif isinstance(action, tuple):
                    conn.sendall(self._canned(*action))
        except OSError:
            pass
        finally:
            if action != "forward":
                _close(conn)

    def _read_request(self, conn: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        while len(body) < length:
            chunk = conn.recv(65536)
            if not chunk:
                break
            body += chunk
        with self._lock:
            self.received += head + b"\r\n\r\n" + body

    def _canned(self, status: int, body: bytes) -> bytes:
        return (f"HTTP/1.1 {status} Canned\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nRetry-After: {self.retry_after}\r\n"
                f"Connection: close\r\n\r\n").encode() + body

    def _forward(self, conn: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.target_port))
        with self._lock:
            self._sockets.append(upstream)
        self._spawn(self._pump, upstream, conn, False)
        self._pump(conn, upstream, True)

    def _pump(self, src: socket.socket, dst: socket.socket, record: bool) -> None:
        try:
            src.settimeout(None)
            while chunk := src.recv(65536):
                if record:
                    with self._lock:
                        self.received += chunk
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            _close(dst)
            _close(src)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


def retry_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "embedsvc.client" and r.levelno == logging.INFO]


# --- fixtures ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, bundled_model: Path) -> Iterator[RunningServer]:
    """A server with a collection 'docs' of two documents; at most 2 documents per call."""
    settings = make_settings(tmp_path_factory.mktemp("client-home"), bundled_model, max_batch_documents=2)
    with RunningServer(settings) as running, Client(running.url) as client:
        client.create_collection("docs")
        client.upsert("docs", DOCS)
        yield running


@pytest.fixture
def client(live: RunningServer) -> Iterator[Client]:
    with Client(live.url, timeout=60, **FAST) as c:
        yield c


# --- one source for both clients -------------------------------------------------------------
def test_async_client_is_the_generated_one() -> None:
    assert TARGET.read_text(encoding="utf-8") == generate(SOURCE.read_text(encoding="utf-8")), \
        "embedsvc/client/_async.py is stale: run python embedsvc/client/_generate.py"


def _public(cls: type) -> set[str]:
    """The methods a caller uses: the API, close and the context-manager protocol."""
    def public(name: str) -> bool:
        return not name.startswith("_") or (name.startswith("__") and name not in ("__init__", "__repr__"))

    return {n for n, v in vars(cls).items() if callable(v) and public(n)}


def test_async_methods_are_coroutines_returning_what_the_sync_ones_return() -> None:
    assert {RENAMES.get(n, n) for n in _public(Client)} == _public(AsyncClient)
    for name in _public(Client):
        sync, coro = getattr(Client, name), getattr(AsyncClient, RENAMES.get(name, name))
        assert not inspect.iscoroutinefunction(sync), name
        assert inspect.iscoroutinefunction(coro), name
        expected = typing.get_type_hints(sync)["return"]
        if expected is Client:
            expected = AsyncClient
        assert typing.get_type_hints(coro)["return"] == expected, name
        assert inspect.signature(coro).parameters.keys() == inspect.signature(sync).parameters.keys()
    assert typing.get_type_hints(AsyncClient.search)["return"] is SearchResult


def test_client_imports_no_server_side_code() -> None:
    code = ("import sys, embedsvc.client; heavy = {'torch', 'faiss', 'fastapi', 'starlette', 'uvicorn',"
            " 'sentence_transformers', 'embedsvc.search', 'embedsvc.store', 'embedsvc.api'} & set(sys.modules);"
            " print(sorted(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_each_endpoint_declares_whether_it_may_be_repeated() -> None:
    declared = {name: r for name, r in vars(routes).items() if isinstance(r, routes.Route)}
    assert {n for n, r in declared.items() if not r.idempotent} == \
        {"CREATE_COLLECTION", "DELETE_COLLECTION", "COMPACT", "DELETE_BY_FILTER", "SNAPSHOT"}


# --- results and errors from the real server ------------------------------------------------
def test_results_are_the_servers_response_models(client: Client) -> None:
    assert client.healthz() == Health(status="ok")
    assert isinstance(client.readyz(), Readiness)
    result = client.search("docs", "zebra", k=1, mode="lexical")
    assert isinstance(result, SearchResult) and result.hits[0].id == "d1"
    assert client.get_document("docs", "d2").title == "Malaria"


def test_each_refusal_raises_its_class_with_the_servers_code_and_message(client: Client) -> None:
    with pytest.raises(NotFound) as not_found:
        client.search("nope", "x")
    assert (not_found.value.status, not_found.value.code) == (404, "not_found")
    assert not_found.value.message in str(not_found.value) and "HTTP 404" in str(not_found.value)
    with pytest.raises(Conflict, match="already exists") as conflict:
        client.create_collection("docs")
    assert (conflict.value.status, conflict.value.code) == (409, "exists")
    with pytest.raises(InvalidRequest, match="k") as invalid:
        client.search("docs", "x", k=0)
    assert (invalid.value.status, invalid.value.code) == (422, "invalid_request")
    with pytest.raises(PayloadTooLarge, match="EMBEDSVC_MAX_BATCH_DOCUMENTS") as too_large:
        client.upsert("docs", [{"id": str(i), "text": "x"} for i in range(3)])
    assert (too_large.value.status, too_large.value.code) == (413, "too_large")
    assert isinstance(too_large.value, InvalidRequest)


def test_the_module_docstring_example_runs(live: RunningServer, capsys) -> None:
    import embedsvc.client

    example = embedsvc.client.__doc__.split("Example::")[1].split("\n\n", 2)[1]
    code = textwrap.dedent(example).replace("http://127.0.0.1:8000", live.url).replace("scifact", "docs")
    code = code.replace("vitamin D deficiency", "zebra migration")
    exec(compile(code, "embedsvc.client example", "exec"), {})
    assert " d1 Zebra" in capsys.readouterr().out  # score, id, title


def test_upsert_takes_document_models_and_dicts(client: Client) -> None:
    from embedsvc.client import Document

    result = client.upsert("docs", [Document(id="d3", text="bone density"), {"id": "d4", "text": "sleep"}])
    assert (result.created + result.unchanged, result.updated) == (2, 0)
    assert client.delete("docs", ids=["d3", "d4"]).deleted == 2


# --- retries through a flaky proxy ----------------------------------------------------------
def test_idempotent_calls_survive_broken_connections(live: RunningServer, caplog) -> None:
    caplog.set_level(logging.INFO, logger="embedsvc.client")
    with FlakyProxy(live.port, ["reset", "drop"]) as proxy, Client(proxy.url, retries=3, **FAST) as client:
        assert client.search("docs", "malaria", mode="lexical").hits[0].id == "d2"
        assert proxy.connections == 3
    records = retry_records(caplog)
    assert len(records) == 2
    assert "retrying POST /v1/collections/docs/search in " in records[0].getMessage()
    # reset while the request is still being sent is a broken pipe ("could not reach"), after
    # it a closed connection: which one the client meets depends on timing
    assert re.search(r"\(retry 1 of 3\): (the connection to|could not reach)", records[0].getMessage())


def test_a_timeout_is_retried_for_idempotent_calls(live: RunningServer) -> None:
    with FlakyProxy(live.port, ["stall"]) as proxy, Client(proxy.url, timeout=0.3, **FAST) as client:
        assert client.get_collection("docs").name == "docs"
        assert proxy.connections == 2


@pytest.mark.parametrize("call", [lambda c: c.compact("docs"), lambda c: c.create_collection("other"),
                                  lambda c: c.delete("docs", filter={"year": 1})],
                         ids=["compact", "create_collection", "delete_by_filter"])
def test_non_idempotent_calls_are_never_repeated(live: RunningServer, client: Client, call) -> None:
    with FlakyProxy(live.port, ["drop"]) as proxy, Client(proxy.url, retries=3, **FAST) as flaky:
        with pytest.raises(ConnectionFailed) as err:
            call(flaky)
        assert proxy.connections == 1  # no second attempt reached the proxy, let alone the server
    assert err.value.sent and err.value.status == 0
    assert client.jobs() == [] and client.list_collections() == ["docs"]


def test_with_no_retries_an_idempotent_call_fails_at_once(live: RunningServer) -> None:
    with FlakyProxy(live.port, ["drop"]) as proxy, Client(proxy.url, retries=0, **FAST) as client:
        with pytest.raises(ConnectionFailed, match="failed before an answer came"):
            client.search("docs", "zebra")
        assert proxy.connections == 1


def test_retries_give_up_after_the_last_attempt(live: RunningServer) -> None:
    with FlakyProxy(live.port, ["drop"] * 3) as proxy, Client(proxy.url, retries=2, **FAST) as client:
        with pytest.raises(ConnectionFailed):
            client.search("docs", "zebra")
        assert proxy.connections == 3


def test_a_refused_connection_is_retried_even_when_not_idempotent(caplog) -> None:
    """Nothing listens: the request cannot have reached a server, so repeating it is safe."""
    caplog.set_level(logging.INFO, logger="embedsvc.client")
    with Client(f"http://127.0.0.1:{free_port()}", retries=2, **FAST) as client:
        with pytest.raises(ConnectionFailed) as err:
            client.create_collection("x")
    assert not err.value.sent and "could not reach" in str(err.value)
    assert len(retry_records(caplog)) == 2


def test_503_and_429_are_retried_honouring_retry_after(live: RunningServer, caplog) -> None:
    caplog.set_level(logging.INFO, logger="embedsvc.client")
    with FlakyProxy(live.port, [503, 429], retry_after="0") as proxy, Client(proxy.url, **FAST) as client:
        assert client.get_collection("docs").documents == 2
        assert proxy.connections == 3
    assert ["in 0.00 s (retry" in r.getMessage() for r in retry_records(caplog)] == [True, True]


def test_retry_after_is_capped_and_reported(live: RunningServer, caplog) -> None:
    caplog.set_level(logging.INFO, logger="embedsvc.client")
    with FlakyProxy(live.port, [503, 503], retry_after="3600") as proxy, \
            Client(proxy.url, retries=1, backoff=0.01, max_backoff=0.02) as client:
        with pytest.raises(Unavailable, match="the proxy says no") as err:
            client.get_collection("docs")
        assert proxy.connections == 2
    assert (err.value.status, err.value.code, err.value.retry_after) == (503, "canned", 3600.0)
    assert "in 0.02 s (retry 1 of 1): the proxy says no" in retry_records(caplog)[0].getMessage()


def test_an_unavailable_non_idempotent_call_is_not_repeated(live: RunningServer) -> None:
    with FlakyProxy(live.port, [503]) as proxy, Client(proxy.url, **FAST) as client:
        with pytest.raises(Unavailable):
            client.compact("docs")
        assert proxy.connections == 1


def test_other_server_errors_are_not_retried(live: RunningServer) -> None:
    with FlakyProxy(live.port, [500]) as proxy, Client(proxy.url, **FAST) as client:
        with pytest.raises(ServerError) as err:
            client.search("docs", "zebra")
        assert proxy.connections == 1 and err.value.status == 500


def test_an_answer_that_is_not_the_result_is_a_server_error(live: RunningServer) -> None:
    with FlakyProxy(live.port, [(200, b"<html>a captive portal</html>")]) as proxy, \
            Client(proxy.url, **FAST) as client:
        with pytest.raises(ServerError, match="could not be read") as err:
            client.search("docs", "zebra")
        assert proxy.connections == 1 and (err.value.status, err.value.code) == (200, "unreadable_answer")


def test_readyz_answers_not_ready_without_raising_or_retrying(live: RunningServer) -> None:
    starting = b'{"status": "starting", "models": {"m": "loading"}, "indexes": {}, "collections": ["docs"]}'
    with FlakyProxy(live.port, [(503, starting), 503]) as proxy, Client(proxy.url, **FAST) as client:
        assert client.readyz().status == "starting"
        assert proxy.connections == 1
        # an error body is an error: retried, then the real server's answer (200 or 503)
        assert isinstance(client.readyz(), Readiness) and proxy.connections == 3


# --- the api key -----------------------------------------------------------------------------
def test_the_api_key_is_sent_as_a_bearer_header_and_shown_nowhere(live: RunningServer, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    with FlakyProxy(live.port, ["drop"]) as proxy, Client(proxy.url, api_key=SECRET, **FAST) as client:
        client.healthz()
        with pytest.raises(NotFound) as not_found:
            client.get_document("docs", "missing")
        wire = bytes(proxy.received).lower()
        assert f"authorization: bearer {SECRET}".lower().encode() in wire
        texts = [repr(client), str(client), str(not_found.value), repr(not_found.value)]
    with Client(f"http://127.0.0.1:{free_port()}", api_key=SECRET, retries=0) as dead:
        with pytest.raises(ConnectionFailed) as unreachable:
            dead.healthz()
        texts += [repr(dead), str(unreachable.value), repr(unreachable.value)]
    texts += [r.getMessage() for r in caplog.records]
    assert "api_key='***'" in repr(dead)
    assert not [t for t in texts if SECRET in t]


# --- the retry policy's arithmetic -----------------------------------------------------------
def test_retry_after_reads_seconds_and_http_dates() -> None:
    now = 1_700_000_000.0
    in_30s = format_datetime(datetime.fromtimestamp(now + 30, UTC), usegmt=True)
    past = format_datetime(datetime.fromtimestamp(now - 30, UTC), usegmt=True)
    assert parse_retry_after("5") == 5.0
    assert parse_retry_after(" 0.5 ") == 0.5
    assert parse_retry_after(in_30s, now=now) == 30.0
    assert parse_retry_after(past, now=now) == 0.0
    assert parse_retry_after("-3") == 0.0
    for unreadable in (None, "", "soon", "nan", "Mon, 99 Foo 2024 25:61:00"):
        assert parse_retry_after(unreadable) is None, unreadable


def test_backoff_is_full_jitter_under_an_exponential_bound_and_the_cap() -> None:
    policy = RetryPolicy(retries=10, backoff=0.25, max_backoff=2.0, rng=random.Random(7))
    for attempt in range(10):
        bound = min(2.0, 0.25 * 2 ** attempt)
        samples = [policy.delay(attempt) for _ in range(500)]
        assert all(0.0 <= s <= bound for s in samples), attempt
        assert max(samples) > 0.9 * bound and min(samples) < 0.1 * bound  # the whole range is used
    assert policy.delay(3, retry_after=0.3) == 0.3
    assert policy.delay(0, retry_after=3600) == 2.0  # the server is believed, up to the cap
    assert policy.delay(0, retry_after=float("inf")) == 2.0
    first = [RetryPolicy(rng=random.Random(1)).delay(a) for a in range(5)]
    assert first == [RetryPolicy(rng=random.Random(1)).delay(a) for a in range(5)]


def test_the_policy_retries_only_what_is_safe_and_only_so_often() -> None:
    policy = RetryPolicy(retries=2, backoff=0.0, max_backoff=0.0)
    sent = ConnectionFailed(0, "connection", "broken", sent=True)
    unsent = ConnectionFailed(0, "connection", "refused", sent=False)
    busy, limited = Unavailable(503, "busy", "later", 1.0), RateLimited(429, "rate_limited", "slow", None)
    for error in (sent, unsent, busy, limited):
        assert policy.wait_before_retry(error, 0, idempotent=True) == 0.0
        assert policy.wait_before_retry(error, 2, idempotent=True) is None  # out of retries
    assert policy.wait_before_retry(unsent, 0, idempotent=False) == 0.0
    for error in (sent, busy, limited, NotFound(404, "not_found", "x"), ServerError(500, "internal", "x")):
        assert policy.wait_before_retry(error, 0, idempotent=False) is None
    assert policy.wait_before_retry(ServerError(500, "internal", "x"), 0, idempotent=True) is None


def test_errors_read_well_and_survive_pickling() -> None:
    import pickle

    error = RateLimited(429, "rate_limited", "over the limit", 2.0)
    assert str(error) == "over the limit (HTTP 429 rate_limited)"
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), copy.status, copy.code, copy.message, copy.retry_after) == \
        (RateLimited, 429, "rate_limited", "over the limit", 2.0)
    assert str(ConnectionFailed(0, "connection", "could not reach x")) == "could not reach x (connection)"
    assert isinstance(PayloadTooLarge(413, "too_large", "x"), InvalidRequest)
    assert all(issubclass(e, EmbedsvcError) for e in (Unauthorized, Forbidden, Conflict, ServerError))


# --- the async client ------------------------------------------------------------------------
def test_async_client_searches_raises_and_retries(live: RunningServer) -> None:
    async def run() -> tuple:
        async with AsyncClient(live.url, **FAST) as client:
            result = await client.search("docs", "zebra", mode="lexical")
            with pytest.raises(NotFound) as err:
                await client.get_collection("nope")
        with FlakyProxy(live.port, ["reset", "drop", "forward", "drop"]) as proxy:
            async with AsyncClient(proxy.url, **FAST) as flaky:
                healed = await flaky.search("docs", "malaria", mode="lexical")
            async with AsyncClient(proxy.url, retries=0) as once:
                with pytest.raises(ConnectionFailed):
                    await once.search("docs", "malaria")
            return result, err.value, healed, proxy.connections

    result, error, healed, connections = asyncio.run(run())
    assert result.hits[0].id == "d1" and healed.hits[0].id == "d2"
    assert (error.status, error.code) == (404, "not_found")
    assert connections == 4  # reset, drop, the retry that worked, then the one attempt of retries=0


def test_async_client_does_not_repeat_non_idempotent_calls(live: RunningServer, client: Client) -> None:
    async def run() -> int:
        with FlakyProxy(live.port, ["drop"]) as proxy:
            async with AsyncClient(proxy.url, **FAST) as flaky:
                with pytest.raises(ConnectionFailed):
                    await flaky.create_collection("async-other")
            return proxy.connections

    assert asyncio.run(run()) == 1
    assert "async-other" not in client.list_collections()


# --- keys, scopes and rate limits of the real server ----------------------------------------
# These need the server's authentication (settings api_keys_file, rate_limit_per_second,
# rate_limit_burst; embedsvc/api/auth.py).
READER, ADMIN, LIMITED = "esk_reader-key-0001", "esk_admin-key-0002", "esk_limited-key-0003"


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory, bundled_model: Path) -> Iterator[RunningServer]:
    home = tmp_path_factory.mktemp("client-auth-home")
    keys = home / "keys.txt"
    keys.write_text("".join(f"{hashlib.sha256(k.encode()).hexdigest()} {scope} {name}\n" for k, scope, name in
                            [(READER, "read", "reader"), (ADMIN, "admin", "admin"), (LIMITED, "read", "limited")]))
    settings = make_settings(home, bundled_model, api_keys_file=keys, rate_limit_per_second=0.01,
                             rate_limit_burst=3)
    with RunningServer(settings) as running:
        yield running


def test_without_a_valid_key_calls_are_unauthorized(guarded: RunningServer) -> None:
    with Client(guarded.url, **FAST) as anonymous, Client(guarded.url, api_key="esk_wrong", **FAST) as wrong:
        assert anonymous.healthz().status == "ok"  # open to anyone
        for client in (anonymous, wrong):
            with pytest.raises(Unauthorized) as err:
                client.list_collections()
            assert (err.value.status, err.value.code) == (401, "unauthorized")
        assert "esk_wrong" not in str(err.value)


def test_a_key_without_the_scope_is_forbidden(guarded: RunningServer) -> None:
    with Client(guarded.url, api_key=READER, **FAST) as reader, Client(guarded.url, api_key=ADMIN) as admin:
        with pytest.raises(Forbidden, match="admin") as err:
            reader.create_collection("secret")
        assert (err.value.status, err.value.code) == (403, "forbidden")
        assert admin.create_collection("secret").name == "secret"


def test_over_the_rate_limit_is_rate_limited_after_retries(guarded: RunningServer, caplog) -> None:
    caplog.set_level(logging.INFO, logger="embedsvc.client")
    with Client(guarded.url, api_key=LIMITED, retries=2, **FAST) as client:
        for _ in range(3):  # the burst
            client.list_collections()
        with pytest.raises(RateLimited) as err:
            client.list_collections()
    assert (err.value.status, err.value.code) == (429, "rate_limited")
    assert err.value.retry_after is not None and err.value.retry_after >= 1
    assert len(retry_records(caplog)) == 2  # honoured Retry-After, capped at max_backoff

