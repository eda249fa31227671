"""The HTTP API contract of SPEC.md, against a real server process."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from stemedb.server import ROUTES
from tests._server import ServerProcess


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path_factory.mktemp("api")) as s:
        s.start()
        yield s


@pytest.fixture
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


def _assertion(subject: str, **extra: Any) -> dict[str, Any]:
    return {"subject": subject, "predicate": "capital_of", "object": {"name": "France"},
            "author": "alice", **extra}


def _end_lsn(http: httpx.Client) -> int:
    lsn: int = http.get("/v1/admin/status").json()["wal"]["end_lsn"]
    return lsn


def test_create_and_get_assertion(http: httpx.Client) -> None:
    subject = f"paris-{uuid.uuid4()}"
    r = http.post("/v1/assertions", json=_assertion(subject, confidence=0.9, source="atlas"))
    assert r.status_code == 201
    assert r.headers["Content-Type"] == "application/json"
    created = r.json()
    assert set(created) == {"id", "lsn", "epoch", "created_at"}
    assert created["created_at"].endswith("Z")
    got = http.get(f"/v1/assertions/{created['id']}")
    assert got.status_code == 200
    body = got.json()
    assert body["subject"] == subject and body["object"] == {"name": "France"}
    assert body["confidence"] == 0.9 and body["source"] == "atlas"
    assert body["lsn"] == created["lsn"] and body["epoch"] == created["epoch"]
    assert (body["support"], body["dispute"], body["score"]) == (0, 0, 0)
    assert body["tally"]["epoch"] == created["epoch"]


def test_ids_increase_and_lsns_increase(http: httpx.Client) -> None:
    a = http.post("/v1/assertions", json=_assertion(f"s-{uuid.uuid4()}")).json()
    b = http.post("/v1/assertions", json=_assertion(f"s-{uuid.uuid4()}")).json()
    assert b["id"] > a["id"] and b["lsn"] > a["lsn"]


def test_vote_upsert_and_tally(http: httpx.Client) -> None:
    aid = http.post("/v1/assertions", json=_assertion(f"v-{uuid.uuid4()}")).json()["id"]
    r = http.put(f"/v1/assertions/{aid}/votes/bob", json={"value": 1})
    assert r.status_code == 201, r.text
    assert r.json()["created"] is True and {"lsn", "epoch"} <= set(r.json())
    assert http.put(f"/v1/assertions/{aid}/votes/carol", json={"value": 1}).status_code == 201
    # A later vote by the same voter in the same epoch replaces the earlier one.
    r = http.put(f"/v1/assertions/{aid}/votes/bob", json={"value": -1})
    assert r.status_code == 200 and r.json()["created"] is False
    got = http.get(f"/v1/assertions/{aid}").json()
    assert (got["support"], got["dispute"], got["score"]) == (1, 1, 0)
    votes = http.get(f"/v1/assertions/{aid}/votes").json()
    assert [(v["voter"], v["value"]) for v in votes["votes"]] == [("bob", -1), ("carol", 1)]
    assert votes["sealed"] is False


def test_voter_names_are_path_segments(http: httpx.Client) -> None:
    aid = http.post("/v1/assertions", json=_assertion(f"u-{uuid.uuid4()}")).json()["id"]
    r = http.put(f"/v1/assertions/{aid}/votes/%C3%A9lodie%20b", json={"value": 1})
    assert r.status_code == 201, r.text
    assert r.json()["voter"] == "élodie b"


def test_list_filters_and_cursor_pagination(http: httpx.Client) -> None:
    subject = f"list-{uuid.uuid4()}"
    ids = [http.post("/v1/assertions", json=_assertion(subject, author=f"au{i % 2}")
                     ).json()["id"] for i in range(7)]
    seen: list[int] = []
    after = 0
    for _ in range(10):  # 7 items, 3 per page: 3 pages
        page = http.get("/v1/assertions", params={"subject": subject, "limit": 3,
                                                  "after": after}).json()
        seen += [i["id"] for i in page["items"]]
        if page["next"] is None:
            break
        after = page["next"]
    assert seen == ids
    au1 = http.get("/v1/assertions", params={"subject": subject, "author": "au1"}).json()
    assert [i["id"] for i in au1["items"]] == ids[1::2]
    assert au1["next"] is None
    none = http.get("/v1/assertions", params={"subject": subject, "predicate": "nope"})
    assert none.json() == {"items": [], "next": None}


def test_batch_is_atomic_and_ordered(http: httpx.Client) -> None:
    aid = http.post("/v1/assertions", json=_assertion(f"b-{uuid.uuid4()}")).json()["id"]
    r = http.post("/v1/batch", json={"ops": [
        {"assert": _assertion(f"b2-{uuid.uuid4()}")},
        {"vote": {"assertion_id": aid, "voter": "dan", "value": 1}},
        {"vote": {"assertion_id": aid, "voter": "eve", "value": -1}},
    ]})
    assert r.status_code == 201, r.text
    body = r.json()
    assert len(body["results"]) == 3 and "lsn" in body
    assert body["results"][0]["id"] > aid
    assert body["results"][1]["voter"] == "dan"
    before = _end_lsn(http)
    counts = http.get("/v1/epochs/current").json()
    # One op refers to an assertion that does not exist: nothing of the batch is written.
    r = http.post("/v1/batch", json={"ops": [
        {"assert": _assertion(f"b3-{uuid.uuid4()}")},
        {"vote": {"assertion_id": aid, "voter": "fay", "value": 1}},
        {"vote": {"assertion_id": 10**12, "voter": "fay", "value": 1}},
    ]})
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert _end_lsn(http) == before
    assert http.get("/v1/epochs/current").json() == counts
    assert "fay" not in [v["voter"] for v in
                         http.get(f"/v1/assertions/{aid}/votes").json()["votes"]]


def test_idempotency_key_replays_the_first_response(http: httpx.Client) -> None:
    key = str(uuid.uuid4())
    body = _assertion(f"idem-{uuid.uuid4()}")
    first = http.post("/v1/assertions", json=body, headers={"Idempotency-Key": key})
    assert first.status_code == 201 and "Idempotent-Replayed" not in first.headers
    lsn = _end_lsn(http)
    again = http.post("/v1/assertions", json=body, headers={"Idempotency-Key": key})
    assert again.status_code == 201
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert _end_lsn(http) == lsn  # nothing written
    other = http.post("/v1/assertions", json={**body, "author": "mallory"},
                      headers={"Idempotency-Key": key})
    assert other.status_code == 409
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    # The same key and body on another route is another request.
    aid = first.json()["id"]
    vote_key = str(uuid.uuid4())
    assert http.put(f"/v1/assertions/{aid}/votes/gus", json={"value": 1},
                    headers={"Idempotency-Key": vote_key}).status_code == 201
    r = http.put(f"/v1/assertions/{aid}/votes/hal", json={"value": 1},
                 headers={"Idempotency-Key": vote_key})
    assert r.status_code == 409
    assert _end_lsn(http) > lsn


def test_idempotent_vote_replay_keeps_first_status(http: httpx.Client) -> None:
    aid = http.post("/v1/assertions", json=_assertion(f"iv-{uuid.uuid4()}")).json()["id"]
    key = str(uuid.uuid4())
    first = http.put(f"/v1/assertions/{aid}/votes/ivy", json={"value": 1},
                     headers={"Idempotency-Key": key})
    again = http.put(f"/v1/assertions/{aid}/votes/ivy", json={"value": 1},
                     headers={"Idempotency-Key": key})
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()


def test_epoch_seal_and_sealed_results(http: httpx.Client) -> None:
    aid = http.post("/v1/assertions", json=_assertion(f"e-{uuid.uuid4()}")).json()["id"]
    cur = http.get("/v1/epochs/current").json()
    assert set(cur) == {"epoch", "opened_at", "assertions", "votes"}
    n = cur["epoch"]
    for voter, value in (("a", 1), ("b", 1), ("c", -1)):
        http.put(f"/v1/assertions/{aid}/votes/{voter}", json={"value": value})
    r = http.post("/v1/epochs")
    assert r.status_code == 201, r.text
    sealed = r.json()
    assert sealed["sealed"] == n and sealed["opened"] == n + 1
    assert len(sealed["digest"]) == 64
    assert http.get("/v1/epochs/current").json()["epoch"] == n + 1
    ep = http.get(f"/v1/epochs/{n}").json()
    assert ep["digest"] == sealed["digest"]
    mine = [x for x in ep["results"] if x["assertion_id"] == aid]
    assert mine == [{"assertion_id": aid, "support": 2, "dispute": 1, "score": 1,
                     "status": "accepted"}]
    # The open epoch starts with an empty tally; the sealed one keeps its votes.
    assert http.get(f"/v1/assertions/{aid}").json()["score"] == 0
    old = http.get(f"/v1/assertions/{aid}/votes", params={"epoch": n}).json()
    assert old["sealed"] is True and old["score"] == 1
    # Pagination of a sealed epoch's results.
    first = http.get(f"/v1/epochs/{n}", params={"limit": 1}).json()
    assert len(first["results"]) == 1
    if ep["voted_assertions"] > 1:
        assert first["next"] == first["results"][0]["assertion_id"]
    # The open epoch is not a sealed one.
    r = http.get(f"/v1/epochs/{n + 1}")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_unknown_ids_are_404(http: httpx.Client) -> None:
    for path in ("/v1/assertions/999999999", "/v1/assertions/999999999/votes",
                 "/v1/epochs/999999999"):
        r = http.get(path)
        assert r.status_code == 404, path
        assert r.json()["error"]["code"] == "not_found"
    r = http.put("/v1/assertions/999999999/votes/x", json={"value": 1})
    assert r.status_code == 404


def test_unknown_route_and_method_use_the_error_shape(http: httpx.Client) -> None:
    r = http.get("/v1/nope")
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found"
    r = http.delete("/v1/assertions")
    assert r.status_code == 405
    assert r.json()["error"]["code"] == "method_not_allowed"
    assert set(r.headers["Allow"].split(",")) == {"GET", "POST"}


def test_health_ready_and_status(http: httpx.Client) -> None:
    assert http.get("/healthz").json()["status"] == "ok"
    ready = http.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    status = http.get("/v1/admin/status").json()
    for key in ("wal", "fsync", "checkpoint", "replay", "disk", "holds", "archive", "node"):
        assert key in status
    assert status["node"]["phase"] == "ready"
    assert status["wal"]["segment"].startswith("segment.")


def test_checkpoint_route(http: httpx.Client) -> None:
    http.post("/v1/assertions", json=_assertion(f"c-{uuid.uuid4()}"))
    r = http.post("/v1/admin/checkpoint")
    assert r.status_code == 200, r.text
    report = r.json()
    assert report["checkpoint_lsn"] == _end_lsn(http)
    status = http.get("/v1/admin/status").json()
    assert status["checkpoint"]["lsn"] == report["checkpoint_lsn"]
    assert status["checkpoint"]["replay_debt_bytes"] == 0


def test_metrics_text_and_openmetrics(http: httpx.Client) -> None:
    http.get("/v1/epochs/current")
    r = http.get("/metrics")
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain")
    assert 'stemedb_http_requests_total{method="GET",route="/v1/epochs/current",' \
           'status="200"}' in r.text
    assert "stemedb_http_request_duration_seconds_bucket" in r.text
    assert "stemedb_ready 1.0" in r.text
    assert "stemedb_wal_fsync_duration_seconds" in r.text
    om = http.get("/metrics", headers={"Accept": "application/openmetrics-text"})
    assert om.headers["Content-Type"].startswith("application/openmetrics-text")
    assert om.text.rstrip().endswith("# EOF")


def test_openapi_matches_the_route_table(http: httpx.Client) -> None:
    doc = http.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.0")
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    served = {(r.method, r.path) for r in ROUTES}
    assert documented == served
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            for status, resp in op["responses"].items():
                if int(status) >= 400 and (path, status) != ("/readyz", "503"):
                    assert resp["content"]["application/json"]["schema"]["$ref"] \
                        == "#/components/schemas/Error", (method, path, status)
    # No tokens configured: the document declares no security requirement.
    assert "security" not in doc


def test_concurrent_writes_all_succeed(server: ServerProcess) -> None:
    """Many concurrent writes (one group commit or a few) all succeed and are readable."""

    async def go() -> list[int]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
            subject = f"conc-{uuid.uuid4()}"
            rs = await asyncio.gather(*[c.post("/v1/assertions", json=_assertion(subject))
                                        for _ in range(50)])
            assert all(r.status_code == 201 for r in rs)
            page = (await c.get("/v1/assertions", params={"subject": subject,
                                                          "limit": 1000})).json()
            return [i["id"] for i in page["items"]]

    ids = asyncio.run(go())
    assert len(ids) == 50
