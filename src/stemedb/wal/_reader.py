"""Reading segments: frame validation, torn-tail vs corruption, and the segment chain."""

from __future__ import annotations

import bisect
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

import google_crc32c

from .. import limits
from ..storage import File, FileSystem
from ._format import (
    FRAME_ALIGN,
    FRAME_HEADER,
    FRAME_HEADER_SIZE,
    FRAME_MAGIC,
    FRAME_MAGIC_BYTES,
    RECORD_TYPES,
    SEGMENT_HEADER_SIZE,
    ZERO_FRAME_HEADER,
    SegmentHeader,
    decode_frame_header,
    frame_crc,
    frame_size,
    parse_segment_name,
    segment_name,
)

# Fault kinds, as printed by `stemedb wal verify`.
TORN_TAIL = "torn_tail"
CORRUPT_RECORD = "corrupt_record"
BAD_HEADER = "bad_header"
GAP = "gap"
MISSING_SEGMENT = "missing_segment"


class Record(NamedTuple):
    """One valid record.  A tuple, not a dataclass: replay makes one per record."""

    lsn: int
    type: int
    payload: bytes
    segment: str
    offset: int

    @property
    def size(self) -> int:
        return frame_size(len(self.payload))

    @property
    def end_lsn(self) -> int:
        return self.lsn + self.size


# A valid record as replay takes it: (lsn, type, payload, offset in its segment).
Frame = tuple[int, int, bytes, int]

_ZERO_PADS = tuple(bytes(n) for n in range(FRAME_ALIGN))
# The frame header's fields that the scan checks: crc, magic, type, length, lsn (the
# flags and reserved bytes are skipped, as the full header's decoding ignores them).
_FRAME_FIELDS = struct.Struct("<IHBxI4xQ")
assert _FRAME_FIELDS.size == FRAME_HEADER_SIZE


@dataclass(frozen=True)
class Fault:
    kind: str
    segment: str
    offset: int
    lsn: int | None
    reason: str
    # A gap the server made on purpose (the segment header's SKIPS_LSNS flag).
    expected: bool = False

    def as_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "segment": self.segment, "offset": self.offset,
                "lsn": self.lsn, "reason": self.reason}


_ZEROS = bytes(limits.replay_read_bytes_max)


def is_zero(chunk: bytes) -> bool:
    """True when every byte is zero (a memcmp, not a byte-by-byte strip)."""
    n = len(chunk)
    if n <= len(_ZEROS):
        return chunk == _ZEROS[:n] if n != len(_ZEROS) else chunk == _ZEROS
    return chunk.count(0) == n


_ZERO_PIECE_BYTES = 64 * 1024  # trailing zeros are compared this many bytes at a time
_ZERO_PIECE = bytes(_ZERO_PIECE_BYTES)


def unpadded_len(chunk: bytes) -> int:
    """``len(chunk.rstrip(b"\\0"))``, with the trailing zeros compared a piece at a time
    (a memcmp) instead of stripped byte by byte: a preallocated segment's tail is
    megabytes of zeros."""
    end = len(chunk)
    while end > _ZERO_PIECE_BYTES:  # bounded: end shrinks by a piece per pass
        lo = end - _ZERO_PIECE_BYTES
        if chunk[lo:end] != _ZERO_PIECE:
            break
        end = lo
    return len(chunk[:end].rstrip(b"\0"))


class SegmentScanner:
    """Streams the valid records of one segment in bounded memory.

    After :meth:`records` is exhausted, ``end_offset`` is the offset just past the last
    valid record, and ``damage`` describes the first bad byte range, if any:
    ``(offset, reason, followed_by_valid_record)``.  Whether damage is a torn tail or
    corruption depends on where the segment sits in the log, which the caller knows.
    """

    def __init__(self, fs: FileSystem, path: str, *,
                 read_bytes_max: int = limits.replay_read_bytes_max,
                 zeros_from: int | None = None) -> None:
        """``zeros_from``: an offset from which the caller has just read the segment
        and found only zeros (recovery finds where the last segment's data ends before
        it replays it), so the search for data after the last record stops there
        instead of reading the preallocated tail a second time."""
        self.path = path
        self.name = os.path.basename(path)
        self._read_bytes_max = read_bytes_max
        self._file: File = fs.open(path)
        self.file_size = self._file.size()
        raw = self._file.pread(SEGMENT_HEADER_SIZE, 0)
        try:
            self.header = SegmentHeader.decode(raw)
        except ValueError as exc:
            self._file.close()
            raise HeaderError(self.name, str(exc), all_zero=not raw.strip(b"\0")) from exc
        self.limit = min(self.file_size, self.header.capacity_bytes)
        self._zeros_from = self.limit if zeros_from is None else max(
            SEGMENT_HEADER_SIZE, min(self.limit, zeros_from))
        self.end_offset = SEGMENT_HEADER_SIZE
        self.damage: tuple[int, str, bool] | None = None

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> SegmentScanner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- frame checks -------------------------------------------------------------
    def _check_frame(self, off: int, head: bytes) -> tuple[str | None, int]:
        """Return (reason it is bad or None, payload length) for a frame header at off."""
        _crc, magic, rtype, _flags, length, _res, lsn = FRAME_HEADER.unpack_from(head)
        return self._check_fields(off, magic, rtype, length, lsn), length

    def _check_fields(self, off: int, magic: int, rtype: int, length: int, lsn: int
                      ) -> str | None:
        if magic != FRAME_MAGIC:
            return f"bad frame magic 0x{magic:04x}"
        if rtype not in RECORD_TYPES:
            return f"unknown record type {rtype}"
        want = self.header.base_lsn + off
        if lsn != want:
            return f"frame LSN {lsn} does not match its position (LSN {want})"
        if off + FRAME_HEADER_SIZE + length > self.limit:
            return f"length {length} runs past the end of the segment ({self.limit} bytes)"
        return None

    def _valid_frame_at(self, off: int) -> bool:
        if off + FRAME_HEADER_SIZE > self.limit:
            return False
        head = self._file.pread(FRAME_HEADER_SIZE, off)
        if len(head) < FRAME_HEADER_SIZE:
            return False
        reason, length = self._check_frame(off, head)
        if reason is not None:
            return False
        payload = self._file.pread(length, off + FRAME_HEADER_SIZE)
        return len(payload) == length and frame_crc(head, payload) == decode_frame_header(
            head).crc

    def find_valid_frame_after(self, off: int) -> int | None:
        """Offset of the first valid frame after ``off``, scanning for the frame magic."""
        pos = off + FRAME_ALIGN
        chunk_max = self._read_bytes_max
        # Bounded: each pass advances pos by at least one chunk minus the overlap.
        while pos < self.limit:
            chunk = self._file.pread(min(chunk_max, self.limit - pos), pos)
            if not chunk:
                return None
            i = chunk.find(FRAME_MAGIC_BYTES)
            while i != -1:
                cand = pos + i - 4
                if cand > off and cand % FRAME_ALIGN == 0 and self._valid_frame_at(cand):
                    return cand
                i = chunk.find(FRAME_MAGIC_BYTES, i + 1)
            if len(chunk) < chunk_max:
                return None
            pos += len(chunk) - 8
        return None

    def _nonzero_after(self, off: int) -> int | None:
        pos = off
        end = self._zeros_from  # all zeros from there to the limit
        while pos < end:
            chunk = self._file.pread(min(self._read_bytes_max, end - pos), pos)
            if not chunk:
                return None
            if not is_zero(chunk):
                return pos + len(chunk) - len(chunk.lstrip(b"\0"))
            pos += len(chunk)
        return None

    def _mark_damage(self, off: int, reason: str) -> None:
        later = self.find_valid_frame_after(off)
        if later is not None:
            reason = f"{reason}; a valid record follows at offset {later}"
        self.damage = (off, reason, later is not None)

    # -- iteration ----------------------------------------------------------------
    def records(self, start_offset: int = SEGMENT_HEADER_SIZE) -> Iterator[Record]:
        """The valid records from ``start_offset`` on (see the class docstring)."""
        name = self.name
        for batch in self.batches(start_offset, 1, 0):
            lsn, rtype, payload, off = batch[0]
            yield Record(lsn, rtype, payload, name, off)

    def batches(self, start_offset: int = SEGMENT_HEADER_SIZE, max_records: int = 1,
                max_bytes: int = 0) -> Iterator[list[Frame]]:
        """The valid records from ``start_offset`` on, as lists of :data:`Frame` tuples.

        A list is handed over once it holds ``max_records`` frames or ``max_bytes``
        payload bytes (whichever comes first; the last one may hold fewer), so replay
        gets its groups without a generator step and a ``Record`` per frame.

        The per-frame work is small because replay runs it for every record: one
        ``unpack_from`` on the read buffer, the field checks, one CRC call over the
        header's bytes 4..24 and the payload (contiguous in the buffer, so one slice),
        and one ``startswith`` for the zero padding.  A frame that fails a check, or
        that does not fit in the buffer, goes through the slower path with the same
        verdicts.
        """
        off = max(start_offset, SEGMENT_HEADER_SIZE)
        self.end_offset = off
        limit = self.limit
        base_lsn = self.header.base_lsn
        unpack_head = _FRAME_FIELDS.unpack_from
        crc_of = google_crc32c.value
        read_max = self._read_bytes_max
        hsize = FRAME_HEADER_SIZE
        zero_pads = _ZERO_PADS
        align_mask = FRAME_ALIGN - 1
        batch: list[Frame] = []
        batch_bytes = 0
        # The loop works in offsets relative to the read buffer: ``rel`` is the frame's,
        # ``buf_off`` the buffer's in the segment, and the LSN and limit checks are made
        # against values shifted once per read (``lsn_at``, ``rel_limit``).
        buf = b""
        buf_off = off
        rel = nbuf = 0
        lsn_at = base_lsn + off
        rel_limit = limit - off
        while True:
            body = rel + hsize
            if body > nbuf:
                # (The buffer never reaches past the limit, so a frame header that
                # does not fit before the limit always lands here.)
                off = buf_off + rel
                if off + hsize > limit:
                    nz = self._nonzero_after(off)
                    if nz is not None:
                        self._mark_damage(off, f"{limit - off} stray bytes after the last "
                                               "record")
                    break
                buf = self._file.pread(min(read_max, limit - off), off)
                buf_off, rel, body = off, 0, hsize
                nbuf = len(buf)
                lsn_at = base_lsn + off
                rel_limit = limit - off
                if nbuf < hsize:
                    if buf.strip(b"\0"):
                        self._mark_damage(off, "truncated frame header")
                    break
            crc, magic, rtype, length, lsn = unpack_head(buf, rel)
            end = body + length
            if (magic != FRAME_MAGIC or rtype not in RECORD_TYPES or lsn != lsn_at + rel
                    or end > rel_limit):
                off = buf_off + rel
                if buf[rel:body] == ZERO_FRAME_HEADER:
                    nz = self._nonzero_after(off)
                    if nz is not None:
                        self._mark_damage(off, f"zeroed bytes from offset {off}, then data "
                                               f"at {nz}")
                    break
                reason = self._check_fields(off, magic, rtype, length, lsn)
                assert reason is not None
                self._mark_damage(off, reason)
                break
            npad = -length & align_mask  # hsize is a multiple of the alignment
            if end <= nbuf:
                if crc_of(buf[rel + 4:end]) != crc:
                    self._mark_damage(buf_off + rel, "checksum mismatch")
                    break
                # The checksum does not cover the padding to the next 8-byte boundary:
                # the writer always pads with zeros, so anything else there is damage.
                # (Padding cut off by the end of the buffer is checked as far as read.)
                if npad and not buf.startswith(zero_pads[npad], end) and (
                        buf[end:end + npad].strip(b"\0")):
                    self._mark_damage(buf_off + rel, "non-zero padding after the record")
                    break
                batch.append((lsn, rtype, buf[body:end], lsn - base_lsn))
            else:
                off = buf_off + rel
                payload = self._file.pread(length, off + hsize)
                if len(payload) < length:
                    self._mark_damage(off, "record cut short by the end of the file")
                    break
                if frame_crc(buf[rel:body], payload) != crc:
                    self._mark_damage(off, "checksum mismatch")
                    break
                pad = self._file.pread(npad, off + hsize + length) if npad else b""
                if pad.strip(b"\0"):
                    self._mark_damage(off, "non-zero padding after the record")
                    break
                batch.append((lsn, rtype, payload, off))
            rel = end + npad
            batch_bytes += length
            if batch_bytes >= max_bytes or len(batch) >= max_records:
                self.end_offset = buf_off + rel
                yield batch
                batch = []
                batch_bytes = 0
        self.end_offset = buf_off + rel  # the first frame not taken
        if batch:
            yield batch


class HeaderError(Exception):
    def __init__(self, segment: str, reason: str, *, all_zero: bool) -> None:
        super().__init__(f"segment {segment}: {reason}")
        self.segment = segment
        self.reason = reason
        self.all_zero = all_zero


@dataclass
class SegmentInfo:
    seq: int
    name: str
    path: str
    header: SegmentHeader | None = None
    header_error: str | None = None
    file_size: int = 0


@dataclass
class Chain:
    """The segments of a WAL directory, in order, with chain faults."""

    segments: list[SegmentInfo] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)

    def bases(self) -> list[int]:
        # A segment with an unreadable header is placed where its predecessor ends.
        out: list[int] = []
        for s in self.segments:
            if s.header is not None:
                out.append(s.header.base_lsn)
            else:
                prev = self.segments[len(out) - 1].header if out else None
                out.append(prev.end_lsn if prev is not None else (out[-1] if out else 0))
        return out

    def locate(self, lsn: int) -> int:
        """Index of the segment holding ``lsn`` (bisect over base LSNs, no scan)."""
        i = bisect.bisect_right(self.bases(), lsn) - 1
        return max(i, 0)


def list_segment_names(fs: FileSystem, wal_dir: str) -> list[tuple[int, str]]:
    out = []
    for name in fs.listdir(wal_dir):
        seq = parse_segment_name(name)
        if seq is not None:
            out.append((seq, name))
    out.sort()
    return out


def load_chain(fs: FileSystem, wal_dir: str) -> Chain:
    """Read every segment header and check sequence and LSN continuity."""
    chain = Chain()
    prev: SegmentInfo | None = None
    for seq, name in list_segment_names(fs, wal_dir):
        path = os.path.join(wal_dir, name)
        info = SegmentInfo(seq=seq, name=name, path=path)
        f = fs.open(path)
        try:
            info.file_size = f.size()
            raw = f.pread(SEGMENT_HEADER_SIZE, 0)
        finally:
            f.close()
        try:
            info.header = SegmentHeader.decode(raw)
            if info.header.seq != seq:
                info.header_error = f"header says segment {info.header.seq}, name says {seq}"
        except ValueError as exc:
            info.header_error = str(exc)
        if prev is not None:
            if seq != prev.seq + 1:
                missing = ", ".join(segment_name(s) for s in range(prev.seq + 1, seq))
                chain.faults.append(Fault(MISSING_SEGMENT, name, 0, None,
                                          f"missing segment(s) before it: {missing}"))
            elif prev.header and info.header and info.header.base_lsn != prev.header.end_lsn:
                expected = (info.header.skips_lsns
                            and info.header.base_lsn > prev.header.end_lsn)
                why = (" (flagged: the server skipped LSNs the state had applied but the "
                       "WAL no longer held)" if expected else "")
                chain.faults.append(Fault(
                    GAP, name, 0, info.header.base_lsn,
                    f"base LSN {info.header.base_lsn} does not continue "
                    f"{prev.name} (which ends at LSN {prev.header.end_lsn}){why}",
                    expected=expected))
        chain.segments.append(info)
        prev = info
    return chain
