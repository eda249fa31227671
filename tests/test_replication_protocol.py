"""The pieces of replication that need no process: terms, forks, frames, TERM records,
and a replica's engine writing its leader's records at the leader's LSNs."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as hs

from stemedb import state as st
from stemedb.engine import Engine, EngineConfig, WriteRequest
from stemedb.errors import InvalidInput
from stemedb.replication import StreamError, Term, divergence, split_frames, term_at
from stemedb.wal import RecordType, encode_frame

T1, T2, T3 = Term(5, 100, "a"), Term(9, 400, "b"), Term(12, 900, "c")


def test_term_at() -> None:
    h = [T1, T2, T3]
    assert term_at(h, 99) == 0
    assert term_at(h, 100) == 5 and term_at(h, 399) == 5
    assert term_at(h, 400) == 9 and term_at(h, 10**9) == 12
    assert term_at([], 5) == 0


def test_divergence_cases() -> None:
    # A prefix of the leader's log, however far behind: no fork.
    assert divergence([T1], [T1, T2], 300, 1000) is None
    assert divergence([T1, T2], [T1, T2], 700, 1000) is None
    # Past the point where the leader's next term began: forked there.
    assert divergence([T1], [T1, T2], 500, 1000) == 400
    # A term the leader never saw: forked where it began.
    assert divergence([T1, Term(7, 300, "x")], [T1, T2], 350, 1000) == 300
    # Same terms, but records past the leader's end (it lost an unsynced tail).
    assert divergence([T1], [T1], 800, 600) == 600
    # Different start of the same term: the earlier of the two.
    assert divergence([T1, Term(9, 450, "b")], [T1, T2], 900, 1000) == 400


@given(hs.lists(hs.integers(min_value=1, max_value=50), min_size=1, max_size=6,
                unique=True),
       hs.integers(min_value=0, max_value=6), hs.integers(min_value=0, max_value=5000))
def test_a_prefix_never_diverges(starts: list[int], keep: int, extra: int) -> None:
    leader = [Term(i + 1, s * 100, "n") for i, s in enumerate(sorted(starts))]
    mine = leader[:keep]
    end_of_mine = (leader[keep].start_lsn if keep < len(leader) else 10**6)
    local_end = min(end_of_mine, (mine[-1].start_lsn if mine else 0) + extra)
    assert divergence(mine, leader, local_end, 10**6) is None


def test_split_frames_checks_every_frame() -> None:
    a = encode_frame(RecordType.ASSERT, 64, b'{"t":"x"}')
    b = encode_frame(RecordType.TERM, 64 + len(a), b'{"t":"x","term":3,"node":"n"}')
    frames = split_frames(a + b, 64)
    assert [(t, lsn) for t, lsn, _ in frames] == [(1, 64), (6, 64 + len(a))]
    bad = bytearray(a + b)
    bad[30] ^= 1
    with pytest.raises(StreamError):
        split_frames(bytes(bad), 64)
    with pytest.raises(StreamError):  # out of order
        split_frames(b + a, 64)
    with pytest.raises(StreamError):  # before what was asked for
        split_frames(a, 128)


def test_term_records_only_grow(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
    conn.executescript(st.SCHEMA)
    rec = st.RECORD_DECODER.decode(b'{"t":"2026-01-01T00:00:00Z","term":7,"node":"a"}')
    assert st.apply_record(conn, RecordType.TERM, rec, 500)[0] == 201
    assert st.list_terms(conn) == [(7, 500, "a")]
    for bad in (b'{"t":"2026-01-01T00:00:00Z","term":7,"node":"b"}',
                b'{"t":"2026-01-01T00:00:00Z","term":6,"node":"b"}',
                b'{"t":"2026-01-01T00:00:00Z","node":"b"}'):
        with pytest.raises(InvalidInput):
            st.apply_record(conn, RecordType.TERM, st.RECORD_DECODER.decode(bad), 900)


def test_clients_cannot_write_term_records(tmp_path: Path) -> None:
    eng = Engine(tmp_path / "d", EngineConfig(segment_size_bytes=64 * 1024))
    eng.recover()
    eng.start()
    try:
        with pytest.raises(InvalidInput):
            eng.write(WriteRequest(RecordType.TERM, [{"term": 1, "node": "x"}]))
    finally:
        eng.close()


def _assert(i: int) -> WriteRequest:
    return WriteRequest(RecordType.ASSERT, [{"assert": {
        "subject": f"s{i}", "predicate": "p", "object": "x" * 3000, "author": "a"}}])


def test_a_replica_engine_writes_the_leaders_records_at_its_lsns(tmp_path: Path) -> None:
    """Records across several segments, replicated, give the same log and state; the
    replica, promoted, continues where the leader stopped."""
    cfg = EngineConfig(segment_size_bytes=64 * 1024)
    leader = Engine(tmp_path / "leader", cfg)
    leader.recover()
    leader.start()
    leader.write_term(3, "leader", 10)
    for i in range(60):  # ~3 segments
        leader.write(_assert(i))
    from stemedb.archive import WalSource
    from stemedb.storage import OsFileSystem

    chunk = WalSource(OsFileSystem(), leader.wal_dir).read(
        64, leader.read_index.durable_lsn, 10 * 1024 * 1024)
    leader_state = leader.read_now(st.dump)
    leader_end = leader.read_index.durable_lsn
    leader.close()

    replica = Engine(tmp_path / "replica", EngineConfig(segment_size_bytes=64 * 1024))
    # An empty log: the replica's first segment starts where the leader's did.
    replica.recover()
    replica.start()
    replica.set_follower(True)
    try:
        with pytest.raises(Exception, match="replica"):
            replica.write(_assert(0))
        # The replica created its own genesis (a node of its own); a real replica is
        # seeded by a snapshot instead, so replicate the rest only.
        frames = [f for f in split_frames(chunk.data, 64) if f[1] >= replica.read_index
                  .durable_lsn]
        assert frames and frames[0][0] == RecordType.TERM
        end = replica.replicate(frames).result(30)
        assert end == leader_end
        replica.read_index.wait(end, 10)
        assert replica.read_now(st.dump)["assertions"] == leader_state["assertions"]
        assert replica.terms() == [(3, frames[0][1], "leader")]
        replica.promote(10)
        with pytest.raises(Exception, match="replicated records are refused"):
            replica.replicate(frames[-1:]).result(10)
        lsn = replica.write_term(4, "replica", 10)
        assert lsn == leader_end
        r = replica.write(_assert(99))
        assert r.body["id"] == 61 and r.lsn > lsn
    finally:
        replica.close()
