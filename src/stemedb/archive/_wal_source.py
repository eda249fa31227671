"""Reading durable WAL from the segments, for the archiver.

The archiver reads the segments itself, with its own file handles, never past the
durable LSN it is given: those bytes were fdatasynced and are not written again, so
it needs no lock with the writer.  Segments at or after its hold are never deleted
under it.  Every frame is checked (CRC-32C, LSN, type) before it is shipped: damaged
WAL is reported, never archived.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import struct
from typing import NamedTuple

from ..errors import ArchiveError
from ..storage import FileSystem
from ..wal import (
    FRAME_HEADER_SIZE,
    SEGMENT_HEADER_SIZE,
    SegmentHeader,
    decode_frame_header,
    list_segment_names,
    segment_name,
)
from ._format import FrameFault, check_frame

_ZERO_HEADER = bytes(FRAME_HEADER_SIZE)


class WalChunk(NamedTuple):
    """Whole records from ``start_lsn`` to ``end_lsn`` (the end of the last one)."""

    start_lsn: int
    end_lsn: int
    data: bytes
    records: int
    first_record_lsn: int


class WalGone(ArchiveError):
    """The WAL the archiver needs is no longer on this node."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reason="wal_read")


class WalSource:
    def __init__(self, fs: FileSystem, wal_dir: str) -> None:
        self.fs = fs
        self.wal_dir = wal_dir
        self._headers: dict[int, SegmentHeader] = {}

    def _segments(self) -> list[SegmentHeader]:
        """Headers of the segments on disk, in order (headers are read once each)."""
        out = []
        names = list_segment_names(self.fs, self.wal_dir)
        seen = set()
        for seq, name in names:
            seen.add(seq)
            h = self._headers.get(seq)
            if h is None:
                f = self.fs.open(os.path.join(self.wal_dir, name))
                try:
                    raw = f.pread(SEGMENT_HEADER_SIZE, 0)
                finally:
                    f.close()
                try:
                    h = SegmentHeader.decode(raw)
                except ValueError as exc:
                    raise ArchiveError(f"WAL segment {name}: {exc}",
                                       reason="wal_read") from exc
                self._headers[seq] = h
            out.append(h)
        for seq in list(self._headers):
            if seq not in seen:
                del self._headers[seq]
        return out

    def first_lsn(self) -> int:
        """The base LSN of the oldest segment on disk (0 when there is none)."""
        segs = self._segments()
        return segs[0].base_lsn if segs else 0

    def read(self, start_lsn: int, durable_lsn: int, bytes_max: int) -> WalChunk:
        """Whole records from ``start_lsn`` (a record boundary, or a place with no
        record before the next segment) up to ``durable_lsn``, at most ``bytes_max``
        bytes of frames.  ``start_lsn < durable_lsn``, and ``bytes_max`` holds the
        largest record, so a chunk has at least one."""
        segs = self._segments()
        if not segs or start_lsn < segs[0].base_lsn:
            first = segs[0].base_lsn if segs else None
            raise WalGone(f"the WAL from LSN {start_lsn} is no longer on this node "
                          f"(the oldest segment starts at LSN {first})")
        parts: list[bytes] = []
        size = records = 0
        first_record = -1
        end = start_lsn
        pos = start_lsn
        for h in segs:  # bounded by the segments on disk
            if h.end_lsn <= pos:
                continue
            if durable_lsn <= h.base_lsn or size >= bytes_max:
                break
            seg = segment_name(h.seq)
            lo = max(pos - h.base_lsn, SEGMENT_HEADER_SIZE)
            hi = min(h.capacity_bytes, durable_lsn - h.base_lsn)
            if hi <= lo:
                pos = h.end_lsn
                continue
            want = min(hi - lo, bytes_max - size)
            capped = want < hi - lo  # the byte cap stops this read before the durable end
            f = self.fs.open(os.path.join(self.wal_dir, seg))
            try:
                buf = f.pread(want, lo)
            finally:
                f.close()
            if len(buf) < want:
                raise ArchiveError(f"WAL {seg}: {len(buf)} of {want} durable bytes read at "
                                   f"offset {lo}", reason="wal_read")
            at, done = 0, False
            while True:  # bounded: each pass takes one frame or leaves
                if at + FRAME_HEADER_SIZE > len(buf):
                    # Everything read is taken: the durable end, the byte cap, or the
                    # few bytes at the end of a full segment that no frame fits in.
                    done = capped or hi < h.capacity_bytes
                    break
                if buf[at:at + FRAME_HEADER_SIZE] == _ZERO_HEADER:
                    if hi < h.capacity_bytes and not capped:
                        raise ArchiveError(f"WAL {seg}: zeros at offset {lo + at}, before "
                                           f"the durable LSN {durable_lsn}",
                                           reason="wal_read")
                    break  # the end of the data in a full segment: on to the next
                try:
                    lsn, _rtype, fsize = check_frame(buf, at)
                except FrameFault as exc:
                    if capped and "cut short" in exc.reason and records:
                        done = True  # the byte cap: that record opens the next object
                        break
                    raise ArchiveError(f"WAL {seg} corrupt at offset {lo + at}: "
                                       f"{exc.reason}", reason="wal_read",
                                       hint=f"stemedb wal verify --file {seg}") from exc
                if lsn != h.base_lsn + lo + at:
                    raise ArchiveError(f"WAL {seg} corrupt at offset {lo + at}: frame LSN "
                                       f"{lsn} is not its position", reason="wal_read")
                if first_record < 0:
                    first_record = lsn
                records += 1
                at += fsize
                end = lsn + fsize
            if at:
                parts.append(buf[:at])
                size += at
            if done or end >= durable_lsn:
                break
            pos = h.end_lsn
        if records == 0:
            raise ArchiveError(f"no WAL record between LSN {start_lsn} and the durable LSN "
                               f"{durable_lsn}", reason="wal_read")
        return WalChunk(start_lsn, end, b"".join(parts), records, first_record)

    def record_time(self, lsn: int) -> float | None:
        """The commit time (``t``) of the record at ``lsn``, or None when it cannot be
        read (it is only for the lag gauge)."""
        for h in self._segments():
            if h.base_lsn <= lsn < h.end_lsn:
                path = os.path.join(self.wal_dir, segment_name(h.seq))
                try:
                    f = self.fs.open(path)
                    try:
                        head = f.pread(FRAME_HEADER_SIZE, lsn - h.base_lsn)
                        length = decode_frame_header(head).length
                        payload = f.pread(length, lsn - h.base_lsn + FRAME_HEADER_SIZE)
                    finally:
                        f.close()
                except (OSError, ValueError, struct.error):
                    return None
                return record_unix(payload)
        return None


def record_unix(payload: bytes) -> float | None:
    """The ``t`` of a record's JSON payload as Unix seconds."""
    try:
        t = json.loads(payload)["t"]
        return dt.datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp()
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


__all__ = ["WalChunk", "WalGone", "WalSource", "record_unix"]
