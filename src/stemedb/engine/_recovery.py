"""Recovery: open the state, find where it stands in the WAL, replay the rest.

Replay hands the records it scans, segment by segment, to the applier
(:meth:`stemedb.engine._applier.Applier.apply`), the same code that applies live
writes; this module decides only *what* to replay: where to start
(``applied_end_lsn``), which segments form the chain, what a torn tail is (cut, saved
aside) and what is corruption (stop, or cut at it in ``point-in-time`` mode), and where
the writer continues.  It runs before the server is ready, on the caller's thread, and
reports its progress as it goes (``/readyz``, ``stemedb_replay_*``).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Callable
from typing import Any

from .. import limits
from .. import state as st
from ..errors import CorruptionError
from ..metrics import Metrics
from ..storage import FileSystem
from ..wal import (
    SEGMENT_HEADER_SIZE,
    SegmentHeader,
    SegmentScanner,
    WalWriter,
    is_zero,
    load_chain,
    segment_name,
    unpadded_len,
)
from ._applier import Applier
from ._retention import Retention, SegMeta
from ._types import EngineConfig, RecoveryReport, ReplayProgress

log = logging.getLogger("stemedb.engine")


class Recovery:
    """One recovery of one data directory: builds the writer at the WAL's valid end,
    with the state caught up to it."""

    def __init__(self, config: EngineConfig, fs: FileSystem, wal_dir: str,
                 metrics: Metrics, conn: sqlite3.Connection, applier: Applier,
                 retention: Retention, writer: WalWriter, progress: ReplayProgress) -> None:
        self.config = config
        self.fs = fs
        self.wal_dir = wal_dir
        self.m = metrics
        self.conn = conn
        self.applier = applier
        self.retention = retention
        self.writer = writer
        self.progress = progress
        self.needs_genesis = False

    def run(self, progress: Callable[[ReplayProgress], None] | None, t0: float
            ) -> RecoveryReport:
        conn, writer = self.conn, self.writer
        applied = st.applied_end_lsn(conn)
        self.retention.checkpoint_lsn = int(st.get_meta(conn, "checkpoint_lsn") or 0)
        chain = load_chain(self.fs, self.wal_dir)
        segs = chain.segments
        if not segs:
            if applied is not None:
                raise CorruptionError(segment_name(1), 0,
                                      f"the WAL directory {self.wal_dir} has no segments but "
                                      f"the state has applied up to LSN {applied}",
                                      kind="missing_segment")
            writer.create_first()
            assert writer.header is not None
            self.retention.segments = [SegMeta(1, 0, writer.header.capacity_bytes)]
            self.needs_genesis = True
            return RecoveryReport(0, writer.end_lsn, 0, 0, time.monotonic() - t0, created=True)
        # Where replay starts.
        first = segs[0]
        if first.header is None:
            raise CorruptionError(first.name, 0, f"bad segment header: {first.header_error}",
                                  kind="bad_header")
        start = applied if applied is not None else first.header.base_lsn + SEGMENT_HEADER_SIZE
        if applied is None and first.seq != 1:
            raise CorruptionError(first.name, 0, "the state is empty but the WAL does not "
                                  "start at segment.001.wal", kind="missing_segment")
        if start < first.header.base_lsn:
            raise CorruptionError(first.name, 0, f"replay must start at LSN {start} but the "
                                  f"oldest segment starts at LSN {first.header.base_lsn}",
                                  kind="missing_segment")
        idx = chain.locate(start)
        report = RecoveryReport(start, start, 0, 0, 0.0)
        # Chain faults after the start segment are corruption (or the point-in-time cut).
        cut_at: int | None = None
        for fault in chain.faults:
            fidx = next(i for i, s in enumerate(segs) if s.name == fault.segment)
            if fidx <= idx:
                continue
            if self.config.recovery_mode == "point-in-time":
                cut_at = fidx if cut_at is None else min(cut_at, fidx)
            else:
                raise CorruptionError(fault.segment, 0, fault.reason, kind=fault.kind)
        for i in range(idx, len(segs) if cut_at is None else cut_at):
            s = segs[i]
            if s.header is None or s.header_error:
                is_last = i == len(segs) - 1
                if is_last and self._all_zero(s.path):
                    # A segment whose header never became durable holds nothing durable.
                    report.quarantined.append(self._quarantine(s.name, "torn"))
                    segs = segs[:i]
                    break
                if self.config.recovery_mode == "point-in-time":
                    cut_at = i
                    break
                raise CorruptionError(s.name, 0, f"bad segment header: {s.header_error}",
                                      kind="bad_header")
        if cut_at is not None:
            for s in segs[cut_at:]:
                report.quarantined.append(self._quarantine(s.name, "corrupted"))
            segs = segs[:cut_at]
        if not segs or idx >= len(segs):
            raise CorruptionError(first.name, 0, "no readable segment holds the replay start "
                                  f"LSN {start}", kind="missing_segment")
        self.retention.segments = [SegMeta(s.seq, s.header.base_lsn, s.header.capacity_bytes)
                                   for s in segs if s.header]
        last = segs[-1]
        assert last.header is not None
        applied_last = st.get_meta(conn, "applied_last_lsn")
        if applied is not None and applied_last is not None and not self._frame_ends_at(
                segs, chain.locate(int(applied_last)), int(applied_last), applied):
            # The state holds records the WAL lost: acknowledged before fsync
            # (fsync=interval or never) and then lost in a crash.  Nothing after them
            # can be trusted in this segment; continue the log in a fresh segment.
            end = self._estimate_end(last.path, last.header)
            log.warning("the state is ahead of the WAL: the record at LSN %s is not in the "
                        "WAL (fsync=%s loss window); continuing in a new segment after %s",
                        applied_last, self.config.fsync, last.name)
            writer.open_tail(last.header, max(SEGMENT_HEADER_SIZE, end - last.header.base_lsn))
            writer.rotate(min_base_lsn=applied)
            report.end_lsn = writer.end_lsn
            report.seconds = time.monotonic() - t0
            return report
        data_end = self._estimate_end(last.path, last.header)
        total = max(0, data_end - start)
        # In place: the engine's progress is what /readyz and the metrics show meanwhile.
        p = self.progress
        p.phase, p.bytes_done, p.bytes_total, p.records = "replaying", 0, total, 0
        p.started_monotonic, p.eta_seconds, p.error = t0, None, None
        self.m.replay_bytes_total.set(total)
        tail_header, tail_offset = segs[idx].header, start - segs[idx].header.base_lsn  # type: ignore[union-attr]
        rebuild_indexes = self._drop_indexes_for_replay(conn, total)
        last_log = time.monotonic()
        for i in range(idx, len(segs)):
            s = segs[i]
            assert s.header is not None
            is_last = i == len(segs) - 1
            off = (start - s.header.base_lsn) if i == idx else SEGMENT_HEADER_SIZE
            zeros_from = data_end - s.header.base_lsn if is_last else None
            with SegmentScanner(self.fs, s.path, zeros_from=zeros_from) as sc:
                for frames in sc.batches(off, limits.replay_apply_records_max,
                                         limits.replay_apply_bytes_max):
                    self._apply(frames, s.name, s.header.base_lsn, report)
                    now = time.monotonic()
                    self._report_progress(report, start, progress)
                    if now - last_log >= limits.replay_progress_interval_seconds:
                        last_log = now
                        log.info("replaying WAL: %d/%d bytes, %d records, ETA %s s",
                                 self.progress.bytes_done, self.progress.bytes_total,
                                 report.records, self.progress.eta_seconds)
                self._report_progress(report, start, progress)
                tail_header, tail_offset = s.header, max(sc.end_offset, off)
                if sc.damage is not None:
                    doff, reason, followed = sc.damage
                    lsn = s.header.base_lsn + doff
                    torn = is_last and not followed
                    if torn and self.config.recovery_mode != "absolute":
                        report.torn_tail = self._cut_torn_tail(s.path, s.name, doff, reason, sc)
                    elif self.config.recovery_mode == "point-in-time":
                        report.torn_tail = self._cut_torn_tail(s.path, s.name, doff, reason, sc)
                        for later in segs[i + 1:]:
                            report.quarantined.append(self._quarantine(later.name,
                                                                       "corrupted"))
                        self.retention.segments = [m for m in self.retention.segments
                                                   if m.seq <= s.seq]
                        break
                    else:
                        kind = "torn_tail" if torn else "corrupt_record"
                        raise CorruptionError(s.name, doff, reason, lsn=lsn, kind=kind)
        if rebuild_indexes:
            # A failure before this point leaves them to the next start's connect().
            # Its own phase: every byte is replayed, but the node is not ready yet and
            # no byte count says for how long (one sort per index).
            self.progress.phase = "indexing"
            self.progress.eta_seconds = None
            if progress is not None:
                progress(self.progress)
            log.info("replay done; building the assertion indexes again")
            t_index = time.monotonic()
            st.create_assertion_indexes(conn)
            log.info("built the assertion indexes again after the replay in %.3fs",
                     time.monotonic() - t_index)
        # Open the writer where the valid data ends (after any torn tail was cut).
        assert tail_header is not None
        writer.open_tail(tail_header, tail_offset)
        if st.applied_end_lsn(conn) is None:
            # The genesis record never became durable (a crash while creating the
            # database): write it now.
            self.needs_genesis = True
            report.created = True
        report.end_lsn = writer.end_lsn
        report.seconds = time.monotonic() - t0
        if report.bytes >= limits.replay_measure_bytes_min and report.seconds > 0:
            # Measured, and kept with the node's facts so the estimate survives restarts.
            self.retention.measured_replay(report.bytes / report.seconds)
        self.m.replay_throughput_bytes_per_second.set(self.retention.apply_bytes_per_s)
        return report


    def _apply(self, frames: list[tuple[int, int, bytes, int]], segment: str, base_lsn: int,
               report: RecoveryReport) -> None:
        """Consecutive records of one segment, in one transaction of the applier."""
        if not frames:
            return
        out = self.applier.apply(frames, lambda lsn: (segment, lsn - base_lsn))
        report.bytes += out.bytes
        report.records += out.records
        self.m.replay_records_total.inc(out.records)

    def _drop_indexes_for_replay(self, conn: sqlite3.Connection, replay_bytes: int) -> bool:
        """Drop the assertion indexes before a replay that will build most of the table.

        Worth it when the WAL to replay is at least ``replay_index_rebuild_bytes_min``
        and likely holds more assertions than the table already has (at most
        ``replay_index_rebuild_wal_bytes_per_row`` WAL bytes per existing row): then one
        sort per index after the replay is cheaper than four B-tree inserts per row.
        Returns whether the caller must build them again.
        """
        if replay_bytes < limits.replay_index_rebuild_bytes_min:
            return False
        rows = conn.execute("SELECT max(id) FROM assertions").fetchone()[0] or 0
        if rows * limits.replay_index_rebuild_wal_bytes_per_row > replay_bytes:
            return False
        st.drop_assertion_indexes(conn)
        log.info("replaying %d WAL bytes into %d assertions: the assertion indexes are "
                 "dropped and built again after the replay", replay_bytes, rows)
        return True

    def _frame_ends_at(self, segs: list[Any], idx: int, lsn: int, end: int) -> bool:
        """True when a valid frame at ``lsn`` ends exactly at ``end``."""
        if idx >= len(segs) or segs[idx].header is None:
            return False
        s = segs[idx]
        off = lsn - s.header.base_lsn
        if off < SEGMENT_HEADER_SIZE or off >= s.header.capacity_bytes:
            return False
        with SegmentScanner(self.fs, s.path) as sc:
            for rec in sc.records(off):
                return rec.lsn == lsn and rec.end_lsn == end
        return False

    def _all_zero(self, path: str) -> bool:
        f = self.fs.open(path)
        try:
            size, pos = f.size(), 0
            while pos < size:  # bounded by the file size
                chunk = f.pread(min(limits.replay_read_bytes_max, size - pos), pos)
                if not chunk or not is_zero(chunk):
                    return not chunk
                pos += len(chunk)
            return True
        finally:
            f.close()

    def _estimate_end(self, path: str, header: SegmentHeader) -> int:
        """End of written data in the last segment: find the last non-zero chunk."""
        f = self.fs.open(path)
        try:
            size = min(f.size(), header.capacity_bytes)
            pos = size
            step = limits.replay_read_bytes_max
            while pos > SEGMENT_HEADER_SIZE:  # bounded: capacity / step reads at most
                lo = max(SEGMENT_HEADER_SIZE, pos - step)
                chunk = f.pread(pos - lo, lo)
                if not is_zero(chunk):
                    return header.base_lsn + lo + unpadded_len(chunk)
                pos = lo
            return header.base_lsn + SEGMENT_HEADER_SIZE
        finally:
            f.close()

    def _report_progress(self, report: RecoveryReport, start: int,
                         cb: Callable[[ReplayProgress], None] | None) -> None:
        p = self.progress
        p.bytes_done = report.bytes
        p.records = report.records
        elapsed = time.monotonic() - p.started_monotonic
        if p.bytes_done > 0 and elapsed > 0:
            rate = p.bytes_done / elapsed
            p.eta_seconds = max(0.0, (p.bytes_total - p.bytes_done) / rate)
        self.m.replay_bytes_done.set(p.bytes_done)
        if cb is not None:
            cb(p)

    def _cut_torn_tail(self, path: str, name: str, off: int, reason: str,
                       sc: SegmentScanner) -> dict[str, Any]:
        """Save the torn bytes aside, then zero them, so the segment ends cleanly."""
        f = self.fs.open(path)
        try:
            end = off
            pos = off
            while pos < sc.limit:  # find the end of non-zero data; bounded by the segment
                chunk = f.pread(min(limits.replay_read_bytes_max, sc.limit - pos), pos)
                if not chunk:
                    break
                stripped = chunk.rstrip(b"\0")
                if stripped:
                    end = pos + len(stripped)
                pos += len(chunk)
            cut = f.pread(end - off, off) if end > off else b""
            aside = None
            if cut:
                aside = f"{path}.torn-{off}"
                g = self.fs.open(aside, create=True)
                try:
                    g.pwrite(cut, 0)
                    g.sync()
                finally:
                    g.close()
                f.pwrite(bytes(len(cut)), off)
                f.sync()
                self.fs.sync_dir(self.wal_dir)
        finally:
            f.close()
        info = {"segment": name, "offset": off, "bytes_cut": len(cut), "reason": reason,
                "saved_to": aside}
        log.warning("WAL torn tail in %s at offset %d: %s; cut %d bytes (saved to %s)",
                    name, off, reason, len(cut), aside)
        return info

    def _quarantine(self, name: str, suffix: str) -> str:
        src = os.path.join(self.wal_dir, name)
        dst = f"{src}.{suffix}"
        self.fs.rename(src, dst)
        self.fs.sync_dir(self.wal_dir)
        log.error("WAL segment %s quarantined as %s (recovery mode %s)", name,
                  os.path.basename(dst), self.config.recovery_mode)
        return os.path.basename(dst)

