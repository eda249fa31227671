"""stemedb.client: consistency arguments, the applied LSN, and read-your-writes sessions.

Against a real server; a transport that records each request on its way to the real
network shows what the client sent, and a ``min_lsn`` beyond the WAL shows that the
server got it (it waits ``[read] wait_timeout_ms``, then 503 ``lsn_not_reached``).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from stemedb.client import (
    AssertionCreated,
    AsyncClient,
    AsyncSession,
    BadRequest,
    Client,
    NotFound,
    Session,
    Unavailable,
    assert_op,
    vote_op,
)
from tests._server import ServerProcess

WAIT_TIMEOUT_MS = 200
FAR_LSN = 10**15  # beyond any WAL these tests write


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    config = f"[read]\nwait_timeout_ms = {WAIT_TIMEOUT_MS}\n"
    with ServerProcess(tmp_path_factory.mktemp("session"), config_toml=config) as s:
        s.start()
        yield s


class Recording(httpx.HTTPTransport):
    """The real transport, keeping every request it sends."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(request)
        return super().handle_request(request)

    def last(self) -> httpx.Request:
        return self.sent[-1]


class AsyncRecording(httpx.AsyncHTTPTransport):
    def __init__(self) -> None:
        super().__init__()
        self.sent: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(request)
        return await super().handle_async_request(request)


def _min_lsn(request: httpx.Request) -> int | None:
    value = request.url.params.get("min_lsn")
    return None if value is None else int(value)


@pytest.fixture
def rec() -> Recording:
    return Recording()


@pytest.fixture
def db(server: ServerProcess, rec: Recording) -> Iterator[Client]:
    with Client(server.url, transport=rec, retries_max=0) as c:
        yield c


def _new(db: Client | Session) -> AssertionCreated:
    return db.create_assertion(f"s-{uuid.uuid4()}", "p", 1, author="alice")


# -- the client's read arguments ------------------------------------------------------

def test_reads_pass_min_lsn_consistency_and_max_staleness(db: Client, rec: Recording
                                                          ) -> None:
    a = _new(db)
    assert db.get_assertion(a.id, min_lsn=a.lsn).id == a.id
    assert _min_lsn(rec.last()) == a.lsn
    assert db.last_applied_lsn is not None and db.last_applied_lsn > a.lsn
    page = db.list_assertions(after=a.id - 1, limit=1, consistency="stale",
                              max_staleness_ms=60_000)
    assert [x.id for x in page.items] == [a.id]
    assert rec.last().url.params["consistency"] == "stale"
    assert rec.last().url.params["max_staleness_ms"] == "60000"
    db.votes(a.id, min_lsn=a.lsn)
    assert _min_lsn(rec.last()) == a.lsn
    db.current_epoch(consistency="linearizable")
    assert rec.last().url.params["consistency"] == "linearizable"
    sealed = db.seal_epoch()
    db.get_epoch(sealed.sealed, min_lsn=sealed.lsn)
    assert _min_lsn(rec.last()) == sealed.lsn
    # Without arguments, nothing is added: the server's default (linearizable).
    db.current_epoch()
    assert not {"min_lsn", "consistency", "max_staleness_ms"} & set(rec.last().url.params)


def test_a_far_min_lsn_is_503_lsn_not_reached(db: Client) -> None:
    t0 = time.monotonic()
    with pytest.raises(Unavailable) as e:
        db.current_epoch(min_lsn=FAR_LSN)
    assert time.monotonic() - t0 < 2.5
    assert e.value.code == "lsn_not_reached" and e.value.retry_after_seconds is not None
    assert e.value.applied_lsn is not None and e.value.applied_lsn < FAR_LSN


def test_contradictory_arguments_are_the_servers_400(db: Client) -> None:
    with pytest.raises(BadRequest) as e:
        db.current_epoch(min_lsn=1, consistency="stale")
    assert e.value.code == "conflicting_parameters"
    with pytest.raises(BadRequest) as e:
        db.current_epoch(max_staleness_ms=10)
    assert e.value.code == "conflicting_parameters"


def test_an_error_of_a_read_carries_the_applied_lsn(db: Client) -> None:
    a = _new(db)
    with pytest.raises(NotFound) as e:
        db.get_assertion(10**12)
    assert e.value.applied_lsn is not None and e.value.applied_lsn > a.lsn
    assert db.last_applied_lsn == e.value.applied_lsn


# -- sessions -------------------------------------------------------------------------

def test_a_session_reads_with_the_highest_lsn_of_its_writes(db: Client, rec: Recording
                                                            ) -> None:
    s = db.session()
    assert isinstance(s, Session) and s.lsn is None
    s.current_epoch()
    assert _min_lsn(rec.last()) is None  # nothing written yet: nothing to wait for
    a = _new(s)
    assert s.lsn == a.lsn
    got = s.get_assertion(a.id)
    assert got.id == a.id and _min_lsn(rec.last()) == a.lsn
    assert s.last_applied_lsn is not None and s.last_applied_lsn > a.lsn
    v = s.vote(a.id, "bob", 1)
    assert s.lsn == v.lsn > a.lsn
    s.votes(a.id)
    assert _min_lsn(rec.last()) == v.lsn
    b = s.batch([assert_op("rome", "capital_of", "italy", author="alice"),
                 vote_op(a.id, "carol", -1)])
    assert s.lsn == b.lsn > v.lsn
    s.list_assertions(limit=1)
    assert _min_lsn(rec.last()) == b.lsn
    sealed = s.seal_epoch()
    assert s.lsn == sealed.lsn > b.lsn
    s.get_epoch(sealed.sealed)
    assert _min_lsn(rec.last()) == sealed.lsn
    # Every page of an iteration carries it.
    before = len(rec.sent)
    assert len(list(s.iter_assertions(limit=1, after=a.id - 1))) >= 2
    pages = rec.sent[before:]
    assert len(pages) >= 2 and all(_min_lsn(r) == sealed.lsn for r in pages)
    # The plain client is not a session: its reads carry no min_lsn.
    db.get_assertion(a.id)
    assert _min_lsn(rec.last()) is None


def test_a_session_keeps_the_larger_of_its_lsn_and_the_callers(db: Client, rec: Recording
                                                               ) -> None:
    s = db.session()
    a = _new(s)
    s.current_epoch(min_lsn=a.lsn - 1)
    assert _min_lsn(rec.last()) == a.lsn
    later = _new(db)  # not the session's write
    s.current_epoch(min_lsn=later.lsn)
    assert _min_lsn(rec.last()) == later.lsn
    assert s.lsn == a.lsn  # reads do not move it


def test_a_session_remembers_a_replayed_write(db: Client) -> None:
    key = str(uuid.uuid4())
    first = db.create_assertion("s", "p", 1, author="alice", idempotency_key=key)
    s = db.session()
    again = s.create_assertion("s", "p", 1, author="alice", idempotency_key=key)
    assert again.replayed and s.lsn == first.lsn


def test_a_session_read_waits_for_its_lsn_on_the_server(db: Client) -> None:
    """A session opened with an LSN the server has not reached: its reads are 503
    lsn_not_reached after the server's wait; the plain client's are not."""
    s = db.session(min_lsn=FAR_LSN)
    t0 = time.monotonic()
    with pytest.raises(Unavailable) as e:
        s.current_epoch()
    assert e.value.code == "lsn_not_reached"
    assert WAIT_TIMEOUT_MS / 1000 * 0.9 <= time.monotonic() - t0 < 2.5
    assert s.last_applied_lsn == e.value.applied_lsn
    db.current_epoch()
    # A stale read asked not to wait: the session passes no min_lsn (else 400).
    assert s.current_epoch(consistency="stale").epoch >= 1


def test_closing_a_session_leaves_the_client_open(db: Client) -> None:
    with db.session() as s:
        _new(s)
    s.close()
    assert db.current_epoch().epoch >= 1


def test_async_session(server: ServerProcess) -> None:
    rec = AsyncRecording()

    async def go() -> None:
        async with AsyncClient(server.url, transport=rec, retries_max=0) as db:
            async with db.session() as s:
                assert isinstance(s, AsyncSession)
                a = await s.create_assertion(f"s-{uuid.uuid4()}", "p", 1, author="alice")
                assert s.lsn == a.lsn
                assert (await s.get_assertion(a.id)).id == a.id
                assert _min_lsn(rec.sent[-1]) == a.lsn
                assert s.last_applied_lsn is not None and s.last_applied_lsn > a.lsn
                v = await s.vote(a.id, "bob", 1)
                page = await s.list_assertions(after=a.id - 1, limit=1)
                assert page.items[0].id == a.id and _min_lsn(rec.sent[-1]) == v.lsn
                await db.current_epoch(consistency="stale", max_staleness_ms=60_000)
                assert _min_lsn(rec.sent[-1]) is None
                assert rec.sent[-1].url.params["consistency"] == "stale"
            far = db.session(min_lsn=FAR_LSN)
            with pytest.raises(Unavailable) as e:
                await far.votes(a.id)
            assert e.value.code == "lsn_not_reached"
            assert (await db.current_epoch()).epoch >= 1  # the client is still open

    asyncio.run(asyncio.wait_for(go(), 30))
