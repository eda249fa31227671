"""The write path of the log-is-the-database design: acknowledged at durability, the
state behind it, and what a caller is told always what replays.

- A group commit never spans two segments, so whichever fdatasync fails, the callers
  told "failed" are absent after a restart and those told "written" are present.
- The committer answers an assertion from its admission view, as the applier would.
- Past ``max_apply_lag_bytes`` the committer waits for the applier: the lag stays
  bounded while writes go on.
- Idempotency keys expire by the time of the records that follow them, so a fresh
  replay of the WAL gives the live state table by table, keys included.
"""

from __future__ import annotations

import concurrent.futures as cf
import errno
import shutil
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from stemedb import limits
from stemedb.engine import Engine, EngineConfig, WriteRequest, body_digest
from stemedb.errors import WalFsyncFailed
from stemedb.metrics import Metrics
from stemedb.testing import FaultyFileSystem
from stemedb.wal import RecordType

WAIT_SECONDS = 10.0
SEGMENT_BYTES = 64 * 1024
TABLES = {"assertions": "id", "votes": "assertion_id, epoch, voter", "epochs": "n",
          "results": "epoch, assertion_id", "idempotency": "key"}


def _assert(subject: str, pad: int = 0, key: str | None = None) -> WriteRequest:
    req = WriteRequest(RecordType.ASSERT, [{"assert": {
        "subject": subject, "predicate": "p", "object": "x" * pad, "author": "a"}}])
    if key is not None:
        req.idempotency_key, req.body_sha256 = key, body_digest(subject.encode())
    return req


def _subjects(path: Path) -> set[str]:
    eng = Engine(path, EngineConfig(segment_size_bytes=SEGMENT_BYTES, disk_reserve_bytes=0))
    eng.recover()
    try:
        return {r[0] for r in eng.read_now(
            lambda c: c.execute("SELECT subject FROM assertions").fetchall())}
    finally:
        eng.close()


@pytest.mark.parametrize("good_syncs_before_the_fault", [0, 1, 2])
def test_what_a_caller_is_told_is_what_replays_across_a_rotation(
        tmp_path: Path, good_syncs_before_the_fault: int) -> None:
    fs = FaultyFileSystem()
    cfg = EngineConfig(segment_size_bytes=SEGMENT_BYTES, disk_reserve_bytes=0,
                       checkpoint_wal_bytes=10**12, replay_budget_seconds=1e9)
    eng = Engine(tmp_path / "db", cfg, fs=fs)
    eng.recover()
    eng.start()
    i = 0
    while eng.status()["wal"]["end_lsn"] < SEGMENT_BYTES - 6 * 1024:  # bounded: 64 KiB
        eng.write(_assert(f"fill{i}", 900))
        i += 1
    # The writer waits in the sync of "before" while 16 writes of ~1 KiB queue: they
    # do not fit in what is left of segment 1.
    fs.hold_syncs()
    before = eng.submit(_assert("before"))
    assert fs.sync_waiting.wait(WAIT_SECONDS)
    queued = [eng.submit(_assert(f"q{k}", 900)) for k in range(16)]
    fs.fail_next_sync(errno.EIO, after=good_syncs_before_the_fault)
    fs.release_syncs()
    told: dict[str, bool] = {}
    for name, fut in [("before", before)] + [(f"q{k}", f) for k, f in enumerate(queued)]:
        try:
            fut.result(WAIT_SECONDS)
            told[name] = True
        except WalFsyncFailed:
            told[name] = False
    eng.close()
    assert not all(told.values()), "the fault never hit a group"
    present = _subjects(tmp_path / "db")
    assert {n for n, ok in told.items() if ok} == {n for n in told if n in present}, told


def test_an_assertion_is_answered_as_the_applier_answers_it(tmp_path: Path) -> None:
    eng = Engine(tmp_path / "db", EngineConfig(disk_reserve_bytes=0))
    eng.recover()
    eng.start()
    try:
        results = [eng.write(_assert(f"s{k}")) for k in range(5)]
        batch = eng.write(WriteRequest(RecordType.BATCH, [
            {"assert": {"subject": "b", "predicate": "p", "object": 1, "author": "a"}}] * 3))
        eng.read_index.wait(eng.read_index.target_for(None), WAIT_SECONDS)
        for r in results:
            got = eng.read_now(lambda c, aid=r.body["id"]: c.execute(
                "SELECT id, lsn, epoch, created_at FROM assertions WHERE id=?",
                (aid,)).fetchone())
            assert got == (r.body["id"], r.lsn, r.body["epoch"], r.body["created_at"])
        assert [x["id"] for x in batch.body["results"]] == [6, 7, 8]
    finally:
        eng.close()


def test_the_committer_waits_for_a_slow_applier_and_the_lag_stays_bounded(
        tmp_path: Path) -> None:
    m = Metrics()
    max_lag = limits.max_apply_lag_bytes_min
    eng = Engine(tmp_path / "db", EngineConfig(disk_reserve_bytes=0, max_apply_lag_bytes=max_lag,
                                               batch_bytes_max=32 * 1024), metrics=m)
    eng.recover()
    eng.start()
    assert eng.applier is not None
    eng.applier.delay_seconds = 0.02  # a slow disk under the state
    lags: list[int] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():  # bounded by the writes below
            lags.append(eng.read_index.lag_bytes())
            done.wait(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    with cf.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda k: eng.write(_assert(f"s{k}", 500)), range(400)))
    done.set()
    sampler.join(WAIT_SECONDS)
    try:
        assert len(results) == 400
        waited = m.registry.get_sample_value(
            "stemedb_state_apply_backpressure_seconds_total") or 0
        assert waited > 0, "the committer never waited"
        # One group may land past the bound before the committer waits again.
        assert max(lags) <= max_lag + 32 * 1024 + 8 * 1024, max(lags)
        assert eng.status()["state"]["max_apply_lag_bytes"] == max_lag
    finally:
        eng.applier.delay_seconds = 0
        eng.close()


class _Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _tables(db: Path) -> dict[str, list[tuple[Any, ...]]]:
    conn = sqlite3.connect(db)
    try:
        return {t: conn.execute(f"SELECT * FROM {t} ORDER BY {o}").fetchall()
                for t, o in TABLES.items()}
    finally:
        conn.close()


def test_keys_expire_by_record_time_and_a_fresh_replay_equals_the_live_state(
        tmp_path: Path) -> None:
    clock = _Clock(1_764_097_200.0)
    cfg = EngineConfig(disk_reserve_bytes=0, idempotency_ttl_seconds=60,
                       checkpoint_wal_bytes=10**12, replay_budget_seconds=1e9,
                       checkpoint_interval_seconds=1e9)
    live = tmp_path / "live"
    eng = Engine(live, cfg, clock=clock)
    eng.recover()
    eng.start()
    eng.set_hold("test", 0).result()  # every segment stays for the replay below
    first = eng.write(_assert("k-old", key="old"))
    eng.write(WriteRequest(RecordType.VOTE, [{"vote": {
        "assertion_id": 1, "voter": "v", "value": 1}}]))
    assert eng.write(_assert("k-old", key="old")).idempotent_replay  # within the TTL
    clock.t += 3600  # an hour later: "old" has expired by the records that follow
    eng.write(_assert("k-new", key="new"))
    again = eng.write(_assert("k-old", key="old"))
    assert not again.idempotent_replay and again.body["id"] != first.body["id"]
    clock.t -= 7200  # the wall clock goes back; record times do not
    eng.write(_assert("after the clock jump", key="late"))
    eng.write(WriteRequest(RecordType.SEAL))
    eng.close()
    replayed = tmp_path / "replayed"
    replayed.mkdir()
    shutil.copytree(live / "wal", replayed / "wal")
    eng2 = Engine(replayed, cfg, clock=clock)
    eng2.recover()
    eng2.close()
    a, b = _tables(live / "state.sqlite3"), _tables(replayed / "state.sqlite3")
    for table in TABLES:
        assert a[table] == b[table], table
    assert {r[0] for r in a["idempotency"]} == {"new", "old", "late"}
    times = [r[-1] for r in a["idempotency"]]
    assert max(times) - min(times) <= 3600 + 1  # "late" was stamped after "new"


def test_holds_and_replay_speed_live_beside_the_state_not_in_it(tmp_path: Path) -> None:
    cfg = EngineConfig(disk_reserve_bytes=0)
    eng = Engine(tmp_path / "db", cfg)
    eng.recover()
    eng.start()
    eng.set_hold("archiver", 123).result()
    eng.close()
    conn = sqlite3.connect(tmp_path / "db" / "state.sqlite3")
    try:
        assert conn.execute("SELECT count(*) FROM holds").fetchone()[0] == 0
    finally:
        conn.close()
    eng2 = Engine(tmp_path / "db", cfg)
    eng2.recover()
    try:
        assert eng2.holds()["archiver"]["lsn"] == 123
    finally:
        eng2.close()
    assert (tmp_path / "db" / "node.json").exists()
