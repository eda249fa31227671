"""Byte layout of WAL segments and records.  See docs/wal-format.md.

Segment header (64 bytes, at offset 0 of every segment)::

    0   8  magic            b"STEMEWAL"
    8   2  format_version   1
    10  2  header_size      64
    12  4  flags            bit 0 (SEGMENT_FLAG_SKIPS_LSNS): the base LSN was moved past
                            LSNs the state had applied but the WAL had lost; other bits 0
    16  8  seq              segment sequence number (the NNN of segment.NNN.wal)
    24  8  base_lsn         LSN of byte 0 of this segment
    32  8  capacity_bytes   the segment's preallocated size; next base = base + capacity
    40  8  created_unix_ns
    48  12 reserved         zeros
    60  4  crc32c           over bytes 0..60

Record frame (24-byte header, payload, zero padding to a multiple of 8)::

    0   4  crc32c     over header bytes 4..24 and the payload
    4   2  magic      0x5EED
    6   1  type       RecordType
    7   1  flags      0
    8   4  length     payload bytes (padding excluded)
    12  4  reserved   0
    16  8  lsn        == base_lsn + offset of this frame in its segment

All integers are little-endian.  An all-zero frame header marks the end of the
written data (segments are preallocated with zeros).
"""

from __future__ import annotations

import enum
import re
import struct
from dataclasses import dataclass

import google_crc32c

SEGMENT_MAGIC = b"STEMEWAL"
FORMAT_VERSION = 1
SEGMENT_HEADER_SIZE = 64
FRAME_HEADER_SIZE = 24
FRAME_MAGIC = 0x5EED
FRAME_ALIGN = 8

_SEG_HDR = struct.Struct("<8sHHIQQQQ12s")  # 60 bytes, then crc
_FRAME_HDR = struct.Struct("<IHBBIIQ")  # 24 bytes
_FRAME_MAGIC_BYTES = struct.pack("<H", FRAME_MAGIC)
ZERO_FRAME_HEADER = bytes(FRAME_HEADER_SIZE)

# Segment header flags.  SKIPS_LSNS: recovery started this segment beyond the previous
# one's end on purpose, because the state (SQLite) had applied records that the WAL no
# longer holds.  The LSNs between are the state's, never the WAL's; `stemedb wal verify`
# reports the gap as expected.
SEGMENT_FLAG_SKIPS_LSNS = 0x1

# One format string names segment files and one pattern parses them (etcd's habit):
# at least three digits, more once the sequence passes 999.
SEGMENT_NAME_FORMAT = "segment.{seq:03d}.wal"
SEGMENT_NAME_RE = re.compile(r"^segment\.(\d{3,})\.wal$")
PREALLOC_NAME = "segment.next.tmp"


class RecordType(enum.IntEnum):
    ASSERT = 1  # one assertion (POST /v1/assertions)
    VOTE = 2  # one vote (PUT /v1/assertions/{id}/votes/{voter})
    BATCH = 3  # an atomic batch (POST /v1/batch)
    SEAL = 4  # seal the open epoch, open the next (POST /v1/epochs)
    GENESIS = 5  # the first record of a new database: opens epoch 1
    TERM = 6  # a leader's first record in its term: {"t", "term", "node"}


RECORD_TYPES = frozenset(int(t) for t in RecordType)


def crc32c(data: bytes | memoryview, initial: int = 0) -> int:
    return int(google_crc32c.extend(initial, bytes(data))) if initial else int(
        google_crc32c.value(bytes(data)))


def segment_name(seq: int) -> str:
    if seq < 1:
        raise ValueError(f"segment sequence must be >= 1, got {seq}")
    return SEGMENT_NAME_FORMAT.format(seq=seq)


def parse_segment_name(name: str) -> int | None:
    m = SEGMENT_NAME_RE.match(name)
    return int(m.group(1)) if m else None


def align(n: int) -> int:
    return (n + FRAME_ALIGN - 1) & ~(FRAME_ALIGN - 1)


def frame_size(payload_len: int) -> int:
    return align(FRAME_HEADER_SIZE + payload_len)


@dataclass(frozen=True)
class SegmentHeader:
    seq: int
    base_lsn: int
    capacity_bytes: int
    created_unix_ns: int = 0
    format_version: int = FORMAT_VERSION
    flags: int = 0

    @property
    def skips_lsns(self) -> bool:
        """The base LSN skips LSNs on purpose (see :data:`SEGMENT_FLAG_SKIPS_LSNS`)."""
        return bool(self.flags & SEGMENT_FLAG_SKIPS_LSNS)

    @property
    def end_lsn(self) -> int:
        """The base LSN of the segment that follows this one."""
        return self.base_lsn + self.capacity_bytes

    def encode(self) -> bytes:
        body = _SEG_HDR.pack(SEGMENT_MAGIC, self.format_version, SEGMENT_HEADER_SIZE,
                             self.flags,
                             self.seq, self.base_lsn, self.capacity_bytes,
                             self.created_unix_ns, bytes(12))
        return body + struct.pack("<I", crc32c(body))

    @classmethod
    def decode(cls, data: bytes) -> SegmentHeader:
        """Parse a header; raise ValueError with the reason when it is not one."""
        if len(data) < SEGMENT_HEADER_SIZE:
            raise ValueError(f"short header: {len(data)} of {SEGMENT_HEADER_SIZE} bytes")
        body, (crc,) = data[:60], struct.unpack_from("<I", data, 60)
        magic, version, hsize, flags, seq, base, cap, created, _ = _SEG_HDR.unpack(body)
        if magic != SEGMENT_MAGIC:
            raise ValueError(f"bad magic {magic!r}")
        if crc32c(body) != crc:
            raise ValueError("header checksum mismatch")
        if version != FORMAT_VERSION:
            raise ValueError(f"unsupported format version {version}")
        if hsize != SEGMENT_HEADER_SIZE:
            raise ValueError(f"bad header size {hsize}")
        if cap <= SEGMENT_HEADER_SIZE:
            raise ValueError(f"bad capacity {cap}")
        return cls(seq=seq, base_lsn=base, capacity_bytes=cap, created_unix_ns=created,
                   format_version=version, flags=flags)


def encode_frame(rtype: int, lsn: int, payload: bytes) -> bytes:
    """One framed, padded record."""
    head = _FRAME_HDR.pack(0, FRAME_MAGIC, rtype, 0, len(payload), 0, lsn)
    crc = int(google_crc32c.extend(google_crc32c.value(head[4:]), payload))
    pad = frame_size(len(payload)) - FRAME_HEADER_SIZE - len(payload)
    return struct.pack("<I", crc) + head[4:] + payload + bytes(pad)


@dataclass(frozen=True)
class FrameHeader:
    crc: int
    magic: int
    type: int
    flags: int
    length: int
    reserved: int
    lsn: int


def decode_frame_header(data: bytes | memoryview) -> FrameHeader:
    return FrameHeader(*_FRAME_HDR.unpack_from(data, 0))


def frame_crc(header_bytes: bytes | memoryview, payload: bytes | memoryview) -> int:
    return int(google_crc32c.extend(google_crc32c.value(bytes(header_bytes[4:24])),
                                    bytes(payload)))


FRAME_MAGIC_BYTES = _FRAME_MAGIC_BYTES
FRAME_HEADER = _FRAME_HDR  # struct: crc, magic, type, flags, length, reserved, lsn
