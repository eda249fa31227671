"""Bearer tokens and scopes; the loopback rule; start-up refusals."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from stemedb.server import INSECURE_FLAG, ROUTES, Route
from tests._server import ServerProcess, free_port, run_serve

READER = "reader-4b1c9e0f7a2d"
WRITER = "writer-8e3f2a6b9c1d"
ADMIN = "admin-5d7c1e9a3b0f"
WRONG = "wrong-000000000000"
TOKENS_TOML = f"""
[auth]
tokens = [
  {{ name = "reader", token = "{READER}", scopes = ["read"] }},
  {{ name = "writer", token = "{WRITER}", scopes = ["read", "write"] }},
  {{ name = "ops", token = "{ADMIN}", scopes = ["admin"] }},
]
"""
OPEN_ROUTES = ("/healthz", "/readyz", "/metrics", "/openapi.json", "/leader")
# Open too, for load balancers; 503 (not a streaming replica) on a node of its own.
OPEN_NOT_OK_ROUTES = ("/replica",)


def _scope_by_spec(method: str, path: str) -> str | None:
    """The scope SPEC.md and docs/api.md give a route (independent of the route table)."""
    if path in OPEN_ROUTES + OPEN_NOT_OK_ROUTES:
        return None
    if path.startswith("/v1/admin/"):
        return "admin"
    if path.startswith("/v1/replication/"):
        return "replication"
    return "read" if method == "GET" else "write"


def _concrete(path: str) -> str:
    return path.replace("{id}", "1").replace("{voter}", "bob").replace("{n}", "1")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path_factory.mktemp("auth"), config_toml=TOKENS_TOML) as s:
        s.start()
        yield s


def _h(token: str | None) -> dict[str, str]:
    return {} if token is None else {"Authorization": f"Bearer {token}"}


def test_open_routes_need_no_token(server: ServerProcess) -> None:
    with server.client() as c:
        for path in OPEN_ROUTES:
            assert c.get(path).status_code == 200, path
        for path in OPEN_NOT_OK_ROUTES:
            r = c.get(path)
            assert r.status_code == 503 and r.json()["error"]["code"] == "not_streaming"


@pytest.mark.parametrize("route", [r for r in ROUTES
                                   if r.path not in OPEN_ROUTES + OPEN_NOT_OK_ROUTES],
                         ids=lambda r: f"{r.method} {r.path}")
def test_every_route_needs_its_scope(server: ServerProcess, route: Route) -> None:
    method, path = route.method, route.path
    scope = _scope_by_spec(method, path)
    url = _concrete(path)
    body = b'{"value": 1}' if method == "PUT" else None
    headers = {"Content-Type": "application/json"} if body else {}
    with server.client() as c:
        r = c.request(method, url, content=body, headers=headers)
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "unauthorized"
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
        r = c.request(method, url, content=body, headers={**headers, **_h(WRONG)})
        assert r.status_code == 401
        lacking = {"read": ADMIN, "write": READER, "admin": WRITER,
                   "replication": WRITER}[str(scope)]
        r = c.request(method, url, content=body, headers={**headers, **_h(lacking)})
        assert r.status_code == 403, r.text
        assert r.json()["error"]["code"] == "forbidden"
        assert f'scope="{scope}"' in r.headers["WWW-Authenticate"]


def test_tokens_with_the_scope_get_through(server: ServerProcess) -> None:
    with server.client() as c:
        r = c.post("/v1/assertions", headers=_h(WRITER),
                   json={"subject": "s", "predicate": "p", "object": 1, "author": "a"})
        assert r.status_code == 201
        aid = r.json()["id"]
        assert c.get(f"/v1/assertions/{aid}", headers=_h(READER)).status_code == 200
        assert c.get(f"/v1/assertions/{aid}", headers=_h(WRITER)).status_code == 200
        assert c.get("/v1/admin/status", headers=_h(ADMIN)).status_code == 200
        assert c.post("/v1/admin/checkpoint", headers=_h(ADMIN)).status_code == 200


def test_malformed_authorization_headers(server: ServerProcess) -> None:
    with server.client() as c:
        for value in ("Basic cmVhZGVyOng=", f"Bearer{READER}", "Bearer", READER,
                      f"Bearer {READER}x", f"Bearer {READER[:-1]}"):
            r = c.get("/v1/epochs/current", headers={"Authorization": value})
            assert r.status_code == 401, value
        # The scheme is case-insensitive (RFC 7235).
        r = c.get("/v1/epochs/current", headers={"Authorization": f"bearer {READER}"})
        assert r.status_code == 200


def test_openapi_declares_bearer_auth(server: ServerProcess) -> None:
    with server.client() as c:
        doc = c.get("/openapi.json").json()
    assert doc["security"] == [{"bearerAuth": []}]
    assert doc["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert doc["paths"]["/healthz"]["get"]["security"] == []
    assert "401" in doc["paths"]["/v1/assertions"]["post"]["responses"]


def test_tokens_never_reach_the_log(server: ServerProcess) -> None:
    with server.client() as c:
        for token in (READER, WRITER, ADMIN, WRONG):
            c.get("/v1/epochs/current", headers=_h(token))
            c.post("/v1/admin/checkpoint", headers=_h(token))
    log = server.log()
    assert "effective config" in log
    assert '"token": "***"' in log
    for token in (READER, WRITER, ADMIN, WRONG):
        assert token not in log


def test_open_server_refuses_a_public_bind(tmp_path: Path) -> None:
    port = free_port()
    r = run_serve(tmp_path, ["--config", _empty(tmp_path), "--data-dir",
                             str(tmp_path / "d"), "--listen", f"0.0.0.0:{port}"])
    assert r.returncode == 2
    assert INSECURE_FLAG in r.stderr + r.stdout
    assert not (tmp_path / "d").exists()  # refused before touching the data directory


def test_insecure_flag_allows_a_public_bind(tmp_path: Path) -> None:
    with ServerProcess(tmp_path, host="0.0.0.0", args=(INSECURE_FLAG,)) as s:
        s.start()
        with s.client() as c:
            assert c.get("/v1/epochs/current").status_code == 200
        assert "insecure" in s.log()


def test_tokens_allow_a_public_bind(tmp_path: Path) -> None:
    with ServerProcess(tmp_path, host="0.0.0.0", config_toml=TOKENS_TOML) as s:
        s.start()
        with s.client() as c:
            assert c.get("/v1/epochs/current").status_code == 401


def _empty(tmp_path: Path) -> str:
    p = tmp_path / "empty.toml"
    p.write_text("")
    return str(p)


@pytest.mark.parametrize(("toml", "env", "named"), [
    ("[wal]\nfsync = \"sometimes\"\n", {}, "wal.fsync"),
    ("", {"STEMEDB_WAL_FSYNC": "sometimes"}, "wal.fsync"),
    ("[server]\nlisten = \"nowhere\"\n", {}, "server.listen"),
    ("[server]\nbody_bytes_max = \"lots\"\n", {}, "server.body_bytes_max"),
    ("[server]\ncolour = \"blue\"\n", {}, "server.colour"),
    ("[server]\nreader_threads = 0\n", {}, "server.reader_threads"),
    ("", {"STEMEDB_SERVER_READER_THREADS": "65"}, "server.reader_threads"),
    ("[state]\npage_cache_bytes = 1024\n", {}, "state.page_cache_bytes"),
    ("[auth]\ntokens = [{ name = \"x\", token = \"\" }]\n", {}, "auth.tokens[0]"),
    ("not toml at all = = =\n", {}, "not valid TOML"),
])
def test_invalid_config_fails_at_start_naming_the_key(tmp_path: Path, toml: str,
                                                      env: dict[str, str], named: str) -> None:
    cfg = tmp_path / "api.toml"
    cfg.write_text(toml)
    # No --listen flag: it would override the file's listen key.
    r = run_serve(tmp_path, ["--config", str(cfg), "--data-dir", str(tmp_path / "d")], env=env)
    assert r.returncode == 2
    assert named in r.stderr


def test_flags_override_env_override_file(tmp_path: Path) -> None:
    file_port, env_port, flag_port = free_port(), free_port(), free_port()
    toml = (f'data_dir = "{tmp_path / "from-file"}"\n[server]\n'
            f'listen = "127.0.0.1:{file_port}"\nlog_format = "plain"\n')
    s = ServerProcess(tmp_path, config_toml=toml,
                      env={"STEMEDB_SERVER_LISTEN": f"127.0.0.1:{env_port}",
                           "STEMEDB_SERVER_LOG_FORMAT": "json"})
    s.port = flag_port  # the helper passes --listen 127.0.0.1:<port> and --data-dir
    with s:
        s.start()
        log = s.log()
    lines = [json.loads(line) for line in log.splitlines()]  # JSON logs: one object a line
    assert all(line["logger"].startswith("stemedb") for line in lines)
    (effective,) = [line["config"] for line in lines if "config" in line]
    assert effective["server.listen"] == f"127.0.0.1:{flag_port}"
    assert effective["data_dir"] == str(tmp_path / "data")
    assert effective["server.log_format"] == "json"


def test_client_error_for_missing_token(server: ServerProcess) -> None:
    from stemedb.client import Client, Forbidden, Unauthorized
    with Client(server.url) as c, pytest.raises(Unauthorized) as e:
        c.current_epoch()
    assert e.value.status == 401 and e.value.code == "unauthorized"
    with Client(server.url, token=READER) as c:
        assert c.current_epoch().epoch >= 1
        with pytest.raises(Forbidden):
            c.create_assertion("s", "p", 1, author="a")
        assert READER not in repr(c)
