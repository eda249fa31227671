"""The design floors: a group commit's required work, and the applier's, with no engine.

The engine acknowledges a write once its WAL record is durable; the SQLite state is
applied afterwards by one applier thread.  So two floors, measured apart:

- :func:`design_floor` is what this design requires of every group commit before it
  acknowledges: encode each record's payload as the committer does
  (``stemedb.model.encode_json`` of ``{"t": ..., "ops": [...]}``), frame it as the WAL
  does (``stemedb.wal.encode_frame``), one ``pwrite`` of the group into a preallocated
  file (``posix_fallocate``, as the WAL's segments are), one ``fdatasync``.  No SQLite.
  On one thread, back to back: no queue, no futures, no thread hand-offs, no admission
  view, no metrics, no HTTP.  No engine of this design can acknowledge faster on the
  same disk and CPU, so the benches print this floor beside the targets it bounds.
- :func:`apply_floor` is the applier's work per record, so a reader sees what bounds
  the applier (and so the lag a linearizable read may wait for): each record's payload
  decoded (``stemedb.state.RECORD_DECODER``) and applied with the product's own
  transition, ``stemedb.state.apply_record``, into the product's schema, one
  ``BEGIN IMMEDIATE`` ... ``set_applied`` ... ``COMMIT`` per group, on one thread.  The
  payloads are encoded before the clock starts, and SQLite's own WAL is checkpointed
  outside the time measured (the engine's background copy does that).  If the apply
  floor's records/s is below the engine's acknowledged records/s, the applier cannot
  keep up with that load for long, whatever the engine does.
"""

from __future__ import annotations

import os
import time
from typing import Any

from stemedb import state as st
from stemedb.engine import rfc3339
from stemedb.model import encode_json
from stemedb.wal import RecordType, encode_frame, frame_size

from ._common import latency_tail_ms, sample_assertion

FLOOR_WAL_BYTES = 64 * 1024 * 1024  # a preallocated file, as a WAL segment (the default size)
# SQLite's own WAL is checkpointed this often, outside the timed part: a WAL that only
# grows makes every commit slower (measured: 2-8 % for 1000-row commits), and the
# engine keeps it short with its background copy.
FLOOR_SQLITE_CHECKPOINT_SECONDS = 0.1


def _ops_of(first: int, records: int, ops_per_record: int) -> list[list[dict[str, Any]]]:
    return [[{"assert": sample_assertion(first + r * ops_per_record + k)}
             for k in range(ops_per_record)] for r in range(records)]


def _new_wal_file(path: str) -> int:
    """A fresh preallocated file (unwritten extents, as a new WAL segment has)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    os.posix_fallocate(fd, 0, FLOOR_WAL_BYTES)
    os.fsync(fd)
    return fd


def design_floor(root: str, records_per_commit: int, ops_per_record: int, seconds: float,
                 warmup_seconds: float) -> dict[str, Any]:
    """Group commits of ``records_per_commit`` records of ``ops_per_record`` assertions
    each (ASSERT records for one, BATCH records for more) for ``seconds`` after
    ``warmup_seconds``: encode, frame, one pwrite, one fdatasync.  Every record of a
    group waits for the whole group, so each counts the group's time as its latency.
    Returns records/s (``writes_per_s``, over the time spent inside group commits:
    building the requests is not timed) and latency percentiles."""
    d = os.path.join(root, f"floor-{records_per_commit}x{ops_per_record}")
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, "wal")
    rtype = int(RecordType.ASSERT if ops_per_record == 1 else RecordType.BATCH)
    fd = _new_wal_file(path)
    try:
        lat: list[float] = []
        lsn = offset = assertions = 0
        busy = 0.0  # seconds spent in measured group commits
        t_start = time.perf_counter()
        measure_from = t_start + warmup_seconds
        deadline = measure_from + seconds
        while True:  # bounded by warmup_seconds + seconds
            # The requests arrive built, as the engine's do: only what follows is timed.
            ops_of = _ops_of(assertions, records_per_commit, ops_per_record)
            t0 = time.perf_counter()
            if t0 >= deadline:
                break
            ts = rfc3339(time.time())
            frames: list[bytes] = []
            for ops in ops_of:
                data = encode_json({"t": ts, "ops": ops})
                frames.append(encode_frame(rtype, lsn, data))
                lsn += frame_size(len(data))
            blob = b"".join(frames)
            if offset + len(blob) > FLOOR_WAL_BYTES:
                # A full "segment": the next one is prepared outside the time measured
                # (the floor is a lower bound; the engine rotates inline).
                os.close(fd)
                fd = _new_wal_file(path)
                offset = 0
                t0 = time.perf_counter()
            os.pwrite(fd, blob, offset)
            os.fdatasync(fd)
            t1 = time.perf_counter()
            offset += len(blob)
            assertions += records_per_commit * ops_per_record
            if t0 >= measure_from:
                busy += t1 - t0
                lat.extend([t1 - t0] * records_per_commit)
        elapsed = max(busy, 1e-9)  # the timed group commits only
        return {"writes": len(lat), "writes_per_s": len(lat) / elapsed,
                **latency_tail_ms(lat), "batch_mean": float(records_per_commit)}
    finally:
        os.close(fd)


def apply_floor(root: str, records_per_commit: int, ops_per_record: int, seconds: float,
                warmup_seconds: float) -> dict[str, Any]:
    """The applier's work: ``records_per_commit`` records of ``ops_per_record``
    assertions decoded and applied with ``stemedb.state.apply_record`` in one SQLite
    transaction per group, for ``seconds`` after ``warmup_seconds``.  Returns records/s
    (``writes_per_s``, over the time spent inside the transactions) and the percentiles
    of one transaction's time (``p50_ms`` ...); raises if the state does not hold every
    assertion applied."""
    d = os.path.join(root, f"apply-floor-{records_per_commit}x{ops_per_record}")
    os.makedirs(d, exist_ok=True)
    rtype = int(RecordType.ASSERT if ops_per_record == 1 else RecordType.BATCH)
    conn = st.connect(os.path.join(d, "state.sqlite3"))
    st.tune_for_writes(conn)
    try:
        conn.execute("BEGIN IMMEDIATE")
        st.apply_record(conn, int(RecordType.GENESIS), st.Record(t=rfc3339(time.time())), 0)
        conn.execute("COMMIT")
        lat: list[float] = []
        lsn = records = assertions = measured = 0
        busy = 0.0
        checkpointed = time.perf_counter()
        t_start = time.perf_counter()
        measure_from = t_start + warmup_seconds
        deadline = measure_from + seconds
        decode = st.RECORD_DECODER.decode
        while True:  # bounded by warmup_seconds + seconds
            # The durable records, as the committer hands them over: encoded already.
            ts = rfc3339(time.time())
            payloads = [encode_json({"t": ts, "ops": ops})
                        for ops in _ops_of(assertions, records_per_commit, ops_per_record)]
            t0 = time.perf_counter()
            if t0 >= deadline:
                break
            conn.execute("BEGIN IMMEDIATE")
            ctx = st.ApplyContext(buffer_rows=True)
            for data in payloads:
                st.apply_record(conn, rtype, decode(data), lsn, ctx)
                lsn += frame_size(len(data))
            ctx.flush(conn)
            records += records_per_commit
            st.set_applied(conn, lsn, lsn, records)
            conn.execute("COMMIT")
            t1 = time.perf_counter()
            assertions += records_per_commit * ops_per_record
            if t0 >= measure_from:
                busy += t1 - t0
                measured += records_per_commit
                lat.append(t1 - t0)
            if t1 - checkpointed >= FLOOR_SQLITE_CHECKPOINT_SECONDS:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                checkpointed = time.perf_counter()
        stored = conn.execute("SELECT count(*) FROM assertions").fetchone()[0]
        if stored != assertions:
            raise RuntimeError(f"apply floor: {stored} assertions stored, "
                               f"{assertions} applied")
        return {"writes": measured, "writes_per_s": measured / max(busy, 1e-9),
                **latency_tail_ms(lat), "batch_mean": float(records_per_commit)}
    finally:
        conn.close()
