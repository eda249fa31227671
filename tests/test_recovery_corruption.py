"""Corruption table: each kind of damage, each recovery mode, exactly what survives.

The WAL is written by the real engine on the real file system (three 64 KiB
segments), the state is then deleted so recovery replays the whole log, and the
damage is applied to the bytes on disk.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from stemedb.engine import Engine, EngineConfig, WriteRequest
from stemedb.errors import CorruptionError
from stemedb.storage import OsFileSystem
from stemedb.wal import RecordType, SegmentScanner, list_segment_names

N_RECORDS = 120


def _cfg(mode: str = "tolerate-torn-tail") -> EngineConfig:
    return EngineConfig(segment_size_bytes=64 * 1024, disk_reserve_bytes=0,
                        checkpoint_wal_bytes=10**12, checkpoint_interval_seconds=1e9,
                        replay_budget_seconds=1e9, recovery_mode=mode)


@dataclass
class Rec:
    segment: str
    offset: int
    length: int
    lsn: int


def _build(tmp: Path) -> tuple[Path, list[Rec]]:
    d = tmp / "db"
    e = Engine(d, _cfg(), background=False)
    e.recover()
    e.start()
    e.set_hold("keep", 0).result()
    for i in range(N_RECORDS):
        e.submit(WriteRequest(RecordType.ASSERT, [{"assert": {
            "subject": f"s{i}", "predicate": "p", "object": "x" * 1200,
            "author": "a"}}])).result()
    e.close()
    recs = []
    fs = OsFileSystem()
    for _, name in list_segment_names(fs, str(d / "wal")):
        with SegmentScanner(fs, str(d / "wal" / name)) as sc:
            recs.extend(Rec(name, r.offset, len(r.payload), r.lsn) for r in sc.records())
    assert recs[0].lsn < recs[-1].lsn
    assert len({r.segment for r in recs}) == 3, "the fixture must span three segments"
    return d, recs


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Rec]]:
    return _build(tmp_path_factory.mktemp("pristine"))


def _patch(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def _segments(recs: list[Rec]) -> list[str]:
    return sorted({r.segment for r in recs})


def _last_rec(recs: list[Rec]) -> Rec:
    return recs[-1]


def _middle_of_last(recs: list[Rec]) -> Rec:
    last = [r for r in recs if r.segment == _segments(recs)[-1]]
    return last[len(last) // 2]


def _middle_seg_rec(recs: list[Rec]) -> Rec:
    mid = [r for r in recs if r.segment == _segments(recs)[1]]
    return mid[len(mid) // 2]


def torn_last_record(wal: Path, recs: list[Rec]) -> int:
    r = _last_rec(recs)
    _patch(wal / r.segment, r.offset + 24 + r.length // 2, bytes(r.length))
    return r.lsn


def bad_checksum_last(wal: Path, recs: list[Rec]) -> int:
    r = _last_rec(recs)
    _patch(wal / r.segment, r.offset, b"\xde\xad\xbe\xef")
    return r.lsn


def bad_checksum_middle(wal: Path, recs: list[Rec]) -> int:
    r = _middle_of_last(recs)
    _patch(wal / r.segment, r.offset + 30, b"#")
    return r.lsn


def bad_length_middle(wal: Path, recs: list[Rec]) -> int:
    r = _middle_of_last(recs)
    _patch(wal / r.segment, r.offset + 8, struct.pack("<I", 10_000_000))
    return r.lsn


def zeroed_page(wal: Path, recs: list[Rec]) -> int:
    r = _middle_of_last(recs)
    page = (r.offset // 4096) * 4096
    _patch(wal / r.segment, page, bytes(4096))
    first = min((x for x in recs if x.segment == r.segment and x.offset + 24 + x.length > page),
                key=lambda x: x.offset)
    return first.lsn


def stray_byte_in_preallocated_tail(wal: Path, recs: list[Rec]) -> int:
    """Non-zero data far past the last record, in the zeros of the preallocated tail
    (recovery reads that tail twice: to size the replay, then after the last record)."""
    seg = wal / _segments(recs)[-1]
    _patch(seg, seg.stat().st_size - 100, b"\x01")
    return recs[-1].lsn + 1  # every record survives


def bitflip_middle_segment(wal: Path, recs: list[Rec]) -> int:
    r = _middle_seg_rec(recs)
    with open(wal / r.segment, "r+b") as f:
        f.seek(r.offset + 40)
        b = f.read(1)
        f.seek(r.offset + 40)
        f.write(bytes([b[0] ^ 0x10]))
    return r.lsn


def missing_segment(wal: Path, recs: list[Rec]) -> int:
    seg = _segments(recs)[1]
    os.remove(wal / seg)
    return min(r.lsn for r in recs if r.segment == seg)


Damage = Callable[[Path, list[Rec]], int]

# damage, mode -> expected: "all", "cut" (records before the damaged LSN survive), or
# the CorruptionError kind recovery must stop with.
CASES: list[tuple[str, Damage, str, str]] = [
    ("torn last record", torn_last_record, "tolerate-torn-tail", "cut"),
    ("torn last record", torn_last_record, "absolute", "torn_tail"),
    ("torn last record", torn_last_record, "point-in-time", "cut"),
    ("bad checksum, last record", bad_checksum_last, "tolerate-torn-tail", "cut"),
    ("bad checksum, mid segment", bad_checksum_middle, "tolerate-torn-tail", "corrupt_record"),
    ("bad checksum, mid segment", bad_checksum_middle, "point-in-time", "cut"),
    ("bad length", bad_length_middle, "tolerate-torn-tail", "corrupt_record"),
    ("bad length", bad_length_middle, "absolute", "corrupt_record"),
    ("zeroed page", zeroed_page, "tolerate-torn-tail", "corrupt_record"),
    ("zeroed page", zeroed_page, "point-in-time", "cut"),
    ("stray byte in the tail", stray_byte_in_preallocated_tail, "tolerate-torn-tail", "cut"),
    ("stray byte in the tail", stray_byte_in_preallocated_tail, "absolute", "torn_tail"),
    ("bit flip, middle segment", bitflip_middle_segment, "tolerate-torn-tail",
     "corrupt_record"),
    ("bit flip, middle segment", bitflip_middle_segment, "point-in-time", "cut"),
    ("missing segment", missing_segment, "tolerate-torn-tail", "missing_segment"),
    ("missing segment", missing_segment, "point-in-time", "cut"),
]


@pytest.mark.parametrize(("name", "damage", "mode", "expect"), CASES,
                         ids=[f"{c[0]}-{c[2]}" for c in CASES])
def test_corruption(tmp_path: Path, pristine: tuple[Path, list[Rec]], name: str,
                    damage: Damage, mode: str, expect: str) -> None:
    src, recs = pristine
    d = tmp_path / "db"
    shutil.copytree(src, d)
    for f in d.glob("state.sqlite3*"):
        f.unlink()  # replay everything from the first segment
    bad_lsn = damage(d / "wal", recs)
    survivors = sum(1 for r in recs if r.lsn < bad_lsn) - 1  # minus the genesis record
    e = Engine(d, _cfg(mode), background=False)
    if expect not in ("all", "cut"):
        with pytest.raises(CorruptionError) as info:
            e.recover()
        assert info.value.kind == expect
        assert "stemedb-wal-repair" in str(info.value)  # the message names the fix
        return
    report = e.recover()
    e.start()
    conn = sqlite3.connect(d / "state.sqlite3")
    count = conn.execute("SELECT COUNT(*) FROM assertions").fetchone()[0]
    assert count == survivors, f"{name}: {count} records survive, expected {survivors}"
    ids = [r[0] for r in conn.execute("SELECT id FROM assertions ORDER BY id")]
    assert ids == list(range(1, survivors + 1))
    conn.close()
    if mode == "point-in-time" and name in ("bit flip, middle segment", "missing segment"):
        assert report.quarantined, "later segments must be moved aside, never deleted"
        assert all((d / "wal" / q).exists() for q in report.quarantined)
    # The log accepts writes after the cut, and a restart replays them.
    res = e.submit(WriteRequest(RecordType.ASSERT, [{"assert": {
        "subject": "after", "predicate": "p", "object": 1, "author": "a"}}])).result()
    assert res.body["id"] == survivors + 1
    e.close()
    e2 = Engine(d, _cfg(mode), background=False)
    e2.recover()
    assert e2.read_now(lambda c: c.execute("SELECT COUNT(*) FROM assertions").fetchone()[0]) \
        == survivors + 1
    e2.close()


def test_torn_tail_bytes_are_saved_aside(tmp_path: Path, pristine: tuple[Path, list[Rec]]
                                         ) -> None:
    src, recs = pristine
    d = tmp_path / "db"
    shutil.copytree(src, d)
    torn_last_record(d / "wal", recs)
    for f in d.glob("state.sqlite3*"):
        f.unlink()
    e = Engine(d, _cfg(), background=False)
    report = e.recover()
    assert report.torn_tail is not None
    saved = report.torn_tail["saved_to"]
    assert saved and os.path.getsize(saved) == report.torn_tail["bytes_cut"] > 0
    e.close()


def test_all_zero_last_segment_header_is_dropped_not_fatal(tmp_path: Path,
                                                           pristine: tuple[Path, list[Rec]]
                                                           ) -> None:
    src, _recs = pristine
    d = tmp_path / "db"
    shutil.copytree(src, d)
    nxt = d / "wal" / "segment.004.wal"
    nxt.write_bytes(bytes(64 * 1024))  # created, never written: nothing durable in it
    e = Engine(d, _cfg(), background=False)
    report = e.recover()
    assert report.quarantined == ["segment.004.wal.torn"]
    e.close()


def test_garbage_last_segment_header_is_corruption(tmp_path: Path,
                                                   pristine: tuple[Path, list[Rec]]) -> None:
    src, recs = pristine
    d = tmp_path / "db"
    shutil.copytree(src, d)
    for f in d.glob("state.sqlite3*"):
        f.unlink()
    last = d / "wal" / _segments(recs)[-1]
    _patch(last, 0, b"NOTAWAL!")
    with pytest.raises(CorruptionError) as info:
        Engine(d, _cfg(), background=False).recover()
    assert info.value.kind == "bad_header"
