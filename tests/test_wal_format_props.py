"""Property tests of WAL framing and reading (hypothesis)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as stg

from stemedb.testing import SimFileSystem
from stemedb.wal import (
    SEGMENT_HEADER_SIZE,
    RecordType,
    SegmentHeader,
    SegmentScanner,
    encode_frame,
    frame_size,
    parse_segment_name,
    segment_name,
)

CAP = 64 * 1024
BASE = 5 * CAP
TYPES = [int(t) for t in RecordType]

payloads = stg.lists(stg.tuples(stg.sampled_from(TYPES), stg.binary(min_size=0, max_size=700)),
                     min_size=0, max_size=40)


def _segment(records: list[tuple[int, bytes]]) -> tuple[bytes, list[tuple[int, int, bytes]]]:
    header = SegmentHeader(seq=6, base_lsn=BASE, capacity_bytes=CAP)
    buf = bytearray(header.encode())
    out = []
    for rtype, payload in records:
        lsn = BASE + len(buf)
        buf += encode_frame(rtype, lsn, payload)
        out.append((lsn, rtype, payload))
    assert len(buf) <= CAP
    return bytes(buf) + bytes(CAP - len(buf)), out


def _scan(data: bytes) -> tuple[list[tuple[int, int, bytes]], SegmentScanner]:
    fs = SimFileSystem()
    fs.makedirs("/w")
    f = fs.open("/w/segment.006.wal", create=True)
    f.pwrite(data, 0)
    sc = SegmentScanner(fs, "/w/segment.006.wal", read_bytes_max=4096)
    recs = [(r.lsn, r.type, r.payload) for r in sc.records()]
    return recs, sc


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(payloads)
def test_roundtrip(records: list[tuple[int, bytes]]) -> None:
    data, expected = _segment(records)
    got, sc = _scan(data)
    assert got == expected
    assert sc.damage is None
    assert sc.end_offset == SEGMENT_HEADER_SIZE + sum(frame_size(len(p)) for _, p in records)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(payloads.filter(bool), stg.data())
def test_any_flipped_byte_is_detected_never_misread(records: list[tuple[int, bytes]],
                                                    data: stg.DataObject) -> None:
    seg, expected = _segment(records)
    end = SEGMENT_HEADER_SIZE + sum(frame_size(len(p)) for _, p in records)
    pos = data.draw(stg.integers(SEGMENT_HEADER_SIZE, end - 1))
    bit = data.draw(stg.integers(0, 7))
    damaged = bytearray(seg)
    damaged[pos] ^= 1 << bit
    got, sc = _scan(bytes(damaged))
    # Every record returned is exactly a record that was written, in order, and the
    # damaged one is not among them.
    assert got == expected[: len(got)]
    # (padding is not in the checksum, but it must be zero: a flip there is caught too)
    hit = next(i for i, (lsn, _, p) in enumerate(expected)
               if lsn - BASE <= pos < lsn - BASE + frame_size(len(p)))
    assert len(got) == hit
    assert sc.damage is not None
    assert sc.damage[0] == expected[hit][0] - BASE
    # A valid record after the damage means corruption, not a torn tail.
    assert sc.damage[2] == (hit < len(expected) - 1)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(payloads.filter(bool), stg.data())
def test_truncation_keeps_exactly_the_complete_prefix(records: list[tuple[int, bytes]],
                                                      data: stg.DataObject) -> None:
    seg, expected = _segment(records)
    end = SEGMENT_HEADER_SIZE + sum(frame_size(len(p)) for _, p in records)
    cut = data.draw(stg.integers(SEGMENT_HEADER_SIZE, end))
    torn = seg[:cut] + bytes(CAP - cut)  # what a crash leaves in a preallocated file
    got, sc = _scan(torn)
    # A record survives when its bytes survive (lost bytes that were zero anyway, like
    # an LSN's high bytes, leave it intact).
    complete = []
    for r in expected:
        lo, hi = r[0] - BASE, r[0] - BASE + 24 + len(r[2])
        if torn[lo:hi] != seg[lo:hi]:
            break
        complete.append(r)
    assert got == complete
    if sc.damage is not None:
        assert sc.damage[2] is False  # nothing valid after a torn tail


@given(stg.integers(1, 10**7))
def test_segment_names_roundtrip(seq: int) -> None:
    name = segment_name(seq)
    assert parse_segment_name(name) == seq
    assert name.startswith("segment.") and name.endswith(".wal")
    assert len(name.split(".")[1]) >= 3


@given(stg.integers(1, 2**40), stg.integers(0, 2**50), stg.integers(65, 2**30),
       stg.integers(0, 2**62), stg.integers(0, 2**32 - 1))
def test_header_roundtrip_and_any_flip_detected(seq: int, base: int, cap: int, ns: int,
                                                flags: int) -> None:
    h = SegmentHeader(seq, base, cap, ns, flags=flags)
    raw = h.encode()
    assert SegmentHeader.decode(raw) == h
    assert SegmentHeader.decode(raw).skips_lsns == bool(flags & 1)
    for i in range(0, 64, 7):
        bad = bytearray(raw)
        bad[i] ^= 0x01
        try:
            SegmentHeader.decode(bytes(bad))
        except ValueError:
            continue
        raise AssertionError(f"a flipped bit at byte {i} went unnoticed")
