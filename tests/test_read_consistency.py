"""SPEC "Reads and consistency" over HTTP, against a real server process.

Every read route answers with ``StemeDB-Applied-LSN``; ``min_lsn`` (or the
``StemeDB-Min-LSN`` header) waits for a write, up to ``[read] wait_timeout_ms``, then
503 ``lsn_not_reached``; ``consistency=stale`` does not wait; contradictory or
malformed parameters are 400 before anything waits.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from stemedb import limits
from stemedb.config import load_config
from stemedb.errors import ConfigError
from stemedb.server import ROUTES
from stemedb.server._openapi import openapi_document
from stemedb.server._routes import CONSISTENCY_VALUES, READ_PARAMS
from tests._server import ServerProcess, run_serve

APPLIED = "StemeDB-Applied-LSN"
WAIT_TIMEOUT_MS = 200  # the server's [read] wait_timeout_ms in this module
FAR_LSN = 10**15  # beyond any WAL these tests write
READ_OPS = ("getAssertion", "listAssertions", "listVotes", "currentEpoch", "getEpoch")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    config = f"[read]\nwait_timeout_ms = {WAIT_TIMEOUT_MS}\n"
    with ServerProcess(tmp_path_factory.mktemp("reads"), config_toml=config) as s:
        s.start()
        yield s


@pytest.fixture
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


def _write(http: httpx.Client) -> dict[str, Any]:
    r = http.post("/v1/assertions", json={"subject": f"s-{uuid.uuid4()}", "predicate": "p",
                                          "object": 1, "author": "alice"})
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


def _sealed(http: httpx.Client) -> int:
    r = http.post("/v1/epochs")
    assert r.status_code == 201, r.text
    n: int = r.json()["sealed"]
    return n


def _applied(r: httpx.Response) -> int:
    assert APPLIED in r.headers, (r.status_code, dict(r.headers))
    return int(r.headers[APPLIED])


def _read_paths(http: httpx.Client) -> dict[str, str]:
    """One path per read operation, each naming things that exist."""
    aid = _write(http)["id"]
    n = _sealed(http)
    return {"getAssertion": f"/v1/assertions/{aid}", "listAssertions": "/v1/assertions",
            "listVotes": f"/v1/assertions/{aid}/votes", "currentEpoch": "/v1/epochs/current",
            "getEpoch": f"/v1/epochs/{n}"}


def test_the_read_routes_are_the_ones_this_module_covers() -> None:
    # GET /v1/cluster needs the read scope too, but it reports membership, not the ledger.
    reads = {r.operation_id for r in ROUTES if r.scope == "read"} - {"clusterStatus"}
    assert reads == set(READ_OPS)


def test_every_read_answers_with_the_applied_lsn(http: httpx.Client) -> None:
    paths = _read_paths(http)
    last = _write(http)
    for op in READ_OPS:
        r = http.get(paths[op])
        assert r.status_code == 200, (op, r.text)
        # A default (linearizable) read has applied at least the write acknowledged
        # before it: the applied LSN is an end LSN, past the record at last["lsn"].
        assert _applied(r) > last["lsn"], op


@pytest.mark.parametrize("path", ["/v1/assertions/999999999", "/v1/assertions/999999999/votes",
                                  "/v1/epochs/999999999"])
def test_a_not_found_read_carries_the_applied_lsn(http: httpx.Client, path: str) -> None:
    last = _write(http)
    r = http.get(path)
    assert r.status_code == 404, r.text
    assert r.json()["error"]["code"] == "not_found"
    assert _applied(r) > last["lsn"]


def test_a_write_is_not_counted_as_a_read(http: httpx.Client) -> None:
    r = http.post("/v1/assertions", json={"subject": "s", "predicate": "p", "object": 1,
                                          "author": "a"})
    assert r.status_code == 201 and APPLIED not in r.headers


@pytest.mark.parametrize("via", ["query", "header"])
def test_min_lsn_of_a_write_sees_it(http: httpx.Client, via: str) -> None:
    created = _write(http)
    lsn = created["lsn"]
    query: dict[str, Any] = {"min_lsn": lsn} if via == "query" else {}
    headers = {"StemeDB-Min-LSN": str(lsn)} if via == "header" else {}
    r = http.get(f"/v1/assertions/{created['id']}", params=query, headers=headers)
    assert r.status_code == 200, r.text
    assert r.json()["lsn"] == lsn and _applied(r) > lsn
    page = http.get("/v1/assertions", params={**query, "after": created["id"] - 1,
                                              "limit": 1}, headers=headers)
    assert page.status_code == 200 and page.json()["items"][0]["id"] == created["id"]


def test_min_lsn_and_the_same_header_together_are_accepted(http: httpx.Client) -> None:
    lsn = _write(http)["lsn"]
    r = http.get("/v1/epochs/current", params={"min_lsn": lsn},
                 headers={"StemeDB-Min-LSN": str(lsn)})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("via", ["query", "header"])
def test_min_lsn_beyond_the_wal_is_503_after_the_wait(http: httpx.Client, via: str) -> None:
    _write(http)
    kw: dict[str, Any] = ({"params": {"min_lsn": FAR_LSN}} if via == "query"
                          else {"headers": {"StemeDB-Min-LSN": str(FAR_LSN)}})
    t0 = time.monotonic()
    r = http.get("/v1/epochs/current", **kw)
    elapsed = time.monotonic() - t0
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "lsn_not_reached"
    assert r.headers["Retry-After"] == str(limits.http_retry_after_seconds)
    assert _applied(r) < FAR_LSN
    # About [read] wait_timeout_ms (200 ms), far from the 5 s default.
    assert WAIT_TIMEOUT_MS / 1000 * 0.9 <= elapsed < 2.5, elapsed


def test_consistency_linearizable_is_the_default(http: httpx.Client) -> None:
    created = _write(http)
    r = http.get(f"/v1/assertions/{created['id']}", params={"consistency": "linearizable"})
    assert r.status_code == 200 and _applied(r) > created["lsn"]


def test_stale_reads_answer_without_waiting(http: httpx.Client) -> None:
    created = _write(http)
    # A linearizable read waits until the write is applied; the applied LSN only grows,
    # so the stale reads after it see the write too (without waiting for anything).
    seen = _applied(http.get(f"/v1/assertions/{created['id']}"))
    for params in ({"consistency": "stale"},
                   {"consistency": "stale", "max_staleness_ms": 60_000}):
        t0 = time.monotonic()
        r = http.get(f"/v1/assertions/{created['id']}", params=params)
        assert r.status_code == 200, (params, r.text)
        assert time.monotonic() - t0 < WAIT_TIMEOUT_MS / 1000
        assert r.json()["id"] == created["id"] and _applied(r) >= seen > created["lsn"]


BAD: list[tuple[dict[str, str], dict[str, str], str]] = [
    ({"consistency": "eventual"}, {}, "invalid_parameter"),
    ({"consistency": ""}, {}, "invalid_parameter"),
    ({"consistency": "STALE"}, {}, "invalid_parameter"),
    ({"min_lsn": "-1"}, {}, "invalid_parameter"),
    ({"min_lsn": "1.5"}, {}, "invalid_parameter"),
    ({"min_lsn": "x"}, {}, "invalid_parameter"),
    ({"min_lsn": str(2**63)}, {}, "out_of_range"),
    ({"max_staleness_ms": "-5", "consistency": "stale"}, {}, "invalid_parameter"),
    ({"min_lsn": "5", "consistency": "stale"}, {}, "conflicting_parameters"),
    ({"consistency": "stale"}, {"StemeDB-Min-LSN": "5"}, "conflicting_parameters"),
    ({"max_staleness_ms": "100"}, {}, "conflicting_parameters"),
    ({"max_staleness_ms": "100", "consistency": "linearizable"}, {},
     "conflicting_parameters"),
    ({"max_staleness_ms": "100", "min_lsn": "5"}, {}, "conflicting_parameters"),
    ({"min_lsn": "5"}, {"StemeDB-Min-LSN": "6"}, "conflicting_parameters"),
    ({}, {"StemeDB-Min-LSN": "soon"}, "invalid_parameter"),
    ({}, {"StemeDB-Min-LSN": "-3"}, "invalid_parameter"),
]


@pytest.mark.parametrize(("params", "headers", "code"), BAD)
def test_bad_read_parameters_are_400_without_waiting(
        http: httpx.Client, params: dict[str, str], headers: dict[str, str],
        code: str) -> None:
    paths = {"getAssertion": "/v1/assertions/1", "listAssertions": "/v1/assertions",
             "listVotes": "/v1/assertions/1/votes", "currentEpoch": "/v1/epochs/current",
             "getEpoch": "/v1/epochs/1"}
    for op, path in paths.items():
        t0 = time.monotonic()
        r = http.get(path, params=params, headers=headers)
        assert r.status_code == 400, (op, r.text)
        assert r.json()["error"]["code"] == code, (op, r.text)
        assert time.monotonic() - t0 < WAIT_TIMEOUT_MS / 1000, op  # refused, not waited


def test_a_repeated_min_lsn_header_is_400(http: httpx.Client) -> None:
    r = http.get("/v1/epochs/current",
                 headers=[("StemeDB-Min-LSN", "1"), ("StemeDB-Min-LSN", "1")])
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_parameter"


def test_read_parameters_are_not_taken_by_other_routes(http: httpx.Client) -> None:
    r = http.get("/v1/admin/status", params={"consistency": "stale"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "unknown_parameter"


# -- the OpenAPI document says what the parsing does --------------------------------

def test_openapi_declares_the_read_parameters_and_headers() -> None:
    doc = openapi_document(auth_enabled=False)
    ops = {op["operationId"]: op for item in doc["paths"].values() for op in item.values()}
    for op_id in READ_OPS:
        op = ops[op_id]
        params = {(p["in"], p["name"]): p for p in op["parameters"]}
        for name in READ_PARAMS:
            assert ("query", name) in params, (op_id, name)
        assert params[("query", "consistency")]["schema"]["enum"] == list(CONSISTENCY_VALUES)
        for key in (("query", "min_lsn"), ("query", "max_staleness_ms"),
                    ("header", "StemeDB-Min-LSN")):
            schema = params[key]["schema"]
            assert (schema["type"], schema["minimum"], schema["maximum"]) == \
                ("integer", 0, limits.http_id_max), (op_id, key)
        ok = op["responses"]["200"]["headers"][APPLIED]
        assert ok["required"] is True and ok["schema"]["type"] == "integer"
        unavailable = op["responses"]["503"]
        assert {"Retry-After", APPLIED} <= set(unavailable["headers"])
        assert "lsn_not_reached" in unavailable["description"]
        assert "too_stale" in unavailable["description"]
    for op_id in ("createAssertion", "adminStatus"):
        names = {p["name"] for p in ops[op_id].get("parameters", [])}
        assert not names & {*READ_PARAMS, "StemeDB-Min-LSN"}, op_id


# -- [read] wait_timeout_ms ----------------------------------------------------------

def test_wait_timeout_config_key(tmp_path: Path) -> None:
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    path = str(empty)
    cfg = load_config(path, env={})
    assert cfg.get("read", "wait_timeout_ms") == \
        limits.read_wait_timeout_seconds_default * 1000 == 5000
    assert load_config(path, env={"STEMEDB_READ_WAIT_TIMEOUT_MS": "250"}).get(
        "read", "wait_timeout_ms") == 250
    toml = tmp_path / "read.toml"
    toml.write_text("[read]\nwait_timeout_ms = 40\n")
    assert load_config(str(toml), env={}).get("read", "wait_timeout_ms") == 40
    for bad in ("0", "-1", "1.5"):
        with pytest.raises(ConfigError, match="wait_timeout_ms"):
            load_config(path, env={"STEMEDB_READ_WAIT_TIMEOUT_MS": bad})


def test_serve_refuses_a_zero_wait_timeout(tmp_path: Path) -> None:
    cfg = tmp_path / "api.toml"
    cfg.write_text("[read]\nwait_timeout_ms = 0\n")
    r = run_serve(tmp_path, ["--config", str(cfg), "--data-dir", str(tmp_path / "d"),
                             "--listen", "127.0.0.1:0"])
    assert r.returncode != 0
    assert "wait_timeout_ms" in r.stdout + r.stderr
