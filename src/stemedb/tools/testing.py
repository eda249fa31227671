"""Helpers for testing the operator tools: real WAL directories written by the real
engine, with deterministic content, and the ways segments get damaged.

Public so that other test suites (and operators rehearsing a repair) can build the
same fixtures::

    from stemedb.tools.testing import build_sample_wal, segment_records
    build_sample_wal("/tmp/rehearsal", assertions=1200)
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from typing import Any

from ..engine import Engine, EngineConfig, WriteRequest
from ..wal import Record, RecordType, SegmentScanner, list_segment_names
from ._common import RO_FS

SAMPLE_CLOCK_START_UNIX = 1764097200.0  # 2025-11-25T19:00:00Z
SAMPLE_SEGMENT_SIZE_BYTES = 64 * 1024  # the smallest segment the engine takes


def sample_engine_config(segment_size_bytes: int = SAMPLE_SEGMENT_SIZE_BYTES) -> EngineConfig:
    # No checkpoint-driven deletion and no disk guard: the tests decide what is on disk.
    return EngineConfig(segment_size_bytes=segment_size_bytes, disk_reserve_bytes=0,
                        checkpoint_wal_bytes=10**12, replay_budget_seconds=1e9,
                        checkpoint_interval_seconds=1e9)


@dataclass
class SampleWal:
    data_dir: str
    wal_dir: str
    segments: list[str]  # file names, in order
    records: int


def build_sample_wal(data_dir: str, *, assertions: int = 100, votes_every: int = 0,
                     clock_step_seconds: float = 1.0,
                     segment_size_bytes: int = SAMPLE_SEGMENT_SIZE_BYTES,
                     requests: list[WriteRequest] | None = None) -> SampleWal:
    """Write a WAL with the real engine and close it cleanly.

    Every segment is kept (a hold at LSN 0).  Times start at 2025-11-25T19:00:00Z and
    advance ``clock_step_seconds`` per group commit.  Without ``requests``: one
    assertion per request, authors alternating alice/bob, and a vote by carol on
    every ``votes_every``-th assertion.
    """
    counter = itertools.count()
    eng = Engine(data_dir, sample_engine_config(segment_size_bytes),
                 clock=lambda: SAMPLE_CLOCK_START_UNIX + clock_step_seconds * next(counter))
    eng.recover()
    eng.start()
    try:
        eng.set_hold("test", 0).result()
        if requests is not None:
            for req in requests:  # one at a time: the LSNs do not depend on batching
                eng.submit(req).result()
        else:
            for i in range(assertions):
                res = eng.submit(WriteRequest(RecordType.ASSERT, [{"assert": {
                    "subject": f"s{i}", "predicate": "p", "object": i,
                    "author": ("alice", "bob")[i % 2]}}])).result()
                if votes_every and i % votes_every == 0:
                    eng.submit(WriteRequest(RecordType.VOTE, [{"vote": {
                        "assertion_id": res.body["id"], "voter": "carol",
                        "value": 1}}])).result()
    finally:
        eng.close()
    wal_dir = os.path.join(data_dir, "wal")
    names = [n for _, n in list_segment_names(RO_FS, wal_dir)]
    total = sum(len(segment_records(os.path.join(wal_dir, n))) for n in names)
    return SampleWal(data_dir, wal_dir, names, total)


def segment_records(path: str) -> list[Record]:
    with SegmentScanner(RO_FS, path) as sc:
        return list(sc.records())


def all_records(wal_dir: str) -> list[Record]:
    return [r for _, n in list_segment_names(RO_FS, wal_dir)
            for r in segment_records(os.path.join(wal_dir, n))]


# -- damage --------------------------------------------------------------------------

def overwrite(path: str, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def flip_bit(path: str, offset: int, bit: int = 0) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([b ^ (1 << bit)]))


def open_engine_replaying(data_dir: str) -> Engine:
    """Open ``data_dir`` with no state, so that every record comes from the WAL."""
    for suffix in ("", "-wal", "-shm"):
        p = os.path.join(data_dir, "state.sqlite3" + suffix)
        if os.path.exists(p):
            os.remove(p)
    eng = Engine(data_dir, sample_engine_config())
    eng.recover()
    return eng


def assertion_subjects(eng: Engine) -> list[str]:
    rows: list[Any] = eng.read_now(
        lambda c: c.execute("SELECT subject FROM assertions ORDER BY id").fetchall())
    return [str(r[0]) for r in rows]


@dataclass(frozen=True)
class Damage:
    """What a damage function did, and what verify must report for it."""

    kind: str | None  # None: no fault
    segment: str  # the segment verify names
    offset: int
    lsn: int | None
    records_kept: int  # records of the whole WAL before the first fault
    segment_records_kept: int | None  # records a cut of `segment` keeps (None: not cut)
    file_exit: int  # exit code of `stemedb-wal-verify --file <segment>`


def _segs(wal_dir: str) -> list[tuple[str, list[Record]]]:
    return [(n, segment_records(os.path.join(wal_dir, n)))
            for _, n in list_segment_names(RO_FS, wal_dir)]


def _before(segs: list[tuple[str, list[Record]]], i: int) -> int:
    return sum(len(r) for _, r in segs[:i])


def damage_none(wal_dir: str) -> Damage:
    segs = _segs(wal_dir)
    return Damage(None, segs[-1][0], 0, None, _before(segs, len(segs)), None, 0)


def damage_torn_last_record(wal_dir: str) -> Damage:
    """The last record of the last segment half-written: its payload never landed."""
    segs = _segs(wal_dir)
    name, recs = segs[-1]
    r = recs[-1]
    overwrite(os.path.join(wal_dir, name), r.offset + 24, bytes(r.size - 24))
    return Damage("torn_tail", name, r.offset, r.lsn, _before(segs, len(segs) - 1)
                  + len(recs) - 1, len(recs) - 1, 1)


def damage_truncated_file(wal_dir: str) -> Damage:
    """The last segment's file ends in the middle of its last record."""
    segs = _segs(wal_dir)
    name, recs = segs[-1]
    r = recs[-1]
    os.truncate(os.path.join(wal_dir, name), r.offset + 40)
    return Damage("torn_tail", name, r.offset, r.lsn, _before(segs, len(segs) - 1)
                  + len(recs) - 1, len(recs) - 1, 1)


def damage_bad_checksum(wal_dir: str) -> Damage:
    """One payload byte changed in the middle of the last segment."""
    segs = _segs(wal_dir)
    name, recs = segs[-1]
    k = len(recs) // 2
    flip_bit(os.path.join(wal_dir, name), recs[k].offset + 30, 3)
    return Damage("corrupt_record", name, recs[k].offset, recs[k].lsn,
                  _before(segs, len(segs) - 1) + k, k, 1)


def damage_bad_length(wal_dir: str) -> Damage:
    """A frame's length field says more than the segment holds."""
    segs = _segs(wal_dir)
    name, recs = segs[-1]
    k = len(recs) // 2
    overwrite(os.path.join(wal_dir, name), recs[k].offset + 8, (0x00FFFFFF).to_bytes(4, "little"))
    return Damage("corrupt_record", name, recs[k].offset, recs[k].lsn,
                  _before(segs, len(segs) - 1) + k, k, 1)


def damage_zeroed_page(wal_dir: str) -> Damage:
    """A 4 KiB page of the last segment reads back as zeros (a lost write)."""
    segs = _segs(wal_dir)
    name, recs = segs[-1]
    page = 8192
    j = next(i for i, r in enumerate(recs) if r.offset + r.size > page)
    overwrite(os.path.join(wal_dir, name), page, bytes(4096))
    return Damage("corrupt_record", name, recs[j].offset, recs[j].lsn,
                  _before(segs, len(segs) - 1) + j, j, 1)


def damage_bit_flip_middle_segment(wal_dir: str) -> Damage:
    """One bit flipped in a record of a segment that is not the last."""
    segs = _segs(wal_dir)
    assert len(segs) >= 3, "needs three segments"
    name, recs = segs[1]
    k = len(recs) // 3
    flip_bit(os.path.join(wal_dir, name), recs[k].offset + 40, 5)
    return Damage("corrupt_record", name, recs[k].offset, recs[k].lsn, _before(segs, 1) + k,
                  k, 1)


def damage_missing_segment(wal_dir: str) -> Damage:
    """A middle segment deleted: verify names the segment after the hole."""
    segs = _segs(wal_dir)
    assert len(segs) >= 3, "needs three segments"
    os.remove(os.path.join(wal_dir, segs[1][0]))
    return Damage("missing_segment", segs[2][0], 0, None, _before(segs, 1), None, 0)


def damage_bad_header(wal_dir: str) -> Damage:
    """A middle segment's header overwritten (its sequence number field)."""
    segs = _segs(wal_dir)
    assert len(segs) >= 3, "needs three segments"
    overwrite(os.path.join(wal_dir, segs[1][0]), 16, b"\xff" * 8)
    return Damage("bad_header", segs[1][0], 0, None, _before(segs, 1), None, 1)


DAMAGES = {
    "clean": damage_none,
    "torn_last_record": damage_torn_last_record,
    "truncated_file": damage_truncated_file,
    "bad_checksum": damage_bad_checksum,
    "bad_length": damage_bad_length,
    "zeroed_page": damage_zeroed_page,
    "bit_flip_middle_segment": damage_bit_flip_middle_segment,
    "missing_segment": damage_missing_segment,
    "bad_header": damage_bad_header,
}
