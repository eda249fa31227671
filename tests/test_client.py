"""stemedb.client: typed results, errors as exceptions, retries with one key."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from stemedb import limits
from stemedb.client import (
    Assertion,
    AssertionCreated,
    AsyncClient,
    BadRequest,
    Client,
    Conflict,
    ConnectionFailed,
    NotFound,
    Unavailable,
    VoteResult,
    WalFsyncFailed,
    assert_op,
    vote_op,
)
from tests._server import ServerProcess, free_port


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path_factory.mktemp("client")) as s:
        s.start()
        yield s


def test_round_trip(server: ServerProcess) -> None:
    with Client(server.url) as db:
        a = db.create_assertion("paris", "capital_of", {"country": "france"}, author="alice",
                                confidence=0.75, source="atlas")
        assert isinstance(a, AssertionCreated) and a.id >= 1 and not a.replayed
        v = db.vote(a.id, "bob", 1)
        assert isinstance(v, VoteResult) and v.created
        assert db.vote(a.id, "bob", -1).created is False
        got = db.get_assertion(a.id)
        assert isinstance(got, Assertion)
        assert got.object == {"country": "france"} and got.confidence == 0.75
        assert (got.support, got.dispute, got.score) == (0, 1, -1)
        b = db.batch([assert_op("rome", "capital_of", "italy", author="alice"),
                      vote_op(a.id, "carol", 1)])
        assert isinstance(b.results[0], AssertionCreated)
        assert isinstance(b.results[1], VoteResult)
        votes = db.votes(a.id)
        assert [x.voter for x in votes.votes] == ["bob", "carol"] and votes.score == 0
        epoch = db.current_epoch().epoch
        sealed = db.seal_epoch()
        assert sealed.sealed == epoch and sealed.opened == epoch + 1
        ep = db.get_epoch(epoch)
        assert ep.digest == sealed.digest
        assert {r.assertion_id: r.status for r in ep.results}[a.id] == "contested"
        assert db.votes(a.id, epoch=epoch).sealed is True
        assert db.checkpoint().checkpoint_lsn == db.status()["wal"]["end_lsn"]
        assert db.ready()["ready"] is True


def test_pages_and_iterator(server: ServerProcess) -> None:
    with Client(server.url) as db:
        ids = [db.create_assertion("iter", "p", i, author="it").id for i in range(5)]
        page = db.list_assertions(subject="iter", limit=2)
        assert [x.id for x in page.items] == ids[:2] and page.next == ids[1]
        assert [x.id for x in db.iter_assertions(subject="iter", limit=2)] == ids
        with pytest.raises(TypeError):
            db.list_assertions(colour="blue")  # type: ignore[call-arg]


def test_errors_are_exceptions(server: ServerProcess) -> None:
    with Client(server.url) as db:
        with pytest.raises(NotFound) as nf:
            db.get_assertion(10**12)
        assert nf.value.status == 404 and nf.value.code == "not_found"
        with pytest.raises(BadRequest) as bad:
            db.create_assertion("", "p", 1, author="a")
        assert bad.value.code == "too_short" and "empty" in bad.value.message
        with pytest.raises(BadRequest):
            db.vote(1, "v", 2)
        a = db.create_assertion("k", "p", 1, author="a", idempotency_key="client-key-1")
        again = db.create_assertion("k", "p", 1, author="a", idempotency_key="client-key-1")
        assert again.replayed and again.id == a.id
        with pytest.raises(Conflict) as c:
            db.create_assertion("k", "p", 2, author="a", idempotency_key="client-key-1")
        assert c.value.code == "idempotency_key_reused"


def test_async_client(server: ServerProcess) -> None:
    async def go() -> None:
        async with AsyncClient(server.url) as db:
            made = await asyncio.gather(*[db.create_assertion("async", "p", i, author="as")
                                          for i in range(10)])
            assert len({m.id for m in made}) == 10
            await db.vote(made[0].id, "v", 1)
            assert (await db.get_assertion(made[0].id)).score == 1
            seen = [x.id async for x in db.iter_assertions(subject="async", limit=3)]
            assert sorted(seen) == sorted(m.id for m in made)
            assert (await db.current_epoch()).epoch >= 1
            with pytest.raises(NotFound):
                await db.votes(10**12)

    asyncio.run(go())


# --- retries, with a fake transport ---------------------------------------------------

def _recording(responses: list[object]) -> tuple[httpx.MockTransport, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        r = responses.pop(0)
        if isinstance(r, Exception):
            raise r
        assert isinstance(r, httpx.Response)
        return r

    return httpx.MockTransport(handle), seen


CREATED = {"id": 7, "lsn": 128, "epoch": 1, "created_at": "2026-11-25T19:00:00.000000Z"}
E503 = {"error": {"code": "replaying", "message": "replaying"}}


def test_write_retries_with_the_same_key_on_503_and_connection_errors() -> None:
    transport, seen = _recording([
        httpx.ConnectError("refused"),
        httpx.Response(503, json=E503, headers={"Retry-After": "1"}),
        httpx.ReadTimeout("slow"),
        httpx.Response(201, json=CREATED, headers={"Idempotent-Replayed": "true"}),
    ])
    waits: list[float] = []
    with Client("http://x", transport=transport, sleep=waits.append) as db:
        a = db.create_assertion("s", "p", 1, author="a")
    assert a.id == 7 and a.replayed
    keys = {r.headers["Idempotency-Key"] for r in seen}
    assert len(seen) == 4 and len(keys) == 1  # one key for every try
    assert len({r.content for r in seen}) == 1
    # Exponential backoff, Retry-After honoured, everything capped.
    assert waits == [0.1, 1.0, 0.4]
    assert all(w <= limits.client_backoff_seconds_max for w in waits)


def test_retries_are_bounded() -> None:
    transport, seen = _recording([httpx.Response(503, json=E503)] * 10)
    waits: list[float] = []
    with Client("http://x", transport=transport, sleep=waits.append) as db, \
            pytest.raises(Unavailable) as e:
        db.seal_epoch()
    assert len(seen) == 1 + limits.client_retries_max
    assert e.value.code == "replaying"
    assert waits == [0.1, 0.2, 0.4, 0.8, 1.6]  # doubling from the initial wait
    # A server asking for a long wait gets at most the cap.
    transport, seen = _recording([httpx.Response(503, json=E503,
                                                 headers={"Retry-After": "30"})] * 10)
    waits = []
    with Client("http://x", transport=transport, sleep=waits.append) as db, \
            pytest.raises(Unavailable):
        db.seal_epoch()
    assert waits == [limits.client_backoff_seconds_max] * limits.client_retries_max
    transport, seen = _recording([httpx.ConnectError("refused")] * 10)
    with Client("http://x", transport=transport, sleep=lambda s: None) as db, \
            pytest.raises(ConnectionFailed):
        db.current_epoch()
    assert len(seen) == 1 + limits.client_retries_max


def test_fsync_failure_is_never_retried() -> None:
    transport, seen = _recording([httpx.Response(500, json={"error": {
        "code": "wal_fsync_failed", "message": "fsync failed"}})])
    with Client("http://x", transport=transport, sleep=lambda s: None) as db, \
            pytest.raises(WalFsyncFailed):
        db.vote(1, "v", 1, idempotency_key="k1")
    assert len(seen) == 1 and seen[0].headers["Idempotency-Key"] == "k1"


def test_reads_send_no_key_and_writes_always_do() -> None:
    transport, seen = _recording([httpx.Response(200, json={"epoch": 1, "opened_at": "t",
                                                            "assertions": 0, "votes": 0}),
                                  httpx.Response(201, json=CREATED)])
    with Client("http://x", token="t0k", transport=transport) as db:
        db.current_epoch()
        db.create_assertion("s", "p", 1, author="a")
    assert "Idempotency-Key" not in seen[0].headers
    assert len(seen[1].headers["Idempotency-Key"]) == 36  # a UUID4
    assert seen[1].headers["Authorization"] == "Bearer t0k"
    assert json.loads(seen[1].content)["subject"] == "s"


def test_async_retries_with_the_same_key() -> None:
    responses: list[object] = [httpx.Response(503, json=E503),
                               httpx.Response(201, json=CREATED)]
    seen: list[httpx.Request] = []

    async def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        r = responses.pop(0)
        assert isinstance(r, httpx.Response)
        return r

    async def go() -> None:
        async with AsyncClient("http://x", transport=httpx.MockTransport(handle),
                               backoff_seconds_initial=0.001) as db:
            assert (await db.create_assertion("s", "p", 1, author="a")).id == 7

    asyncio.run(go())
    assert len(seen) == 2 and seen[0].headers["Idempotency-Key"] == \
        seen[1].headers["Idempotency-Key"]


def test_a_write_survives_a_server_restart(tmp_path: Path) -> None:
    """A real restart mid-retry: the client's write lands once, under its one key."""
    port = free_port()
    s = ServerProcess(tmp_path)
    s.port = port
    s.start()
    with Client(s.url) as db:
        db.create_assertion("before", "p", 1, author="a")
    s.stop()
    result: list[AssertionCreated] = []

    def write() -> None:
        with Client(s.url, backoff_seconds_max=0.5, retries_max=20) as db:
            result.append(db.create_assertion("during", "p", 1, author="a"))

    t = threading.Thread(target=write)
    t.start()
    time.sleep(0.3)  # the client is retrying against a closed port
    s2 = ServerProcess(tmp_path)
    s2.port = port
    with s2:
        s2.start()
        t.join(30)
        assert result and result[0].id == 2
        with Client(s2.url) as db:
            assert [a.subject for a in db.iter_assertions()] == ["before", "during"]
    assert s2.stop(signal.SIGTERM) in (0, None)
