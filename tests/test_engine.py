"""Engine behaviour: domain rules, group commit, checkpoints and holds, disk guard."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from stemedb import limits
from stemedb import state as st
from stemedb.engine import Engine, EngineConfig, WriteRequest, body_digest
from stemedb.errors import (
    IdempotencyConflict,
    InsufficientStorage,
    NotFound,
    TooLarge,
    Unavailable,
    WalFsyncFailed,
)
from stemedb.metrics import Metrics
from stemedb.wal import RecordType


def cfg(**kw: Any) -> EngineConfig:
    base: dict[str, Any] = {"segment_size_bytes": 64 * 1024, "disk_reserve_bytes": 0}
    base.update(kw)
    return EngineConfig(**base)


def A(subject: str = "s", **kw: Any) -> WriteRequest:
    a = {"subject": subject, "predicate": "p", "object": kw.pop("object", 1), "author": "a"}
    return WriteRequest(RecordType.ASSERT, [{"assert": a}], **kw)


def V(aid: int, voter: str, value: int) -> WriteRequest:
    return WriteRequest(RecordType.VOTE, [{"vote": {"assertion_id": aid, "voter": voter,
                                                    "value": value}}])


@pytest.fixture
def eng(tmp_path: Path) -> Any:
    e = Engine(tmp_path / "db", cfg())
    e.recover()
    e.start()
    yield e
    e.close()


def test_votes_replace_within_an_epoch_and_seal_results(eng: Engine) -> None:
    ids = [eng.submit(A(f"s{i}")).result().body["id"] for i in range(3)]
    assert eng.submit(V(ids[0], "ann", 1)).result().status == 201
    assert eng.submit(V(ids[0], "ann", -1)).result().status == 200  # replaced
    eng.submit(V(ids[0], "bob", -1)).result()
    eng.submit(V(ids[1], "ann", 1)).result()
    eng.submit(V(ids[2], "ann", 1)).result()
    eng.submit(V(ids[2], "bob", -1)).result()
    got = eng.read(lambda c: st.get_assertion(c, ids[0])).result()
    assert (got["support"], got["dispute"], got["score"]) == (0, 2, -2)
    sealed = eng.submit(WriteRequest(RecordType.SEAL)).result().body
    assert (sealed["sealed"], sealed["opened"]) == (1, 2)
    ep = eng.read(lambda c: st.sealed_epoch(c, 1)).result()
    status = {r["assertion_id"]: r["status"] for r in ep["results"]}
    assert status == {ids[0]: "rejected", ids[1]: "accepted", ids[2]: "contested"}
    assert ep["digest"] == sealed["digest"] and len(ep["digest"]) == 64
    # The open epoch starts with no votes; the sealed epoch keeps its votes.
    assert eng.read(lambda c: st.get_assertion(c, ids[0])).result()["score"] == 0
    old = eng.read(lambda c: st.list_votes(c, ids[0], 1)).result()
    assert [v["voter"] for v in old["votes"]] == ["ann", "bob"] and old["sealed"]
    with pytest.raises(NotFound):
        eng.read(lambda c: st.sealed_epoch(c, 2)).result()  # open, not sealed


def test_digest_is_reproduced_by_replay(tmp_path: Path) -> None:
    e = Engine(tmp_path / "db", cfg())
    e.recover()
    e.start()
    e.set_hold("keep", 0).result()
    a = e.submit(A()).result().body["id"]
    e.submit(V(a, "x", 1)).result()
    digest = e.submit(WriteRequest(RecordType.SEAL)).result().body["digest"]
    e.close()
    for f in (tmp_path / "db").glob("state.sqlite3*"):
        f.unlink()
    e2 = Engine(tmp_path / "db", cfg())
    e2.recover()
    assert e2.read_now(lambda c: st.sealed_epoch(c, 1))["digest"] == digest
    e2.close()


def test_batch_is_atomic(eng: Engine) -> None:
    before = eng.status()["wal"]["end_lsn"]
    ops = [{"assert": {"subject": "b", "predicate": "p", "object": 1, "author": "a"}},
           {"vote": {"assertion_id": 999, "voter": "v", "value": 1}}]
    with pytest.raises(NotFound):
        eng.submit(WriteRequest(RecordType.BATCH, ops)).result()
    assert eng.status()["wal"]["end_lsn"] == before  # nothing reached the WAL
    assert eng.read(lambda c: st.list_assertions(c)).result()["items"] == []
    vote = {"vote": {"assertion_id": 1, "voter": "v", "value": 1}}
    ok = eng.submit(WriteRequest(RecordType.BATCH, [*ops[:1], vote])).result()
    assert ok.status == 201 and [r.get("id") for r in ok.body["results"]] == [1, None]


def test_idempotency_key_returns_first_response_and_conflicts_on_other_body(
        eng: Engine) -> None:
    r1 = eng.submit(A("x", idempotency_key="k1", body_sha256=body_digest(b"x"))).result()
    end = eng.status()["wal"]["end_lsn"]
    r2 = eng.submit(A("x", idempotency_key="k1", body_sha256=body_digest(b"x"))).result()
    assert r2.idempotent_replay and r2.body == r1.body and r2.status == r1.status
    assert eng.status()["wal"]["end_lsn"] == end  # wrote nothing
    with pytest.raises(IdempotencyConflict):
        eng.submit(A("y", idempotency_key="k1", body_sha256=body_digest(b"y"))).result()


def test_idempotency_key_survives_restart(tmp_path: Path) -> None:
    e = Engine(tmp_path / "db", cfg())
    e.recover()
    e.start()
    r1 = e.submit(A("x", idempotency_key="k", body_sha256=body_digest(b"x"))).result()
    e.close()
    e2 = Engine(tmp_path / "db", cfg())
    e2.recover()
    e2.start()
    r2 = e2.submit(A("x", idempotency_key="k", body_sha256=body_digest(b"x"))).result()
    assert r2.idempotent_replay and r2.body == r1.body
    e2.close()


def test_group_commit_batches_concurrent_submitters(tmp_path: Path) -> None:
    m = Metrics()
    e = Engine(tmp_path / "db", cfg(segment_size_bytes=8 << 20), metrics=m)
    e.recover()
    e.start()
    barrier = threading.Barrier(32)

    def one(i: int) -> int:
        barrier.wait()
        return e.submit(A(f"c{i}")).result().body["id"]

    with cf.ThreadPoolExecutor(32) as pool:
        ids = list(pool.map(one, range(32)))
    e.close()
    assert sorted(ids) == list(range(1, 33))
    syncs = m.registry.get_sample_value("stemedb_wal_fsync_latency_seconds_count")
    assert syncs is not None and syncs < 32, "32 concurrent writes need fewer than 32 fsyncs"
    batches = m.registry.get_sample_value("stemedb_group_commit_batch_records_count")
    assert batches is not None and batches < 33


def test_checkpoint_removes_segments_below_the_lowest_hold(tmp_path: Path) -> None:
    e = Engine(tmp_path / "db", cfg(checkpoint_wal_bytes=10**12, replay_budget_seconds=1e9))
    e.recover()
    e.start()
    e.set_hold("archiver", 0).result()
    for i in range(200):
        e.submit(A(f"s{i}", object="x" * 1000)).result()
    wal = tmp_path / "db" / "wal"
    n_before = len(list(wal.glob("segment.*.wal")))
    assert n_before >= 3
    rep = e.checkpoint().result()
    assert rep.removed_segments == [] and rep.lowest_hold == 0  # the hold keeps them all
    mid = e.status()["wal"]["end_lsn"] // 2
    e.set_hold("archiver", mid).result()
    rep = e.checkpoint().result()
    assert rep.removed_segments and all(not (wal / s).exists() for s in rep.removed_segments)
    assert e.holds()["archiver"]["lsn"] == mid
    e.set_hold("archiver", -1).result()  # released
    rep = e.checkpoint().result()
    assert len(list(wal.glob("segment.*.wal"))) == 1
    e.close()
    # A restart after a clean stop replays nothing.
    e2 = Engine(tmp_path / "db", cfg())
    assert e2.recover().records == 0
    assert e2.read_now(lambda c: c.execute("SELECT COUNT(*) FROM assertions").fetchone()[0]) \
        == 200
    e2.close()


def test_checkpoint_triggers_on_replay_budget(tmp_path: Path) -> None:
    m = Metrics()
    e = Engine(tmp_path / "db", cfg(checkpoint_wal_bytes=10**12, replay_budget_seconds=0.0001),
               metrics=m)
    e.recover()
    e.start()
    for i in range(50):
        e.submit(A(f"s{i}", object="x" * 2000)).result()
    e.checkpoint().result()  # a barrier: the writer has run its periodic checks
    assert (m.registry.get_sample_value("stemedb_checkpoint_duration_seconds_count") or 0) >= 2
    assert e.status()["checkpoint"]["replay_debt_bytes"] < 50 * 2000
    e.close()


def test_disk_guard_refuses_writes_but_reads_work(tmp_path: Path) -> None:
    e = Engine(tmp_path / "db", cfg())
    e.recover()
    e.start()
    e.submit(A("before")).result()
    e.config.disk_reserve_bytes = 1 << 62  # more than any disk has
    assert e.committer is not None
    e.committer.forget_disk_probe()  # re-probe now
    with pytest.raises(InsufficientStorage) as info:
        e.submit(A("refused")).result()
    assert info.value.http_status == 507 and "reserve" in info.value.message
    assert e.read(lambda c: st.list_assertions(c)).result()["items"][0]["subject"] == "before"
    assert e.status()["disk"]["refusing_writes"] is True
    e.config.disk_reserve_bytes = 0
    e.committer.forget_disk_probe()
    assert e.submit(A("after")).result().status == 201  # not fenced: it recovers by itself
    e.close()


def test_record_too_large_for_segment_is_refused(eng: Engine) -> None:
    ops = [{"assert": {"subject": "s", "predicate": "p", "object": "x" * 60_000, "author": "a"}}
           for _ in range(3)]
    with pytest.raises(TooLarge):
        eng.submit(WriteRequest(RecordType.BATCH, ops)).result()


def test_submit_before_start_and_after_close(tmp_path: Path) -> None:
    e = Engine(tmp_path / "db", cfg())
    e.recover()
    with pytest.raises(Unavailable):
        e.submit(A())
    e.start()
    e.close()
    with pytest.raises(Unavailable):
        e.submit(A())


@pytest.mark.parametrize("policy", ["interval", "never"])
def test_other_fsync_policies_ack_and_recover(tmp_path: Path, policy: str) -> None:
    e = Engine(tmp_path / "db", cfg(fsync=policy, fsync_interval_ms=5))
    e.recover()
    e.start()
    for i in range(100):
        e.submit(A(f"s{i}")).result()
    e.close()
    e2 = Engine(tmp_path / "db", cfg(fsync=policy))
    e2.recover()
    assert e2.read_now(lambda c: c.execute("SELECT COUNT(*) FROM assertions").fetchone()[0]) \
        == 100
    e2.close()


def test_state_ahead_of_wal_continues_in_a_new_segment(tmp_path: Path) -> None:
    """fsync=never: records acked, then lost from the WAL while SQLite kept them."""
    d = tmp_path / "db"
    e = Engine(d, cfg(fsync="never", checkpoint_wal_bytes=10**12, replay_budget_seconds=1e9))
    e.recover()
    e.start()
    for i in range(10):
        e.submit(A(f"s{i}")).result()
    end = e.status()["wal"]["end_lsn"]
    _crash(e)
    # The last records never reached the disk: zero them in the segment.
    seg = d / "wal" / "segment.001.wal"
    data = bytearray(seg.read_bytes())
    data[end - 300:end] = bytes(300)
    seg.write_bytes(bytes(data))
    e2 = Engine(d, cfg(fsync="never"))
    e2.recover()
    e2.start()
    assert e2.status()["wal"]["segment"] == "segment.002.wal"
    assert e2.submit(A("next")).result().body["id"] == 11
    e2.close()
    e3 = Engine(d, cfg())
    assert e3.recover().records == 0
    e3.close()


def _crash(e: Engine) -> None:
    """Stop an engine the way a crash would leave it: no final checkpoint, nothing
    synced (fsync="never" engines), and no thread of it left running in the test
    process (a writer still probing the disk would trip later tests' checks)."""
    assert e.committer is not None
    e.committer.set_fenced(WalFsyncFailed("simulated crash", segment="-"))  # no checkpoint
    e.close(5.0)


def test_state_ahead_past_a_lost_segment_skips_lsns_and_verify_expects_it(
        tmp_path: Path) -> None:
    """A whole segment file lost after the state applied its records.

    Recovery continues in a segment whose base LSN is past everything the state has
    applied, so the log has a gap; the segment header says why, and `wal verify`
    reports it as a note (exit 0) - but as a fault for a state older than the gap.
    """
    import sqlite3

    from stemedb.tools import verify_dir
    from stemedb.wal import SegmentHeader

    d = tmp_path / "db"
    e = Engine(d, cfg(fsync="never", checkpoint_wal_bytes=10**12, replay_budget_seconds=1e9))
    e.recover()
    e.start()
    e.set_hold("archiver", 0).result()  # keeps segment.001.wal through checkpoints
    i = 0
    while e.status()["wal"]["segment"] != "segment.002.wal":  # bounded: ~300 records
        e.submit(A(f"s{i}", object="y" * 200)).result()
        i += 1
        assert i < 2000
    for k in range(5):
        e.submit(A(f"late{k}")).result()
    applied = e.status()["wal"]["end_lsn"]
    _crash(e)
    seg1, seg2 = d / "wal" / "segment.001.wal", d / "wal" / "segment.002.wal"
    seg2.unlink()  # gone: its records survive only in the state
    seg1_end = SegmentHeader.decode(seg1.read_bytes()[:64]).end_lsn
    assert applied > seg1_end

    e2 = Engine(d, cfg(fsync="never"))
    e2.recover()
    e2.start()
    assert e2.status()["wal"]["segment"] == "segment.002.wal"
    assert e2.submit(A("next")).result().body["id"] == i + 6  # no id reused
    e2.close()
    header = SegmentHeader.decode(seg2.read_bytes()[:64])
    assert header.skips_lsns and header.base_lsn >= applied > seg1_end

    report = verify_dir(str(d))
    assert report.faults == [] and report.exit_code == 0
    assert any(n.startswith("expected gap before segment.002.wal") for n in report.notes)

    # The same WAL under an older state (applied LSN before the gap): a real fault.
    conn = sqlite3.connect(d / "state.sqlite3")
    conn.execute("UPDATE meta SET value=? WHERE key='applied_end_lsn'", (seg1_end - 8,))
    conn.commit()
    conn.close()
    report = verify_dir(str(d))
    assert [(f.kind, f.segment) for f in report.faults] == [("gap", "segment.002.wal")]
    assert "needs records the WAL does not hold" in report.faults[0].reason


def test_config_validation() -> None:
    from stemedb.errors import InvalidInput
    with pytest.raises(InvalidInput):
        EngineConfig(fsync="sometimes").validate()
    with pytest.raises(InvalidInput):
        EngineConfig(segment_size_bytes=100).validate()


def test_lsn_locates_segment_without_scanning(tmp_path: Path) -> None:
    from stemedb.storage import OsFileSystem
    from stemedb.wal import SegmentScanner, load_chain
    e = Engine(tmp_path / "db", cfg())
    e.recover()
    e.start()
    e.set_hold("k", 0).result()
    lsns = [e.submit(A(f"s{i}", object="y" * 900)).result().lsn for i in range(150)]
    e.close()
    chain = load_chain(OsFileSystem(), str(tmp_path / "db" / "wal"))
    for lsn in lsns[::17]:
        s = chain.segments[chain.locate(lsn)]
        assert s.header is not None
        with SegmentScanner(OsFileSystem(), s.path) as sc:
            rec = next(sc.records(lsn - s.header.base_lsn))
        assert rec.lsn == lsn
    assert os.path.basename(chain.segments[0].path) == "segment.001.wal"


@pytest.mark.parametrize("bad", [
    WriteRequest(RecordType.ASSERT, [{"assert": {"subject": "\ud800", "predicate": "p",
                                                 "object": 1, "author": "a"}}]),
    WriteRequest(RecordType.ASSERT, [{"assert": {"subject": "s", "predicate": "p",
                                                 "object": float("nan"), "author": "a"}}]),
    WriteRequest(RecordType.VOTE, [{"vote": {"assertion_id": 1, "voter": "v", "value": 2}}]),
    WriteRequest(RecordType.BATCH, []),
    WriteRequest(RecordType.SEAL, [{"assert": {}}]),
    WriteRequest(RecordType.GENESIS),
    WriteRequest(RecordType.ASSERT, [{"vote": {"assertion_id": 1, "voter": "v", "value": 1}}]),
])
def test_embedded_bad_input_is_refused_before_the_writer(eng: Engine, bad: WriteRequest
                                                         ) -> None:
    from stemedb.errors import InvalidInput
    end = eng.status()["wal"]["end_lsn"]
    with pytest.raises(InvalidInput):
        eng.submit(bad)
    assert eng.fenced is None and eng.status()["wal"]["end_lsn"] == end
    assert eng.submit(A("fine")).result().status == 201


def test_submit_async_settles_a_group_with_one_loop_callback(eng: Engine) -> None:
    """64 coroutines in flight: all acknowledged, ids dense, and the writer woke the
    loop once per group commit, not once per request."""
    import asyncio

    loop_calls: list[int] = []

    async def main() -> list[Any]:
        loop = asyncio.get_running_loop()
        orig = loop.call_soon_threadsafe

        def counting(cb: Any, *args: Any, **kw: Any) -> Any:
            loop_calls.append(len(args[0]) if args else 0)
            return orig(cb, *args, **kw)

        loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
        futs = [eng.submit_async(A(f"s{i}")) for i in range(64)]
        futs[5].cancel()  # a caller that went away: the write still lands
        return await asyncio.gather(*futs, return_exceptions=True)

    results = asyncio.run(main())
    ok = [r for r in results if not isinstance(r, BaseException)]
    assert len(ok) == 63
    assert isinstance(results[5], asyncio.CancelledError)
    assert sum(loop_calls) == 64  # every request settled, the cancelled one included
    assert len(loop_calls) < 64  # grouped: fewer wake-ups than requests
    ids = eng.read_now(lambda c: [r[0] for r in c.execute("SELECT id FROM assertions")])
    assert sorted(ids) == list(range(1, 65))


def test_submit_async_reports_errors_on_the_loop(eng: Engine) -> None:
    import asyncio

    async def main() -> None:
        with pytest.raises(NotFound):
            await eng.submit_async(V(999, "v", 1))

    asyncio.run(main())


def test_rfc3339_matches_strftime_across_second_boundaries() -> None:
    import datetime as dt

    from stemedb.engine import rfc3339

    for unix in (0.0, 0.9999996, 1.0000004, 59.999999, 1764100000.123456, 1764100001.5,
                 1764100000.999999, 4102444800.000001):
        want = dt.datetime.fromtimestamp(round(unix * 1e6) / 1e6, dt.UTC).strftime(
            "%Y-%m-%dT%H:%M:%S.%fZ")
        assert rfc3339(unix) == want, unix


def test_sqlite_wal_is_backfilled_in_the_background(tmp_path: Path) -> None:
    """Pages reach state.sqlite3 between checkpoints, off the writer thread, so the
    checkpoint that blocks writes has little left to copy."""
    import time

    e = Engine(tmp_path / "db", cfg(checkpoint_wal_bytes=10**12, replay_budget_seconds=1e9,
                                    checkpoint_interval_seconds=1e9))
    e.recover()
    e.start()
    try:
        db = tmp_path / "db" / "state.sqlite3"
        size0 = db.stat().st_size
        for i in range(300):
            e.submit(A(f"s{i}")).result()
        deadline = time.monotonic() + 10
        while db.stat().st_size <= size0 and time.monotonic() < deadline:  # bounded
            time.sleep(0.05)
        assert db.stat().st_size > size0, "no page was copied into the database file"
        assert e._backfill is not None and e._backfill.passes >= 1
        assert e._backfill.last_error is None
        assert e.m.registry.get_sample_value(
            "stemedb_sqlite_backfill_duration_seconds_count") >= 1
        assert e.checkpoint().result(10).checkpoint_lsn > 0
    finally:
        e.close()


def test_checkpoints_never_collide_with_a_backfill_pass(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite runs one checkpoint at a time and answers a second with SQLITE_BUSY at
    once; the engine's checkpoint waits for a backfill pass instead of failing."""
    import threading

    monkeypatch.setattr(limits, "sqlite_backfill_interval_seconds", 0.0005)
    monkeypatch.setattr(limits, "sqlite_backfill_wal_bytes", 1)
    e = Engine(tmp_path / "db", cfg(checkpoint_wal_bytes=10**12, replay_budget_seconds=1e9,
                                    checkpoint_interval_seconds=1e9))
    e.recover()
    e.start()
    stop = threading.Event()

    def write() -> None:
        i = 0
        while not stop.is_set():  # bounded by the test's checkpoint loop below
            e.submit(WriteRequest(RecordType.BATCH, [{"assert": A(f"s{i}-{j}").ops[0][
                "assert"]} for j in range(50)])).result(10)
            i += 1

    t = threading.Thread(target=write, daemon=True)
    t.start()
    try:
        for _ in range(60):
            e.checkpoint().result(10)  # raised "checkpoint incomplete (busy=1)" before
        assert e._backfill is not None and e._backfill.passes >= 5
    finally:
        stop.set()
        t.join(10)
        e.close()


def test_reader_threads_come_from_config(tmp_path: Path) -> None:
    from stemedb.config import load_config

    assert load_config(None, env={}).engine_config().reader_threads == limits.reader_threads
    three = load_config(None, env={"STEMEDB_SERVER_READER_THREADS": "3"}).engine_config()
    e = Engine(tmp_path / "db", cfg(reader_threads=three.reader_threads))
    e.recover()
    e.start()
    try:
        names = {t.name for t in threading.enumerate() if t.name.startswith("stemedb-reader")}
        assert len(names) == 3
        assert e.read(lambda c: c.execute("SELECT 1").fetchone()[0]).result() == 1
    finally:
        e.close()


def test_page_cache_bytes_come_from_config(tmp_path: Path) -> None:
    """[state] page_cache_bytes bounds every connection's page cache (PRAGMA
    cache_size in KiB, negative), the writer's and the readers'."""
    from stemedb.config import load_config

    assert (load_config(None, env={}).engine_config().page_cache_bytes
            == limits.state_page_cache_bytes_default)
    small = load_config(None, env={"STEMEDB_STATE_PAGE_CACHE_BYTES": str(8 << 20)}
                        ).engine_config()
    assert small.page_cache_bytes == 8 << 20
    e = Engine(tmp_path / "db", cfg(page_cache_bytes=small.page_cache_bytes))
    e.recover()
    e.start()
    try:
        assert e.read(lambda c: c.execute("PRAGMA cache_size").fetchone()[0]).result() \
            == -8 * 1024
        assert e.applier is not None
        assert e.applier.conn.execute("PRAGMA cache_size").fetchone()[0] == -8 * 1024
    finally:
        e.close()


def test_backfill_can_be_turned_off_by_config(tmp_path: Path) -> None:
    from stemedb.config import load_config

    cfg_on = load_config(None, env={}).engine_config()
    cfg_off = load_config(None, env={"STEMEDB_CHECKPOINT_BACKFILL": "false"}).engine_config()
    assert cfg_on.sqlite_backfill is True and cfg_off.sqlite_backfill is False
    e = Engine(tmp_path / "db", cfg(sqlite_backfill=False))
    e.recover()
    e.start()
    try:
        import time

        for i in range(200):
            e.submit(A(f"s{i}")).result()
        time.sleep(0.3)  # several backfill intervals
        assert e._backfill is None
        assert not e.m.registry.get_sample_value(
            "stemedb_sqlite_backfill_duration_seconds_count")
    finally:
        e.close()


def test_a_lone_writer_commits_on_its_own_thread(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """With the writer idle, Engine.write() commits on the calling thread: no hand-off
    to the writer and back.  Same durability: the fdatasync is that thread's.  submit()
    still only queues, so a thread that submits many before waiting gets them
    group-committed."""
    from stemedb import storage
    syncing: list[str] = []
    real_sync = storage.OsFile.sync

    def sync(self: storage.OsFile) -> None:
        syncing.append(threading.current_thread().name)
        real_sync(self)

    monkeypatch.setattr(storage.OsFile, "sync", sync)
    m = Metrics()
    e = Engine(tmp_path / "db", cfg(), metrics=m)
    e.recover()
    e.start()
    syncing.clear()
    me = threading.current_thread().name
    ids = [e.write(A(f"lone{i}")).body["id"] for i in range(20)]
    assert ids == list(range(1, 21))
    assert (m.registry.get_sample_value("stemedb_group_commit_by_caller_total") or 0) >= 15
    assert syncing.count(me) >= 15, syncing  # the WAL fdatasyncs ran here
    # A read that waits on the read index sees every acknowledged write.
    e.read_index.wait(e.read_index.target_for(None), 5.0)
    assert e.read_now(lambda c: c.execute("SELECT count(*) FROM assertions").fetchone()[0]) \
        == 20
    caller = m.registry.get_sample_value("stemedb_group_commit_by_caller_total")
    assert e.write(A("with a timeout"), timeout_seconds=10).body["id"] == 21  # the writer's
    futures = [e.submit(A(f"queued{i}")) for i in range(50)]
    assert [f.result().body["id"] for f in futures] == list(range(22, 72))
    assert m.registry.get_sample_value("stemedb_group_commit_by_caller_total") == caller
    e.close()
    e2 = Engine(tmp_path / "db", cfg())
    assert e2.recover().records == 0  # the clean close checkpointed the caller's commits
    assert e2.read_now(lambda c: c.execute("SELECT count(*) FROM assertions").fetchone()[0]) \
        == 71
    e2.close()


def test_write_refuses_to_wait_on_the_disk_in_a_coroutine(eng: Engine) -> None:
    async def main() -> None:
        eng.write(A("in a coroutine"))

    with pytest.raises(RuntimeError, match="submit_async"):
        asyncio.run(main())
    assert eng.read_now(lambda c: c.execute("SELECT count(*) FROM assertions").fetchone()[0]) \
        == 0


def test_close_while_callers_commit_settles_every_write(tmp_path: Path) -> None:
    """Callers committing on their own threads while close() runs: every write gets an
    answer (acknowledged, or refused as stopping), none hangs, and every acknowledged
    one is there after a restart."""
    e = Engine(tmp_path / "db", cfg(segment_size_bytes=1 << 20))
    e.recover()
    e.start()
    acked: list[int] = []
    refused: list[str] = []
    lock = threading.Lock()
    go = threading.Event()

    def writer(t: int) -> None:
        go.wait()
        for i in range(10_000):  # bounded; close() ends it much sooner
            try:
                res = e.write(A(f"t{t}-{i}"))  # no timeout: a caller may commit it
            except Unavailable as exc:
                with lock:
                    refused.append(exc.code)
                return
            with lock:
                acked.append(res.body["id"])

    threads = [threading.Thread(target=writer, args=(t,), daemon=True) for t in range(4)]
    for t in threads:
        t.start()
    go.set()
    threading.Event().wait(0.3)
    e.close()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads), "a write never got an answer"
    assert acked and len(refused) == 4
    e2 = Engine(tmp_path / "db", cfg(segment_size_bytes=1 << 20))
    e2.recover()
    present = {r[0] for r in e2.read_now(
        lambda c: c.execute("SELECT id FROM assertions").fetchall())}
    e2.close()
    assert set(acked) <= present


def test_a_caller_that_finds_the_writer_stopped_is_refused(tmp_path: Path) -> None:
    """The narrow race of the test above, made certain: a caller passes the accepting
    check, the engine closes, then the caller takes the commit lock.  It must be told
    the engine is stopping, not commit into a closed WAL and database."""
    e = Engine(tmp_path / "db", cfg())
    e.recover()
    e.start()
    assert e.committer is not None
    committer = e.committer
    real = committer.queue
    entered, closed = threading.Event(), threading.Event()

    class Gate:
        """The queue, but the caller's look at it waits until the engine is closed."""

        def empty(self) -> bool:
            entered.set()
            closed.wait(10)
            return real.empty()

    futures: list[cf.Future[Any]] = []
    committer.queue = Gate()  # type: ignore[assignment]
    t = threading.Thread(target=lambda: futures.append(e._enqueue(A("late"), None,
                                                                  commit_here=True).future))
    t.start()
    assert entered.wait(10)
    committer.queue = real
    e.close()
    closed.set()
    t.join(10)
    with pytest.raises(Unavailable):
        futures[0].result(timeout=5)
