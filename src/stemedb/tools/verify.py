"""``stemedb wal verify``: check a WAL directory or one segment, and say how to fix it.

What is checked: every segment header (magic, checksum, version, that the sequence
in the header matches the file name), every record frame (magic, type, that its LSN
equals its position, that its length stays inside the segment, CRC-32C), LSN
continuity within a segment (each frame starts where the last ended, and its LSN
says so) and across segments (no missing sequence numbers, each base LSN continues
the previous segment), and - for a directory - that the state's ``applied_end_lsn``
lies inside the WAL that is on disk.

Fault kinds (the reader's names, :mod:`stemedb.wal`):

``torn_tail``
    Damage in the last segment with no valid record after it: a crash during a write
    that was never acknowledged (under ``fsync = "always"``).  The server cuts it
    itself on start (``recovery_mode = "tolerate-torn-tail"``, the default), saving the
    bytes to ``<segment>.torn-<offset>``.  Still reported, and still exit 1.
``corrupt_record``
    A bad record followed by valid ones, or damage in a segment that is not the last:
    bytes that were durable are unreadable.  The server refuses to start.
``bad_header``
    A segment header that does not parse.
``missing_segment``
    A hole in the sequence of segment files, or WAL the state still needs is gone.
``gap``
    LSNs do not continue across segments, or the state is ahead of the WAL.  One gap is
    expected and is reported as a note, not a fault: a segment whose header carries
    ``SEGMENT_FLAG_SKIPS_LSNS`` starts past LSNs that the state had applied and the WAL
    had lost in a crash (records acknowledged before fsync, ``fsync = "interval"`` or
    ``"never"``); the server starts such a segment itself.  It stays a fault when the
    state's applied LSN lies before it (a restored older state needs those records).
"""

from __future__ import annotations

import json
import os
import sqlite3
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..wal import (
    BAD_HEADER,
    CORRUPT_RECORD,
    GAP,
    MISSING_SEGMENT,
    SEGMENT_HEADER_SIZE,
    TORN_TAIL,
    HeaderError,
    SegmentScanner,
    list_segment_names,
    load_chain,
    parse_segment_name,
)
from ._common import RO_FS, ToolError, resolve_wal_dir, state_path_for

TORN_TAIL_NOTE = ("a torn tail is the end of a write that was never acknowledged; the "
                  "server cuts it by itself on start (recovery_mode tolerate-torn-tail) "
                  "and saves the bytes to <segment>.torn-<offset>")

# Called with (bytes scanned so far, total bytes) while a directory is verified.
ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class VerifyFault:
    kind: str
    segment: str  # file name, e.g. segment.002.wal
    path: str
    offset: int
    lsn: int | None
    reason: str
    repair: list[str] = field(default_factory=list)  # commands to run, in order
    note: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "segment": self.segment, "path": self.path,
                "offset": self.offset, "lsn": self.lsn, "reason": self.reason,
                "repair": list(self.repair), "note": self.note}


@dataclass
class SegmentSummary:
    name: str
    path: str
    seq: int | None
    base_lsn: int | None
    capacity_bytes: int | None
    file_size: int
    records: int = 0
    first_lsn: int | None = None
    end_offset: int = SEGMENT_HEADER_SIZE  # just past the last valid record
    damaged: bool = False

    @property
    def end_lsn(self) -> int | None:
        return None if self.base_lsn is None else self.base_lsn + self.end_offset

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "path": self.path, "seq": self.seq,
                "base_lsn": self.base_lsn, "capacity_bytes": self.capacity_bytes,
                "file_size": self.file_size, "records": self.records,
                "first_lsn": self.first_lsn, "end_offset": self.end_offset,
                "end_lsn": self.end_lsn, "damaged": self.damaged}


@dataclass
class VerifyReport:
    target: str
    mode: str  # "file" or "dir"
    wal_dir: str
    segments: list[SegmentSummary] = field(default_factory=list)
    faults: list[VerifyFault] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    applied_end_lsn: int | None = None
    checkpoint_lsn: int | None = None

    @property
    def ok(self) -> bool:
        return not self.faults

    @property
    def records(self) -> int:
        return sum(s.records for s in self.segments)

    @property
    def wal_end_lsn(self) -> int | None:
        """LSN just past the last valid record of the last segment."""
        for s in reversed(self.segments):
            if s.end_lsn is not None:
                return s.end_lsn
        return None

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def as_dict(self) -> dict[str, Any]:
        return {"target": self.target, "mode": self.mode, "wal_dir": self.wal_dir,
                "ok": self.ok, "records": self.records,
                "segments": [s.as_dict() for s in self.segments],
                "faults": [f.as_dict() for f in self.faults], "notes": list(self.notes),
                "wal_end_lsn": self.wal_end_lsn, "applied_end_lsn": self.applied_end_lsn,
                "checkpoint_lsn": self.checkpoint_lsn}


# -- repair advice -----------------------------------------------------------------

def repair_commands(kind: str, path: str, offset: int, *, wal_dir: str,
                    later_segments: bool) -> list[str]:
    """The commands an operator runs for one fault (server stopped)."""
    directory = f"stemedb wal repair --data-dir {wal_dir} --dry-run"
    if kind in (TORN_TAIL, CORRUPT_RECORD):
        cmds = [f"stemedb-wal-repair --segment {path} --output {path}.repaired "
                f"--truncate-at {offset}",
                f"mv {path} {path}.corrupted && mv {path}.repaired {path}"]
        if later_segments:
            # Cutting a middle segment leaves later segments that continue after a hole;
            # the directory mode quarantines them too.
            cmds = [directory + "   # cuts here and quarantines the later segments"]
        return cmds
    return [directory + "   # keeps the WAL before this segment, quarantines the rest"]


# -- one segment ---------------------------------------------------------------------

def _scan(path: str, summary: SegmentSummary, *, is_last: bool, wal_dir: str,
          later_segments: bool, progress: Callable[[int], None] | None = None
          ) -> VerifyFault | None:
    """Scan the records of one segment; return its damage as a fault, if any."""
    name = os.path.basename(path)
    try:
        sc = SegmentScanner(RO_FS, path)
    except HeaderError as exc:
        summary.damaged = True
        return VerifyFault(BAD_HEADER, name, path, 0, None, f"bad segment header: {exc.reason}",
                           repair_commands(BAD_HEADER, path, 0, wal_dir=wal_dir,
                                           later_segments=later_segments))
    with sc:
        summary.seq = sc.header.seq
        summary.base_lsn = sc.header.base_lsn
        summary.capacity_bytes = sc.header.capacity_bytes
        last_reported = 0  # bytes of this file already reported
        for rec in sc.records():
            summary.records += 1
            if summary.first_lsn is None:
                summary.first_lsn = rec.lsn
            if progress is not None and rec.offset - last_reported >= 1 << 20:
                progress(rec.offset - last_reported)
                last_reported = rec.offset
        summary.end_offset = sc.end_offset
        if progress is not None:
            progress(max(0, sc.file_size - last_reported))
        if sc.damage is None:
            return None
        off, reason, followed = sc.damage
        summary.damaged = True
        torn = is_last and not followed
        kind = TORN_TAIL if torn else CORRUPT_RECORD
        if not torn and not is_last and not followed:
            reason = f"{reason} (in a segment that is not the last: durable data is damaged)"
        return VerifyFault(kind, name, path, off, sc.header.base_lsn + off, reason,
                           repair_commands(kind, path, off, wal_dir=wal_dir,
                                           later_segments=later_segments),
                           TORN_TAIL_NOTE if torn else None)


def verify_file(path: str) -> VerifyReport:
    """Verify one segment file.

    Whether damage is a torn tail depends on whether this is the last segment: it is
    when no segment with a higher sequence number sits in the same directory.
    """
    if not os.path.exists(path):
        raise ToolError(f"segment {path} does not exist",
                        hint="list the segments with: ls <data-dir>/wal/segment.*.wal")
    if os.path.isdir(path):
        raise ToolError(f"{path} is a directory", hint=f"stemedb wal verify --data-dir {path}")
    wal_dir = os.path.dirname(os.path.abspath(path))
    report = VerifyReport(target=path, mode="file", wal_dir=wal_dir)
    seq = parse_segment_name(os.path.basename(path))
    try:
        size = os.path.getsize(path)
        later: list[str] = []
        try:
            names = list_segment_names(RO_FS, wal_dir)
        except OSError:
            names = []
            report.notes.append(f"cannot list {wal_dir}: treated {os.path.basename(path)} "
                                "as the last segment")
        summary = SegmentSummary(os.path.basename(path), path, seq, None, None, size)
        if seq is None:
            # A renamed copy (segment.001.wal.corrupted): place it by its header.
            try:
                with SegmentScanner(RO_FS, path) as sc:
                    seq = sc.header.seq
            except HeaderError:
                seq = None
        if seq is not None:
            later = [n for s, n in names if s > seq]
        fault = _scan(path, summary, is_last=not later, wal_dir=wal_dir,
                      later_segments=bool(later))
    except OSError as exc:
        raise ToolError(f"cannot read {path}: {exc.strerror or exc}",
                        hint="run as the user the server runs as (stemedb) or root") from exc
    report.segments.append(summary)
    if fault is not None:
        report.faults.append(fault)
    return report


# -- a directory ---------------------------------------------------------------------

def read_state_meta(state_path: str) -> dict[str, Any]:
    """``meta`` of state.sqlite3, opened read-only (safe while serving), and the node's
    holds: from ``node.json`` beside it, or from the state of a data directory that
    predates that file."""
    facts = os.path.join(os.path.dirname(state_path), "node.json")
    node_holds: list[tuple[str, int, float]] | None = None
    try:
        with open(facts, "rb") as f:
            doc = json.loads(f.read() or b"{}")
        node_holds = sorted((str(n), int(h["lsn"]), float(h["updated_unix"]))
                            for n, h in (doc.get("holds") or {}).items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        node_holds = None
    uri_path = urllib.parse.quote(os.path.abspath(state_path))
    last: sqlite3.Error | None = None
    for query in ("mode=ro", "immutable=1"):  # immutable: a read-only mount without -shm
        try:
            conn = sqlite3.connect(f"file:{uri_path}?{query}", uri=True, timeout=5.0)
        except sqlite3.Error as exc:
            last = exc
            continue
        try:
            meta = {str(k): v for k, v in conn.execute("SELECT key, value FROM meta")}
            holds = node_holds if node_holds is not None else [
                (str(n), int(lsn), float(u)) for n, lsn, u in
                conn.execute("SELECT name, lsn, updated_unix FROM holds ORDER BY name")]
            return {"meta": meta, "holds": holds}
        except sqlite3.Error as exc:
            last = exc
        finally:
            conn.close()
    raise OSError(f"cannot read {state_path}: {last}")


def verify_dir(data_dir: str, *, progress: ProgressFn | None = None) -> VerifyReport:
    """Verify every segment of a data directory (or of a WAL directory)."""
    wal_dir = resolve_wal_dir(data_dir)
    report = VerifyReport(target=data_dir, mode="dir", wal_dir=wal_dir)
    try:
        chain = load_chain(RO_FS, wal_dir)
        extra = sorted(n for n in os.listdir(wal_dir)
                       if ".corrupted" in n or ".torn-" in n or n.endswith(".torn"))
    except OSError as exc:
        raise ToolError(f"cannot read {wal_dir}: {exc.strerror or exc}",
                        hint="run as the user the server runs as (stemedb) or root") from exc
    if extra:
        report.notes.append("set-aside files (not part of the log): " + ", ".join(extra))
    segs = chain.segments
    total = sum(s.file_size for s in segs)
    done = 0

    def advance(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(min(done, total), total)

    chain_faults = {f.segment: f for f in chain.faults}
    # Gaps the server made on purpose (SEGMENT_FLAG_SKIPS_LSNS), until the state's
    # applied LSN says whether they are harmless.
    expected_gaps: list[VerifyFault] = []
    for i, info in enumerate(segs):
        later = i < len(segs) - 1
        cf = chain_faults.get(info.name)
        if cf is not None:
            vf = VerifyFault(cf.kind, cf.segment, info.path, cf.offset, cf.lsn, cf.reason,
                             repair_commands(cf.kind, info.path, 0, wal_dir=wal_dir,
                                             later_segments=True))
            if cf.expected:
                expected_gaps.append(vf)
            else:
                report.faults.append(vf)
        summary = SegmentSummary(info.name, info.path, info.seq, None, None, info.file_size)
        if info.header_error is not None and info.header is not None:
            # Parses, but names another segment: the chain cannot trust its LSNs.
            summary.damaged = True
            report.segments.append(summary)
            report.faults.append(VerifyFault(
                BAD_HEADER, info.name, info.path, 0, None,
                f"bad segment header: {info.header_error}",
                repair_commands(BAD_HEADER, info.path, 0, wal_dir=wal_dir,
                                later_segments=later)))
            advance(info.file_size)
            continue
        try:
            fault = _scan(info.path, summary, is_last=not later, wal_dir=wal_dir,
                          later_segments=later, progress=advance)
        except OSError as exc:
            raise ToolError(f"cannot read {info.path}: {exc.strerror or exc}",
                            hint="check the kernel log (dmesg | grep -i 'i/o error')") from exc
        if fault is not None and fault.kind == BAD_HEADER:
            advance(info.file_size)
        report.segments.append(summary)
        if fault is not None:
            report.faults.append(fault)
    _check_state(report)
    _settle_expected_gaps(report, expected_gaps)
    return report


def _settle_expected_gaps(report: VerifyReport, gaps: list[VerifyFault]) -> None:
    """A gap the server made on purpose is a note while the state is past it.

    The skipped LSNs are records the state applied and the WAL lost; a state whose
    applied LSN is at or past the segment's base holds them.  An older state (restored
    from a backup, say) would need them from the WAL: then the gap is a fault.
    """
    applied = report.applied_end_lsn
    for fault in gaps:
        base = fault.lsn
        assert base is not None
        if applied is not None and applied < base:
            report.faults.append(VerifyFault(
                fault.kind, fault.segment, fault.path, fault.offset, fault.lsn,
                f"{fault.reason}; the state has applied only up to LSN {applied}, so it "
                "needs records the WAL does not hold", fault.repair))
        else:
            report.notes.append(f"expected gap before {fault.segment} (the state holds the skipped "
                                f"records): {fault.reason}")


def _check_state(report: VerifyReport) -> None:
    state = state_path_for(report.wal_dir)
    if state is None:
        report.notes.append("no state.sqlite3 next to the WAL: applied LSN not checked")
        return
    try:
        meta = read_state_meta(state)["meta"]
    except OSError as exc:
        report.notes.append(f"{exc}: applied LSN not checked")
        return
    applied = meta.get("applied_end_lsn")
    ckpt = meta.get("checkpoint_lsn")
    report.applied_end_lsn = None if applied is None else int(applied)
    report.checkpoint_lsn = None if ckpt is None else int(ckpt)
    if report.applied_end_lsn is None:
        return
    applied_lsn = report.applied_end_lsn
    wal_dir = report.wal_dir
    readable = [s for s in report.segments if s.base_lsn is not None]
    if not report.segments:
        report.faults.append(VerifyFault(
            MISSING_SEGMENT, "segment.001.wal", os.path.join(wal_dir, "segment.001.wal"), 0,
            None, f"the WAL directory has no segments but the state has applied up to LSN "
                  f"{applied_lsn}",
            ["restore the WAL from a backup or replica (docs/operations/runbooks/"
             "restore-from-backup.md)"]))
        return
    first = readable[0] if readable else None
    if first is not None and first.base_lsn is not None and applied_lsn < first.base_lsn:
        report.faults.append(VerifyFault(
            MISSING_SEGMENT, first.name, first.path, 0, first.base_lsn,
            f"the state needs WAL from LSN {applied_lsn} but the oldest segment starts at "
            f"LSN {first.base_lsn}",
            ["restore the missing segments from a backup or replica"]))
    end = report.wal_end_lsn
    if end is not None and applied_lsn > end and not report.faults:
        last = report.segments[-1]
        report.faults.append(VerifyFault(
            GAP, last.name, last.path, last.end_offset, end,
            f"the state has applied up to LSN {applied_lsn} but the WAL ends at LSN {end}: "
            "records acknowledged before fsync were lost (fsync = interval or never) or the "
            "WAL was cut by a repair",
            ["systemctl start stemedb-api   # continues in a new segment after the state"],
            "the state (SQLite) holds the records after the WAL's end; the server starts "
            "a new segment past them"))
