"""The design floor: a group commit's required work, with none of the engine around it.

What the issues' design asks of every group commit is: apply each record to the
SQLite state inside one transaction (``stemedb.state.apply_record``, the product's own
transition, into the product's schema), append the records to the WAL as encoded
frames, ``fdatasync`` them, and commit the transaction before acknowledging.
:func:`design_floor` does exactly that on one thread, back to back: no queue, no
futures, no thread hand-offs, no metrics, no HTTP, and SQLite's checkpoints done
outside the time measured.  No server or engine of this design can acknowledge faster
on the same disk and CPU, so the benches print this floor beside the targets that it
bounds.
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

FLOOR_WAL_BYTES = 64 * 1024 * 1024  # the preallocated file the frames go to, in turn
# SQLite's own WAL is checkpointed this often, outside the timed part: a WAL that only
# grows makes every commit slower (measured: 2-8 % for 1000-row commits), and the
# engine keeps it short with its background copy.
FLOOR_SQLITE_CHECKPOINT_SECONDS = 0.1


def design_floor(root: str, records_per_commit: int, ops_per_record: int, seconds: float,
                 warmup_seconds: float) -> dict[str, Any]:
    """Group commits of ``records_per_commit`` records of ``ops_per_record`` assertions
    each (ASSERT records for one, BATCH records for more) for ``seconds`` after
    ``warmup_seconds``.  Every record of a group waits for the whole group, so each
    counts the group's time as its latency.  Returns records/s (``writes_per_s``, over
    the time spent inside group commits: building the requests is not timed) and
    latency percentiles; raises if the state does not hold every assertion written."""
    d = os.path.join(root, f"floor-{records_per_commit}x{ops_per_record}")
    os.makedirs(d, exist_ok=True)
    rtype = int(RecordType.ASSERT if ops_per_record == 1 else RecordType.BATCH)
    conn = st.connect(os.path.join(d, "state.sqlite3"))
    st.tune_for_writes(conn)
    fd = os.open(os.path.join(d, "wal"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.posix_fallocate(fd, 0, FLOOR_WAL_BYTES)  # as the WAL's segments are
        os.fsync(fd)
        conn.execute("BEGIN IMMEDIATE")
        st.apply_record(conn, int(RecordType.GENESIS), st.Record(t=rfc3339(time.time())), 0)
        conn.execute("COMMIT")
        lat: list[float] = []
        lsn = records = assertions = 0
        busy = 0.0  # seconds spent in measured group commits
        checkpointed = time.perf_counter()
        t_start = time.perf_counter()
        measure_from = t_start + warmup_seconds
        deadline = measure_from + seconds
        while True:  # bounded by warmup_seconds + seconds
            # The requests arrive built, as the engine's do: only what follows is timed.
            ops_of = [[{"assert": sample_assertion(assertions + r * ops_per_record + k)}
                       for k in range(ops_per_record)] for r in range(records_per_commit)]
            t0 = time.perf_counter()
            if t0 >= deadline:
                break
            ts = rfc3339(time.time())
            frames: list[bytes] = []
            conn.execute("BEGIN IMMEDIATE")
            ctx = st.ApplyContext(buffer_rows=True)
            for ops in ops_of:
                payload = {"t": ts, "ops": ops}
                data = encode_json(payload)
                st.apply_record(conn, rtype, st.RECORD_DECODER.decode(data), lsn, ctx)
                frames.append(encode_frame(rtype, lsn, data))
                lsn += frame_size(len(data))
                assertions += ops_per_record
            ctx.flush(conn)
            records += records_per_commit
            st.set_applied(conn, lsn, lsn, records)
            blob = b"".join(frames)
            os.pwrite(fd, blob, lsn % (FLOOR_WAL_BYTES - len(blob)))
            os.fdatasync(fd)
            conn.execute("COMMIT")
            t1 = time.perf_counter()
            if t0 >= measure_from:
                busy += t1 - t0
                lat.extend([t1 - t0] * records_per_commit)
            if t1 - checkpointed >= FLOOR_SQLITE_CHECKPOINT_SECONDS:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                checkpointed = time.perf_counter()
        elapsed = max(busy, 1e-9)  # the timed group commits only
        stored = conn.execute("SELECT count(*) FROM assertions").fetchone()[0]
        if stored != assertions:
            raise RuntimeError(f"design floor: {stored} assertions stored, "
                               f"{assertions} written")
        return {"writes": len(lat), "writes_per_s": len(lat) / elapsed,
                **latency_tail_ms(lat), "batch_mean": float(records_per_commit)}
    finally:
        os.close(fd)
        conn.close()
