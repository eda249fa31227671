"""Replay's shortcuts leave exactly the state that apply_record alone builds.

Replay applies one-assertion ASSERT records through an inlined copy of
apply_record's assert branch, writes idempotency rows in one statement per group,
inserts assertion rows many to a statement, parses timestamps once per second, and
for a large replay into a small table drops the assertion indexes and builds them
again at the end.  Here a mixed workload (assertions with every optional field,
votes, refused votes, batches, seals, idempotency keys and retries) is written, its
WAL replayed into an empty state, and every table compared with a reference state
that applied each record with :func:`stemedb.state.apply_record` in a transaction of
its own, and with the state the write path built.  A replay killed with SIGKILL
between two of its transactions, with the indexes dropped, must still recover to the
same state, with its indexes.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from stemedb import limits
from stemedb import state as st
from stemedb.engine import Engine, EngineConfig, WriteRequest, body_digest, parse_rfc3339
from stemedb.errors import CorruptionError
from stemedb.storage import OsFileSystem
from stemedb.wal import RecordType, SegmentScanner, encode_frame, load_chain, unpadded_len

CHECKPOINTS_OFF: dict[str, Any] = {"checkpoint_wal_bytes": 10**15,
                                   "replay_budget_seconds": 1e9,
                                   "checkpoint_interval_seconds": 1e9}
TABLES = {  # every table of the ledger, in a total order
    "assertions": "id", "votes": "assertion_id, epoch, voter", "epochs": "n",
    "results": "epoch, assertion_id", "idempotency": "key",
}


def _cfg(segment_size_bytes: int) -> EngineConfig:
    return EngineConfig(fsync="never", disk_reserve_bytes=0,
                        segment_size_bytes=segment_size_bytes, **CHECKPOINTS_OFF)


def _assertion(rng: random.Random, i: int) -> dict[str, Any]:
    a: dict[str, Any] = {
        "subject": rng.choice([f"urn:s/{i % 37}", "é-ü-😀", f"s{i}"]),
        "predicate": rng.choice(["p", "reading", "knows"]),
        "object": rng.choice([i, -2.5, 1e300, 0.1 + 0.2, "x" * rng.randrange(0, 300),
                              {"z": 1, "a": [1, None, {"y": True, "b": "ñ"}]}, None,
                              [3, 2, 1], {"celsius": 20 + i % 17, "seq": i}]),
        "author": f"writer-{i % 5}"}
    if rng.random() < 0.5:
        a["confidence"] = rng.choice([0.9, 1, 0, round(rng.random(), 6)])
    if rng.random() < 0.3:
        a["source"] = rng.choice(["sensor", "https://example.org/é"])
    return a


def _write_workload(data: Path, seed: int, n: int, segment_size_bytes: int,
                    checkpoint_copy_at: int | None = None) -> None:
    """Write a mixed workload; a hold keeps every WAL segment for the replays.

    With ``checkpoint_copy_at``, the state is checkpointed and copied to
    ``checkpoint.sqlite3`` beside ``data`` after that many requests.
    """
    rng = random.Random(seed)
    eng = Engine(data, _cfg(segment_size_bytes))
    eng.recover()
    eng.start()
    eng.set_hold("test", 0).result()
    ids: list[int] = []
    keyed: list[WriteRequest] = []
    for i in range(n):
        if i == checkpoint_copy_at:
            eng.checkpoint().result()
            shutil.copy(data / "state.sqlite3", data.parent / "checkpoint.sqlite3")
        r = rng.random()
        if keyed and r < 0.03:
            req = rng.choice(keyed)  # a retry: answered from the idempotency table
        elif r < 0.65 or not ids:
            req = WriteRequest(RecordType.ASSERT, [{"assert": _assertion(rng, i)}])
        elif r < 0.85:
            aid = rng.choice(ids) if rng.random() < 0.95 else 10**9  # unknown: refused
            req = WriteRequest(RecordType.VOTE, [{"vote": {
                "assertion_id": aid, "voter": f"v{rng.randrange(6)}",
                "value": rng.choice([1, -1])}}])
        elif r < 0.97:
            ops: list[dict[str, Any]] = []
            for j in range(rng.randint(1, 12)):
                if ids and rng.random() < 0.3:
                    ops.append({"vote": {"assertion_id": rng.choice(ids),
                                         "voter": f"v{rng.randrange(6)}",
                                         "value": rng.choice([1, -1])}})
                else:
                    ops.append({"assert": _assertion(rng, i * 100 + j)})
            req = WriteRequest(RecordType.BATCH, ops)
        else:
            req = WriteRequest(RecordType.SEAL)
        if req not in keyed and rng.random() < 0.3:
            req.idempotency_key = f"key-{i}"
            req.body_sha256 = body_digest(repr(req.ops).encode())
            keyed.append(req)
        try:
            res = eng.submit(req).result()
        except Exception:
            continue  # a refused vote never reaches the WAL
        body = res.body
        if req.type == RecordType.ASSERT and not res.idempotent_replay:
            ids.append(body["id"])
        elif req.type == RecordType.BATCH and not res.idempotent_replay:
            ids.extend(x["id"] for x in body["results"] if "id" in x)
    eng.close()


def _reference_parse(text: str) -> float:
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=dt.UTC).timestamp()


def _reference_replay(wal_dir: Path, db_path: Path) -> None:
    """Every record through apply_record, one transaction each (no shortcuts)."""
    conn = st.connect(str(db_path))
    fs = OsFileSystem()
    for seg in load_chain(fs, str(wal_dir)).segments:
        with SegmentScanner(fs, seg.path) as sc:
            for rec in sc.records():
                payload = st.RECORD_DECODER.decode(rec.payload)
                conn.execute("BEGIN IMMEDIATE")
                status, body = st.apply_record(conn, rec.type, payload, rec.lsn)
                if payload.k:
                    assert payload.h is not None
                    conn.execute("DELETE FROM idempotency WHERE key=?", (payload.k,))
                    conn.execute("INSERT INTO idempotency(key, body_sha256, status, response,"
                                 " lsn, created_unix) VALUES(?,?,?,?,?,?)",
                                 (payload.k, payload.h, status, orjson.dumps(body).decode(),
                                  rec.lsn, _reference_parse(payload.t)))
                conn.execute("COMMIT")
            assert sc.damage is None
    conn.close()


def _tables(db_path: Path) -> dict[str, list[tuple[Any, ...]]]:
    conn = sqlite3.connect(db_path)
    try:
        return {t: conn.execute(f"SELECT * FROM {t} ORDER BY {order}").fetchall()
                for t, order in TABLES.items()}
    finally:
        conn.close()


def _spy_index_drops(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Record each time replay drops the assertion indexes (it still drops them)."""
    dropped: list[bool] = []
    real_drop = st.drop_assertion_indexes

    def spy_drop(conn: sqlite3.Connection) -> None:
        dropped.append(True)
        real_drop(conn)

    monkeypatch.setattr(st, "drop_assertion_indexes", spy_drop)
    return dropped


def _replay_copy(src: Path, dst: Path, segment_size_bytes: int) -> Engine:
    """The WAL of ``src`` alone (no state): a recovery replays all of it."""
    dst.mkdir(parents=True)
    shutil.copytree(src / "wal", dst / "wal")
    eng = Engine(dst, _cfg(segment_size_bytes))
    eng.recover()
    return eng


@pytest.mark.parametrize("seed,n,segment_size_bytes,rebuild", [
    (1, 600, 64 * 1024, True),
    (2, 600, 64 * 1024, False),
    (3, 1500, 4 * 1024 * 1024, True),
])
def test_replay_equals_apply_record_replay_and_the_write_path(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int, n: int,
        segment_size_bytes: int, rebuild: bool) -> None:
    written = tmp_path / "written"
    _write_workload(written, seed, n, segment_size_bytes)
    # Small groups and row buffers: group ends, buffer flushes and segment ends fall
    # between and inside runs of ASSERT records.
    monkeypatch.setattr(limits, "replay_apply_records_max", 7)
    monkeypatch.setattr(limits, "apply_rows_buffered_max", 5)
    monkeypatch.setattr(limits, "replay_index_rebuild_bytes_min", 0 if rebuild else 2**62)
    dropped = _spy_index_drops(monkeypatch)
    eng = _replay_copy(written, tmp_path / "replayed", segment_size_bytes)
    try:
        assert eng.progress.records > 100
        conn = eng.applier.conn if eng.applier else None
        assert conn is not None
        _assert_sound(conn, indexes=len(st.ASSERTION_INDEXES))
    finally:
        eng.close()
    assert dropped == ([True] if rebuild else [])
    _reference_replay(written / "wal", tmp_path / "reference.sqlite3")
    replayed = _tables(tmp_path / "replayed" / "state.sqlite3")
    reference = _tables(tmp_path / "reference.sqlite3")
    by_write_path = _tables(written / "state.sqlite3")
    kinds = {r[0] for r in replayed["assertions"]}
    assert len(kinds) > 100 and replayed["votes"] and replayed["idempotency"]
    assert len(replayed["epochs"]) > 1 and replayed["results"]
    for table in TABLES:
        assert replayed[table] == reference[table], table
    for table in ("assertions", "votes", "epochs", "results"):
        assert replayed[table] == by_write_path[table], table
    # Every table, the idempotency keys' times included: the state is the WAL's.
    assert replayed["idempotency"] == by_write_path["idempotency"]


def _assert_sound(conn: sqlite3.Connection, *, indexes: int) -> None:
    """That many of the assertion indexes exist, and SQLite finds the file intact."""
    assert st.assertion_indexes_present(conn) == indexes
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


_KILL_CHILD = """
import os, signal, sys
from stemedb import limits
from stemedb.engine import Engine, EngineConfig
limits.replay_apply_records_max = 50
limits.replay_index_rebuild_bytes_min = 0
def progress(p):
    if p.records >= 200:
        os.kill(os.getpid(), signal.SIGKILL)  # between two replay transactions
eng = Engine(sys.argv[1], EngineConfig(fsync="never", disk_reserve_bytes=0,
                                       segment_size_bytes=64 * 1024,
                                       checkpoint_wal_bytes=10**15,
                                       replay_budget_seconds=1e9,
                                       checkpoint_interval_seconds=1e9))
eng.recover(progress)
sys.exit(3)  # not reached
"""


def test_replay_killed_with_the_indexes_dropped_recovers_them(tmp_path: Path) -> None:
    written = tmp_path / "written"
    _write_workload(written, 7, 700, 64 * 1024)
    victim = tmp_path / "victim"
    victim.mkdir()
    shutil.copytree(written / "wal", victim / "wal")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    proc = subprocess.run([sys.executable, "-c", _KILL_CHILD, str(victim)], env=env,
                          timeout=120, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    # Killed mid-replay: part of the WAL applied, the indexes not there yet.
    conn = sqlite3.connect(victim / "state.sqlite3")
    try:
        applied = int(conn.execute("SELECT value FROM meta WHERE key='applied_records'")
                      .fetchone()[0])
        assert 200 <= applied < 700
        _assert_sound(conn, indexes=0)
    finally:
        conn.close()
    # The next start builds them (connect()) and finishes the replay.
    eng = Engine(victim, _cfg(64 * 1024))
    try:
        report = eng.recover()
        assert 0 < report.records < 700
        conn2 = eng.applier.conn if eng.applier else None
        assert conn2 is not None
        _assert_sound(conn2, indexes=len(st.ASSERTION_INDEXES))
    finally:
        eng.close()
    _reference_replay(written / "wal", tmp_path / "reference.sqlite3")
    assert _tables(victim / "state.sqlite3") == _tables(tmp_path / "reference.sqlite3")


@pytest.mark.parametrize("wal_bytes_per_row,drops", [(10**6, False), (1, True)])
def test_indexes_are_dropped_only_when_the_replay_outgrows_the_table(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, wal_bytes_per_row: int,
        drops: bool) -> None:
    data = tmp_path / "db"
    _write_workload(data, 11, 400, 64 * 1024, checkpoint_copy_at=300)
    # The state as of the checkpoint: the last 100 requests are to be replayed.
    for suffix in ("-wal", "-shm"):
        (data / f"state.sqlite3{suffix}").unlink(missing_ok=True)
    shutil.copy(tmp_path / "checkpoint.sqlite3", data / "state.sqlite3")
    monkeypatch.setattr(limits, "replay_index_rebuild_bytes_min", 1)
    monkeypatch.setattr(limits, "replay_index_rebuild_wal_bytes_per_row", wal_bytes_per_row)
    dropped = _spy_index_drops(monkeypatch)
    eng = Engine(data, _cfg(64 * 1024))
    try:
        report = eng.recover()
        assert 0 < report.records < 150
        conn = eng.applier.conn if eng.applier else None
        assert conn is not None
        assert conn.execute("SELECT count(*) FROM assertions").fetchone()[0] > 200
        assert st.assertion_indexes_present(conn) == len(st.ASSERTION_INDEXES)
    finally:
        eng.close()
    assert dropped == ([True] if drops else [])
    _reference_replay(data / "wal", tmp_path / "reference.sqlite3")
    got, want = _tables(data / "state.sqlite3"), _tables(tmp_path / "reference.sqlite3")
    # Rows written before the checkpoint took created_unix from the writer's clock.
    assert [r[:5] for r in got.pop("idempotency")] == [r[:5] for r in want.pop("idempotency")]
    assert got == want


def test_parse_rfc3339_equals_strptime() -> None:
    rng = random.Random(5)
    stamps = ["1970-01-01T00:00:00.000000Z", "2026-11-25T21:12:06.318536Z",
              "2000-02-29T23:59:59.999999Z", "2038-01-19T03:14:08.000001Z"]
    stamps += [dt.datetime.fromtimestamp(rng.uniform(0, 4e9), dt.UTC).strftime(
        "%Y-%m-%dT%H:%M:%S.%fZ") for _ in range(20000)]
    for s in stamps:
        assert parse_rfc3339(s) == _reference_parse(s), s
    for bad in ("2026-11-25T21:12:06.31853xZ", "2026-11-25T21:12:06Z",
                "2026-11-25T21:12:6.3185361Z", "2026-13-25T21:12:06.318536Z"):
        with pytest.raises(ValueError):
            parse_rfc3339(bad)
    assert parse_rfc3339("2026-11-25T21:12:06.5Z") == _reference_parse(
        "2026-11-25T21:12:06.5Z")


def test_unpadded_len_equals_rstrip() -> None:
    rng = random.Random(9)
    for n in (0, 1, 7, 65535, 65536, 65537, 200_001, 4 * 1024 * 1024):
        for _ in range(12):
            b = bytearray(n)
            for _ in range(rng.randrange(3)):
                if n:
                    b[rng.randrange(n)] = rng.randrange(1, 256)
            if n and rng.random() < 0.2:
                b[-1] = 1
            assert unpadded_len(bytes(b)) == len(bytes(b).rstrip(b"\0")), n


def test_assertion_rows_insert_as_one_row_per_statement_would(tmp_path: Path) -> None:
    """Runs by None-pattern, NULL literals and multi-row statements: same table."""
    rng = random.Random(3)
    fast = st.connect(str(tmp_path / "fast.sqlite3"))
    plain = st.connect(str(tmp_path / "plain.sqlite3"))
    next_id = 1
    for n in (2, 15, 16, 17, 33, 100, 1, 250):
        for homogeneous in (True, False):
            wide: list[tuple[Any, ...]] = []
            shapes: list[int] = []
            rows: list[tuple[Any, ...]] = []
            for _ in range(n):
                shape = 3 if homogeneous else rng.randrange(4)
                if shapes and not homogeneous and rng.random() < 0.8:  # runs of one shape
                    shape = shapes[-1]
                wide.append((next_id, f"s{rng.randrange(9)}", "p", orjson.dumps(
                    rng.random()).decode(), "a", None if shape & 1 else rng.random(),
                    None if shape & 2 else "src", 1, next_id * 8, "t"))
                got_shape, row = st.assertion_row(*wide[-1])
                assert got_shape == shape
                shapes.append(shape)
                rows.append(row)
                next_id += 1
            fast.execute("BEGIN")
            st._insert_assertions(fast, rows, shapes)
            fast.execute("COMMIT")
            plain.execute("BEGIN")
            plain.executemany(st._INSERT_ASSERTION, wide)
            plain.execute("COMMIT")
    fast.close()
    plain.close()
    got = _tables(tmp_path / "fast.sqlite3")["assertions"]
    assert got == _tables(tmp_path / "plain.sqlite3")["assertions"]
    assert len(got) == next_id - 1
    assert {(r[5] is None, r[6] is None) for r in got} == {(a, b) for a in (0, 1)
                                                           for b in (0, 1)}


def test_index_rebuild_is_its_own_progress_phase(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """/readyz shows `indexing` while the indexes are built, not `replaying` at 100 %."""
    written = tmp_path / "written"
    _write_workload(written, 5, 400, 64 * 1024)
    monkeypatch.setattr(limits, "replay_index_rebuild_bytes_min", 0)
    dst = tmp_path / "replayed"
    dst.mkdir()
    shutil.copytree(written / "wal", dst / "wal")
    seen: list[tuple[str, int, float | None]] = []
    eng = Engine(dst, _cfg(64 * 1024))
    try:
        eng.recover(lambda p: seen.append((p.phase, p.bytes_done, p.eta_seconds)))
        phases = [s[0] for s in seen]
        assert "indexing" in phases
        first = phases.index("indexing")
        assert set(phases[:first]) <= {"replaying"} and phases[:first]
        at = seen[first]
        assert at[1] == seen[first - 1][1] > 0 and at[2] is None  # all bytes, no ETA
        assert eng.progress.phase == "done"
    finally:
        eng.close()


@pytest.mark.parametrize("rtype", [RecordType.ASSERT, RecordType.BATCH])
def test_a_keyed_record_without_its_body_hash_stops_replay(tmp_path: Path,
                                                            rtype: RecordType) -> None:
    """The fast path reads the body hash only when a key is there: a durable record
    with a key and no hash is corruption, named with its segment and offset, not a
    KeyError or a NULL in the idempotency table."""
    data = tmp_path / "data"
    eng = Engine(data, _cfg(64 * 1024))
    eng.recover()
    eng.start()
    ops = [{"assert": _assertion(random.Random(1), i)} for i in range(2)]
    req = WriteRequest(rtype, ops[:1] if rtype == RecordType.ASSERT else ops)
    req.idempotency_key, req.body_sha256 = "key-1", "ab" * 32
    eng.submit(req).result()
    eng.close()
    seg = data / "wal" / "segment.001.wal"
    with SegmentScanner(OsFileSystem(), str(seg)) as sc:
        (rec,) = [r for r in sc.records() if r.type == rtype]
    old = b'"h":"' + b"ab" * 32 + b'"'
    assert old in rec.payload
    payload = rec.payload.replace(old, b'"h":null'.ljust(len(old)))  # same length
    with open(seg, "r+b") as f:
        f.seek(rec.offset)
        f.write(encode_frame(rtype, rec.lsn, payload))
    for name in ("state.sqlite3", "state.sqlite3-wal", "state.sqlite3-shm"):
        (data / name).unlink(missing_ok=True)
    eng2 = Engine(data, _cfg(64 * 1024))
    with pytest.raises(CorruptionError) as err:
        eng2.recover()
    eng2.close()
    assert (err.value.segment, err.value.offset, err.value.lsn) == (
        "segment.001.wal", rec.offset, rec.lsn)
    assert err.value.kind == "corrupt_record" and "no body hash" in err.value.reason
