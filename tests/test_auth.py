"""API keys and scopes on every route, key management from the CLI, rate limits (429), and
the refusal to serve beyond loopback without keys: all through the real server."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from fastapi.routing import APIRoute
from typer.testing import CliRunner

from embedsvc.api import errors
from embedsvc.api.app import ROUTERS, create_app
from embedsvc.api.auth import SCOPES, check_exposure
from embedsvc.cli import app as cli_app
from embedsvc.keys import KeyFileError, KeyRing, Scope, create_key, digest, read_keys, revoke_key
from embedsvc.settings import Settings
from tests.conftest import RunningServer, make_settings, wait_for

# One request per operation id: (method, path, JSON body). Collection "c" exists.
CALLS = {
    "healthz": ("GET", "/healthz", None),
    "readyz": ("GET", "/readyz", None),
    "metrics": ("GET", "/metrics", None),
    "list_collections": ("GET", "/v1/collections", None),
    "get_collection": ("GET", "/v1/collections/c", None),
    "search": ("POST", "/v1/collections/c/search", {"query": "penguins", "mode": "lexical"}),
    "get_document": ("GET", "/v1/collections/c/documents/d1", None),
    "embed": ("POST", "/v1/embed", {"texts": ["hello"]}),
    "openai_embeddings": ("POST", "/v1/embeddings", {"model": "all-MiniLM-L6-v2", "input": "hello"}),
    "openai_list_models": ("GET", "/v1/models", None),
    "openai_retrieve_model": ("GET", "/v1/models/all-MiniLM-L6-v2", None),
    "upsert_documents": ("PUT", "/v1/collections/c/documents",
                         {"documents": [{"id": "d1", "text": "penguins in the snow"}]}),
    "delete_documents": ("POST", "/v1/collections/c/documents/delete", {"ids": ["nope"]}),
    "create_collection": ("POST", "/v1/collections", {"name": "made"}),
    "delete_collection": ("DELETE", "/v1/collections/made", None),
    "compact": ("POST", "/v1/collections/c/compact", None),
    "snapshot_collection": ("POST", "/v1/collections/c/snapshots", None),
    "list_jobs": ("GET", "/v1/jobs", None),
    "get_job": ("GET", "/v1/jobs/none", None),
}


@pytest.fixture
def keyed(tmp_path: Path, bundled_model: Path):
    """A server with one key per scope and a collection 'c' holding one document."""
    settings = make_settings(tmp_path / "home", bundled_model, preload_models=False)
    keys = {scope.name: create_key(settings, scope, f"{scope.name}-key") for scope in Scope}
    with RunningServer(settings) as server:
        admin = {"Authorization": f"Bearer {keys['admin']}"}
        assert httpx.post(f"{server.url}/v1/collections", json={"name": "c"}, headers=admin).status_code == 201
        body = CALLS["upsert_documents"][2]
        assert httpx.put(f"{server.url}/v1/collections/c/documents", json=body, headers=admin).status_code == 200
        yield server, keys, settings


def call(server: RunningServer, operation: str, headers: dict[str, str]) -> httpx.Response:
    method, path, body = CALLS[operation]
    return httpx.request(method, server.url + path, json=body, headers=headers, timeout=60)


def test_every_route_has_a_scope(tmp_path: Path):
    """Every route of the app is an API route of a guarded router with its scope in the
    table, or one of the documentation routes (open, serving no data)."""
    assert {route.operation_id for router in ROUTERS for route in router.routes} == set(SCOPES) == set(CALLS)
    app = create_app(Settings(home=tmp_path, preload_models=False))
    served = list(errors._routes(app.router.routes))
    api = {r.operation_id for r in served if isinstance(r, APIRoute) and r.path != "/docs"}
    assert api == set(SCOPES)
    others = {r.path for r in served if not isinstance(r, APIRoute) or r.path == "/docs"}
    # and the search playground: its page at / and its script and style (static, no data)
    assert others == {"/openapi.json", "/docs", "/docs/assets", "/", "/playground"}, others


def test_each_scope_on_each_route(keyed):
    server, keys, _ = keyed
    order = ["read", "write", "admin"]
    for operation, needed in SCOPES.items():
        if operation == "delete_collection":
            continue  # checked below, after the collection it deletes exists
        missing = call(server, operation, {})
        if needed is None:
            assert missing.status_code in (200, 503), operation  # readyz may be loading
            continue
        assert missing.status_code == 401, operation
        assert f"'{needed.name}' scope" in missing.json()["error"]["message"]
        assert missing.headers["www-authenticate"] == "Bearer"
        for scope in order:
            answer = call(server, operation, {"Authorization": f"Bearer {keys[scope]}"})
            if Scope[scope] < needed:
                assert answer.status_code == 403, (operation, scope)
                error = answer.json()["error"]
                assert error["code"] == "forbidden" and f"needs '{needed.name}'" in error["message"]
            else:
                assert answer.status_code not in (401, 403), (operation, scope, answer.text)


def test_admin_routes_refuse_lower_scopes(keyed):
    server, keys, _ = keyed
    assert call(server, "create_collection", {"X-API-Key": keys["admin"]}).status_code == 201
    for scope in ("read", "write"):
        assert call(server, "delete_collection", {"X-API-Key": keys[scope]}).status_code == 403
    assert call(server, "delete_collection", {"X-API-Key": keys["admin"]}).status_code == 200


def test_unknown_and_revoked_keys(keyed):
    server, keys, settings = keyed
    wrong = call(server, "search", {"Authorization": "Bearer esk_not-a-key"})
    assert wrong.status_code == 401 and "not valid" in wrong.json()["error"]["message"]
    assert call(server, "search", {"X-API-Key": keys["read"]}).status_code == 200
    revoke_key(settings, "read-key")
    wait_for(lambda: call(server, "search", {"X-API-Key": keys["read"]}).status_code == 401,
             timeout=10)
    assert call(server, "search", {"X-API-Key": keys["write"]}).status_code == 200


def test_keys_are_stored_as_hashes_only(tmp_path: Path, bundled_model: Path):
    settings = make_settings(tmp_path / "home", bundled_model)
    runner = CliRunner()
    made = runner.invoke(cli_app, ["--home", str(settings.home), "keys", "create", "--scope", "read",
                                   "--name", "ci"])
    assert made.exit_code == 0, made.output
    key = made.stdout.strip().splitlines()[-1]
    assert key.startswith("esk_") and len(key) > 40
    stored = settings.keys_path.read_text()
    assert key not in stored and stored == f"{digest(key)} read ci\n"
    assert oct(settings.keys_path.stat().st_mode & 0o777) == "0o600"
    again = runner.invoke(cli_app, ["--home", str(settings.home), "keys", "create", "--scope", "admin",
                                    "--name", "ci"])
    assert again.exit_code == 1 and "exists" in again.stderr
    listed = runner.invoke(cli_app, ["--home", str(settings.home), "keys", "list", "--json"])
    assert '"scope": "read"' in listed.stdout and key not in listed.stdout
    revoked = runner.invoke(cli_app, ["--home", str(settings.home), "keys", "revoke", "ci"])
    assert revoked.exit_code == 0 and read_keys(settings) == []


def test_a_malformed_key_file_is_refused_with_its_line(tmp_path: Path, bundled_model: Path):
    settings = make_settings(tmp_path / "home", bundled_model)
    settings.keys_path.write_text("# keys\nsecret-in-clear read ci\n")
    with pytest.raises(KeyFileError, match=r"api-keys:2: .*SHA-256"):
        read_keys(settings)
    served = CliRunner().invoke(cli_app, ["--home", str(settings.home), "serve", "--port", "1"])
    assert served.exit_code == 1 and "api-keys:2" in served.stderr


def test_keys_from_the_environment_setting(tmp_path: Path, bundled_model: Path):
    settings = make_settings(tmp_path / "home", bundled_model, preload_models=False,
                             api_keys=f"{digest('k1')} read one, {digest('k2')} admin two")
    with RunningServer(settings) as server:
        assert httpx.get(f"{server.url}/v1/collections").status_code == 401
        assert httpx.get(f"{server.url}/v1/collections", headers={"X-API-Key": "k1"}).status_code == 200
        assert httpx.get(f"{server.url}/v1/jobs", headers={"X-API-Key": "k1"}).status_code == 403
        assert httpx.get(f"{server.url}/v1/jobs", headers={"X-API-Key": "k2"}).status_code == 200


def test_rate_limit_answers_429_with_retry_after(tmp_path: Path, bundled_model: Path):
    settings = make_settings(tmp_path / "home", bundled_model, preload_models=False,
                             rate_limit_per_second=0.2, rate_limit_burst=2)
    keys = {name: create_key(settings, Scope.read, name) for name in ("a", "b")}
    with RunningServer(settings) as server:
        def listing(key: str) -> httpx.Response:
            return httpx.get(f"{server.url}/v1/collections", headers={"X-API-Key": keys[key]})

        assert [listing("a").status_code for _ in range(2)] == [200, 200]
        limited = listing("a")
        assert limited.status_code == 429
        assert 1 <= int(limited.headers["retry-after"]) <= 5
        error = limited.json()["error"]
        assert error["code"] == "rate_limited" and "EMBEDSVC_RATE_LIMIT_PER_SECOND" in error["message"]
        assert listing("b").status_code == 200  # buckets are per key
        assert httpx.get(f"{server.url}/healthz").status_code == 200  # open routes are not limited


def test_metrics_can_be_put_behind_admin(tmp_path: Path, bundled_model: Path):
    settings = make_settings(tmp_path / "home", bundled_model, preload_models=False,
                             metrics_scope="admin")
    admin = create_key(settings, Scope.admin, "ops")
    read = create_key(settings, Scope.read, "ci")
    with RunningServer(settings) as server:
        assert httpx.get(f"{server.url}/metrics").status_code == 401
        assert httpx.get(f"{server.url}/metrics", headers={"X-API-Key": read}).status_code == 403
        scraped = httpx.get(f"{server.url}/metrics", headers={"X-API-Key": admin})
        assert scraped.status_code == 200 and "embedsvc_http_requests_total" in scraped.text
        assert httpx.get(f"{server.url}/healthz").status_code == 200


def test_no_keys_means_loopback_only(tmp_path: Path, bundled_model: Path):
    settings = make_settings(tmp_path / "home", bundled_model)
    assert check_exposure(settings, "127.0.0.1", False) is None and check_exposure(settings, "::1", False) is None
    refused = CliRunner().invoke(cli_app, ["--home", str(settings.home), "serve", "--host", "0.0.0.0"])
    assert refused.exit_code == 1 and "--insecure" in refused.stderr
    assert check_exposure(settings.model_copy(update={"insecure": True}), "0.0.0.0", False) is None
    create_key(settings, Scope.admin, "ops")
    assert check_exposure(settings, "0.0.0.0", KeyRing(settings).enabled) is None


def test_revoking_the_last_key_never_opens_the_server(keyed):
    server, keys, settings = keyed
    for name in ("read-key", "write-key", "admin-key"):
        revoke_key(settings, name)
    wait_for(lambda: call(server, "list_collections", {"X-API-Key": keys["admin"]}).status_code == 401,
             timeout=10)
    assert call(server, "list_collections", {}).status_code == 401
    settings.keys_path.write_text("")  # an emptied file, too
    assert call(server, "create_collection", {}).status_code == 401


def test_callers_are_checked_before_their_body_is_read(keyed):
    server, keys, _ = keyed
    url = f"{server.url}/v1/collections/c/search"
    for body in (b"{not json", b"[" * 10_000, "\ud800".encode("utf-8", "surrogatepass")):
        answer = httpx.post(url, content=body, headers={"content-type": "application/json"})
        assert answer.status_code == 401, answer.text
    assert httpx.post(url, content=b"{not json", headers={"content-type": "application/json",
                                                           "X-API-Key": keys["read"]}).status_code == 400


def test_failed_attempts_are_rate_limited_by_address(tmp_path: Path, bundled_model: Path):
    settings = make_settings(tmp_path / "home", bundled_model, preload_models=False,
                             rate_limit_per_second=0.2, rate_limit_burst=3)
    create_key(settings, Scope.read, "ci")
    with RunningServer(settings) as server:
        guesses = [httpx.get(f"{server.url}/v1/collections", headers={"X-API-Key": f"esk_guess{i}"})
                   for i in range(5)]
        assert [g.status_code for g in guesses] == [401, 401, 401, 429, 429]
