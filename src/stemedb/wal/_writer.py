"""Appending to the WAL: planned LSNs, rotation and segment preallocation."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

from ..storage import File, FileSystem
from ._format import (
    FRAME_HEADER_SIZE,
    PREALLOC_NAME,
    SEGMENT_FLAG_SKIPS_LSNS,
    SEGMENT_HEADER_SIZE,
    SegmentHeader,
    encode_frame,
    frame_size,
    segment_name,
)

log = logging.getLogger("stemedb.wal")


class WalOpError(OSError):
    """An OSError from a WAL operation, tagged with the operation and the segment."""

    def __init__(self, operation: str, segment: str, cause: OSError) -> None:
        super().__init__(cause.errno, f"{operation} {segment}: {cause.strerror or cause}")
        self.operation = operation
        self.segment = segment
        self.cause = cause


class WalWriter:
    """Owns the tail segment.  Used by exactly one thread (the engine's writer).

    LSNs are planned before bytes are written (:meth:`plan`), because the state
    machine stores each record's LSN while validating the request; :meth:`write`
    then appends frames exactly at the planned positions.
    """

    def __init__(self, fs: FileSystem, wal_dir: str, *, segment_size_bytes: int,
                 background_preallocate: bool = True,
                 on_rotate: Callable[[str], None] | None = None,
                 clock_ns: Callable[[], int] = time.time_ns) -> None:
        self.fs = fs
        self.wal_dir = wal_dir
        self.segment_size_bytes = segment_size_bytes
        self._background = background_preallocate
        self._on_rotate = on_rotate
        self._clock_ns = clock_ns
        self._file: File | None = None
        self.header: SegmentHeader | None = None
        self.offset = 0  # append offset in the current segment
        self.synced_offset = 0
        # The end of the fsynced records, as one int that other threads may read (the
        # archiver); ``synced_lsn`` is the writer thread's, and passes through a
        # rotation in two steps.  It never goes back.
        self.synced_end_lsn = 0
        self._attempt_end = 0
        self._plan_header: SegmentHeader | None = None
        self._plan_offset = 0
        self._prealloc_lock = threading.Lock()
        self._prealloc_thread: threading.Thread | None = None
        self._prealloc_for: tuple[int, int] | None = None  # (seq, base) of the prepared file
        self.prealloc_error: OSError | None = None

    # -- opening ------------------------------------------------------------------
    @property
    def segment(self) -> str:
        return segment_name(self.header.seq) if self.header else "segment.001.wal"

    def path(self, seq: int) -> str:
        return os.path.join(self.wal_dir, segment_name(seq))

    def create_first(self, seq: int = 1, base_lsn: int = 0) -> None:
        self._install_new_segment(SegmentHeader(seq, base_lsn, self.segment_size_bytes,
                                                self._clock_ns()))
        self.synced_end_lsn = max(self.synced_end_lsn, base_lsn + SEGMENT_HEADER_SIZE)
        self._reset_plan()

    def open_tail(self, header: SegmentHeader, end_offset: int) -> None:
        """Continue appending to an existing segment at end_offset."""
        path = self.path(header.seq)
        try:
            f = self.fs.open(path)
            if f.size() < header.capacity_bytes:
                f.allocate(header.capacity_bytes)
                f.sync()
            f.seek_append(end_offset)
        except OSError as exc:
            raise WalOpError("open", segment_name(header.seq), exc) from exc
        self._file = f
        self.header = header
        self.offset = self.synced_offset = end_offset
        # What recovery found on disk is the log (it replays it as such).
        self.synced_end_lsn = max(self.synced_end_lsn, header.base_lsn + end_offset)
        self._reset_plan()
        self._start_prealloc()

    def _reset_plan(self) -> None:
        self._plan_header = self.header
        self._plan_offset = self.offset

    @property
    def end_lsn(self) -> int:
        assert self.header is not None
        return self.header.base_lsn + self.offset

    @property
    def synced_lsn(self) -> int:
        assert self.header is not None
        return self.header.base_lsn + self.synced_offset

    def record_capacity(self) -> int:
        return self.segment_size_bytes - SEGMENT_HEADER_SIZE - FRAME_HEADER_SIZE - 8

    # -- planning -----------------------------------------------------------------
    def plan_mark(self) -> tuple[SegmentHeader | None, int]:
        return self._plan_header, self._plan_offset

    def plan_reset_to(self, mark: tuple[SegmentHeader | None, int]) -> None:
        self._plan_header, self._plan_offset = mark

    def plan(self, payload_len: int) -> int:
        """Reserve the next frame and return its LSN."""
        assert self._plan_header is not None
        size = frame_size(payload_len)
        if size > self.segment_size_bytes - SEGMENT_HEADER_SIZE:
            raise ValueError(f"record of {size} bytes cannot fit a segment of "
                             f"{self.segment_size_bytes} bytes")
        if self._plan_offset + size > self._plan_header.capacity_bytes:
            h = self._plan_header
            self._plan_header = SegmentHeader(h.seq + 1, h.end_lsn, self.segment_size_bytes, 0)
            self._plan_offset = SEGMENT_HEADER_SIZE
        lsn = self._plan_header.base_lsn + self._plan_offset
        self._plan_offset += size
        return lsn

    # -- writing ------------------------------------------------------------------
    def write(self, frames: list[tuple[int, int, bytes]], *, follow: bool = False) -> None:
        """Append (type, lsn, payload) frames at their planned LSNs; no fsync.

        ``follow``: the frames are another log's (a replica writes its leader's records
        at the leader's LSNs).  A frame past this segment opens the next segment at the
        frame's own segment base, so the segments line up with the leader's even after
        a gap the leader's log has (its ``SKIPS_LSNS`` segments)."""
        assert self.header is not None and self._file is not None
        pending: list[bytes] = []
        want = self.header.base_lsn + self.offset
        for rtype, lsn, payload in frames:
            if lsn >= self.header.end_lsn:
                self._flush(pending)
                pending = []
                self.rotate(lsn - SEGMENT_HEADER_SIZE if follow else 0)
                want = self.header.base_lsn + self.offset
            if lsn != want:
                raise AssertionError(f"planned LSN {lsn} but the log is at {want}")
            frame = encode_frame(rtype, lsn, payload)
            pending.append(frame)
            want += len(frame)
        self._flush(pending)
        self._reset_plan()

    def _flush(self, frames: list[bytes]) -> None:
        if not frames:
            return
        assert self._file is not None
        data = b"".join(frames)
        self._attempt_end = self.offset + len(data)
        try:
            self._file.append(data)
        except OSError as exc:
            raise WalOpError("write", self.segment, exc) from exc
        self.offset += len(data)

    def sync(self) -> None:
        assert self._file is not None
        if self.synced_offset == self.offset:
            return
        try:
            self._file.sync()
        except OSError as exc:
            raise WalOpError("fsync", self.segment, exc) from exc
        self.synced_offset = self.offset
        assert self.header is not None
        self.synced_end_lsn = self.header.base_lsn + self.offset

    def discard_unsynced(self) -> int:
        """Best effort, after a failed write or fsync: zero what was written since the
        last successful sync, so that a restart does not replay records whose writers
        were told they failed.  Only for fsync=always, where nothing unsynced was
        acknowledged.  No fsync: after a failure the kernel's word is worth nothing;
        this only keeps the page cache from resurrecting the batch.  Returns bytes
        zeroed (0 if the attempt itself failed)."""
        if self._file is None:
            return 0
        end = max(self.offset, self._attempt_end)
        n = end - self.synced_offset
        if n <= 0:
            return 0
        try:
            self._file.pwrite(bytes(n), self.synced_offset)
        except OSError:
            return 0
        return n

    def needs_sync(self) -> bool:
        return self.synced_offset != self.offset

    # -- rotation -----------------------------------------------------------------
    def rotate(self, min_base_lsn: int = 0) -> None:
        """Close the full segment (synced) and switch to the next one.

        ``min_base_lsn`` lets recovery start the next segment beyond LSNs the state has
        already seen, so LSNs never go backwards; such a segment carries
        ``SEGMENT_FLAG_SKIPS_LSNS`` and `stemedb wal verify` reports its gap as expected.
        """
        assert self.header is not None and self._file is not None
        self.sync()  # a rotated-away segment is always durable: only the last can be torn
        base = max(self.header.end_lsn, min_base_lsn)
        flags = SEGMENT_FLAG_SKIPS_LSNS if base > self.header.end_lsn else 0
        nxt = SegmentHeader(self.header.seq + 1, base, self.segment_size_bytes,
                            self._clock_ns(), flags=flags)
        old = self._file
        self._install_new_segment(nxt)
        old.close()
        if self._plan_header is not None and self._plan_header.seq < nxt.seq:
            self._reset_plan()
        if self._on_rotate:
            self._on_rotate(segment_name(nxt.seq))

    def _install_new_segment(self, header: SegmentHeader) -> None:
        self._wait_prealloc()
        name = segment_name(header.seq)
        tmp = os.path.join(self.wal_dir, PREALLOC_NAME)
        final = self.path(header.seq)
        try:
            if self._prealloc_for != (header.seq, header.base_lsn) or not self.fs.exists(tmp):
                self._prepare(tmp, header)
            self._prealloc_for = None
            self.fs.rename(tmp, final)
            self.fs.sync_dir(self.wal_dir)
            f = self.fs.open(final)
            f.seek_append(SEGMENT_HEADER_SIZE)
        except OSError as exc:
            raise WalOpError("rotate", name, exc) from exc
        self._file = f
        self.header = header
        self.offset = self.synced_offset = SEGMENT_HEADER_SIZE
        self._start_prealloc()

    def _prepare(self, tmp: str, header: SegmentHeader) -> None:
        if self.fs.exists(tmp):
            self.fs.remove(tmp)
        f = self.fs.open(tmp, create=True, exclusive=True)
        try:
            f.allocate(header.capacity_bytes)
            f.pwrite(header.encode(), 0)
            f.sync()
        finally:
            f.close()

    def _start_prealloc(self) -> None:
        assert self.header is not None
        nxt = SegmentHeader(self.header.seq + 1, self.header.end_lsn, self.segment_size_bytes,
                            self._clock_ns())
        if not self._background:
            return  # prepared inline at rotation: deterministic for simulation

        def run() -> None:
            with self._prealloc_lock:
                try:
                    self._prepare(os.path.join(self.wal_dir, PREALLOC_NAME), nxt)
                    self._prealloc_for = (nxt.seq, nxt.base_lsn)
                except OSError as exc:  # retried inline at rotation, loudly if it fails
                    self.prealloc_error = exc
                    log.warning("WAL preallocation of %s failed: %s", segment_name(nxt.seq),
                                exc)

        t = threading.Thread(target=run, name="stemedb-wal-prealloc", daemon=True)
        self._prealloc_thread = t
        t.start()

    def _wait_prealloc(self) -> None:
        t = self._prealloc_thread
        if t is not None:
            t.join()
            self._prealloc_thread = None

    def close(self) -> None:
        self._wait_prealloc()
        if self._file is not None:
            self._file.close()
            self._file = None
