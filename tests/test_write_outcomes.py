"""What a writer is told is what the WAL replays: never "written" for a write that failed,
never a bare exception for a write that is durable.

Faults come from :class:`stemedb.testing.FaultyFileSystem` (the real file system, whose
WAL fdatasync fails with EIO or waits when told) and from the state's COMMIT failing
after the fdatasync.  After each fault the data directory is opened again and what
replays is compared with what the callers were told.
"""

from __future__ import annotations

import concurrent.futures as cf
import errno
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from stemedb import state as st
from stemedb.engine import Engine, EngineConfig, WriteRequest, WriteResult, body_digest
from stemedb.errors import (
    DataDirInUse,
    IdempotencyConflict,
    InvalidInput,
    StateApplyFailed,
    WalFsyncFailed,
)
from stemedb.metrics import Metrics
from stemedb.testing import FaultyFileSystem
from stemedb.wal import RecordType

WAIT_SECONDS = 10.0  # every wait in this file gives up after this


def _cfg() -> EngineConfig:
    # One segment holds everything these tests write (FaultyFileSystem's rule).
    return EngineConfig(segment_size_bytes=1 << 20, disk_reserve_bytes=0)


def _assert(subject: str, key: str | None = None) -> WriteRequest:
    req = WriteRequest(RecordType.ASSERT, [{"assert": {
        "subject": subject, "predicate": "p", "object": 1, "author": "a"}}])
    if key is not None:
        req.idempotency_key = key
        req.body_sha256 = body_digest(subject.encode())
    return req


def _open(path: Path, fs: FaultyFileSystem | None = None, **kw: Any) -> Engine:
    eng = Engine(path, _cfg(), fs=fs, **kw)
    eng.recover()
    eng.start()
    return eng


def _subjects(path: Path) -> list[str]:
    """What a fresh open of the directory replays."""
    eng = Engine(path, _cfg())
    eng.recover()
    try:
        return [r[0] for r in eng.read_now(
            lambda c: c.execute("SELECT subject FROM assertions ORDER BY id").fetchall())]
    finally:
        eng.close()


def _outcome(fut: cf.Future[WriteResult]) -> WriteResult | BaseException:
    try:
        return fut.result(WAIT_SECONDS)
    except Exception as exc:
        return exc


def _same_group(eng: Engine, fs: FaultyFileSystem, requests: list[WriteRequest]
                ) -> list[cf.Future[WriteResult]]:
    """Submit ``requests`` so that they share one group commit: the writer is held in
    the fdatasync of a first write while they queue, then released."""
    fs.hold_syncs()
    first = eng.submit(_assert("before"))
    assert fs.sync_waiting.wait(WAIT_SECONDS)
    futures = [eng.submit(r) for r in requests]
    return [first, *futures]


def test_a_retry_shares_the_fate_of_an_original_whose_fdatasync_fails(
        tmp_path: Path) -> None:
    """The original and its retry are in one group; that group's fdatasync fails."""
    fs = FaultyFileSystem()
    eng = _open(tmp_path / "db", fs)
    eng.write(_assert("durable"))
    fs.hold_syncs()
    first = eng.submit(_assert("before"))
    assert fs.sync_waiting.wait(WAIT_SECONDS)
    # Held in the first group's sync; these three queue for the next group.
    queued = [eng.submit(_assert("x", "k1")), eng.submit(_assert("x", "k1")),
              eng.submit(_assert("other body", "k1"))]
    # The held sync succeeds; the next one, the group of the three, fails.
    fs.fail_next_sync(errno.EIO, after=1)
    fs.release_syncs()
    assert isinstance(_outcome(first), WriteResult)
    original, retry, other = (_outcome(f) for f in queued)
    eng.close()
    assert isinstance(original, WalFsyncFailed)
    assert isinstance(retry, WalFsyncFailed), f"a retry of a failed write got {retry!r}"
    assert isinstance(other, WalFsyncFailed), other
    assert _subjects(tmp_path / "db") == ["durable", "before"]


def test_a_retry_in_the_group_of_its_durable_original_gets_its_answer(
        tmp_path: Path) -> None:
    fs = FaultyFileSystem()
    eng = _open(tmp_path / "db", fs)
    futures = _same_group(eng, fs, [_assert("x", "k1"), _assert("x", "k1"),
                                    _assert("other body", "k1")])
    fs.release_syncs()
    _, original, retry, other = (_outcome(f) for f in futures)
    eng.close()
    assert isinstance(original, WriteResult) and not original.idempotent_replay
    assert isinstance(retry, WriteResult) and retry.idempotent_replay
    assert retry.body == original.body and retry.lsn == original.lsn
    assert isinstance(other, IdempotencyConflict)
    assert _subjects(tmp_path / "db") == ["before", "x"]
    # And after a restart the key still answers with the first response.
    eng2 = _open(tmp_path / "db")
    again = eng2.write(_assert("x", "k1"))
    eng2.close()
    assert again.idempotent_replay and again.body == original.body


@pytest.mark.parametrize("prevalidated", [False, True])
@pytest.mark.parametrize("body_sha256", [None, "", "ab", "AB" * 32, "zz" * 32])
def test_a_key_without_a_body_hash_is_refused_and_writes_nothing(
        tmp_path: Path, prevalidated: bool, body_sha256: str | None) -> None:
    eng = _open(tmp_path / "db")
    before = eng.status()["wal"]["end_lsn"]
    req = _assert("x")
    req.idempotency_key, req.body_sha256, req.prevalidated = "k", body_sha256, prevalidated
    with pytest.raises(InvalidInput) as info:
        eng.submit(req)
    assert info.value.code == "invalid_idempotency_key"
    assert eng.status()["wal"]["end_lsn"] == before
    eng.close()
    assert _subjects(tmp_path / "db") == []


def test_a_read_sees_one_snapshot_while_writes_commit(tmp_path: Path) -> None:
    """A write commits between two statements of one read: the read sees neither."""
    eng = _open(tmp_path / "db")
    aid = eng.write(_assert("x")).body["id"]

    def read(conn: sqlite3.Connection) -> tuple[int, int]:
        first = conn.execute("SELECT count(*) FROM votes").fetchone()[0]
        eng.submit(WriteRequest(RecordType.VOTE, [{"vote": {
            "assertion_id": aid, "voter": "v", "value": 1}}])).result(WAIT_SECONDS)
        second = conn.execute("SELECT count(*) FROM votes").fetchone()[0]
        return first, second

    try:
        assert eng.read(read).result(WAIT_SECONDS) == (0, 0)
        assert eng.read(read).result(WAIT_SECONDS)[0] == 1  # the next read sees it
    finally:
        eng.close()


def _vote(aid: int, voter: str) -> WriteRequest:
    return WriteRequest(RecordType.VOTE, [{"vote": {
        "assertion_id": aid, "voter": voter, "value": 1}}])


def test_a_state_failure_under_durable_writes_says_they_are_durable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The applier's COMMIT fails under durable records: a write acknowledged at
    durability keeps its 201, a vote (answered from the state) is told its write is
    durable, later writes are fenced, and a restart applies both."""
    eng = _open(tmp_path / "db")
    eng.write(_assert("a"))
    real_commit = st.commit

    def failing(conn: sqlite3.Connection) -> None:
        monkeypatch.setattr(st, "commit", real_commit)
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(st, "commit", failing)
    with pytest.raises(StateApplyFailed) as info:
        eng.write(_vote(1, "v"))
    assert info.value.durable and info.value.lsn is not None
    assert "durable" in info.value.message and info.value.http_status == 500
    with pytest.raises(StateApplyFailed) as later:  # fenced: nothing more is written
        eng.write(_assert("c"))
    assert later.value.lsn is None and not later.value.durable
    assert eng.status()["fsync"]["fenced"]
    assert eng.status()["state"]["applier_error"]
    eng.close()
    assert _subjects(tmp_path / "db") == ["a"]
    eng2 = _open(tmp_path / "db")
    votes = eng2.read_now(lambda c: c.execute("SELECT voter FROM votes").fetchall())
    eng2.close()
    assert votes == [("v",)]  # the vote replays, as its caller was told


def test_a_state_failure_before_the_append_writes_nothing_and_goes_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The committer cannot ask the state for an Idempotency-Key: that write is
    refused, nothing is written, and the next write goes on."""
    eng = _open(tmp_path / "db")
    eng.write(_assert("a"))
    real = st.lookup_idempotency

    def failing(*args: Any) -> Any:
        monkeypatch.setattr(st, "lookup_idempotency", real)
        raise sqlite3.OperationalError("database disk image is malformed")

    monkeypatch.setattr(st, "lookup_idempotency", failing)
    with pytest.raises(StateApplyFailed) as info:
        eng.write(_assert("b", "key-b"))
    assert info.value.lsn is None and "nothing was written" in info.value.message
    c = eng.write(_assert("c"))
    assert not eng.status()["fsync"]["fenced"]
    eng.close()
    assert _subjects(tmp_path / "db") == ["a", "c"]
    eng2 = _open(tmp_path / "db")
    assert eng2.read_now(lambda conn: st.get_assertion(conn, 2))["lsn"] == c.lsn
    eng2.close()


def test_a_deleted_hold_leaves_no_metric_series(tmp_path: Path) -> None:
    reg = CollectorRegistry()
    eng = Engine(tmp_path / "db", _cfg(), metrics=Metrics(registry=reg))
    eng.recover()
    eng.start()
    try:
        eng.set_hold("archiver", 0).result(WAIT_SECONDS)
        eng.refresh_gauges()
        names = ("stemedb_wal_hold_lsn", "stemedb_wal_hold_lag_bytes",
                 "stemedb_wal_hold_last_advance_timestamp_seconds")

        def series() -> dict[str, Any]:
            return {n: reg.get_sample_value(n, {"hold": "archiver"}) for n in names}

        assert all(v is not None for v in series().values()), series()
        eng.set_hold("archiver", -1).result(WAIT_SECONDS)
        eng.refresh_gauges()
        assert all(v is None for v in series().values()), series()
    finally:
        eng.close()


def test_close_leaves_a_stuck_writer_its_files_and_the_lock(tmp_path: Path) -> None:
    """close() gives up on a writer stuck in fdatasync; the write still completes, into
    an open WAL and state, and the directory stays locked until the writer ends."""
    fs = FaultyFileSystem()
    eng = _open(tmp_path / "db", fs)
    fs.hold_syncs()
    fut = eng.submit(_assert("stuck"))
    assert fs.sync_waiting.wait(WAIT_SECONDS)
    eng.close(timeout_seconds=0.2)
    with pytest.raises(DataDirInUse):
        Engine(tmp_path / "db", _cfg()).recover()
    fs.release_syncs()
    res = fut.result(WAIT_SECONDS)
    assert res.status == 201
    deadline = time.monotonic() + WAIT_SECONDS
    while True:  # bounded: until the writer has ended and unlocked, or WAIT_SECONDS
        try:
            assert _subjects(tmp_path / "db") == ["stuck"]
            break
        except DataDirInUse:
            assert time.monotonic() < deadline, "the writer never released the directory"
            threading.Event().wait(0.05)
