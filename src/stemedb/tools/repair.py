"""``stemedb wal repair``: cut a damaged segment at a record boundary, or a whole WAL.

Single segment (``--segment IN --output OUT``): copy IN's header and every record
before the cut to OUT, zero-filled to IN's size, written to a temporary name,
fdatasynced and renamed into place.  IN is never modified: it *is* the backup.  The
cut is, by default, the end of the last valid record; an explicit ``--truncate-at``
must be a record boundary, and one beyond the last valid record (which would keep
damaged bytes) is refused unless forced.

Whole directory (``--data-dir DIR``): verify, then cut at the first fault in LSN
order - the damaged segment is renamed to ``<segment>.corrupted`` and its repaired
copy written under the original name - and quarantine every later segment by
renaming it to ``<segment>.corrupted``.  Nothing is deleted; the report says which
LSNs and how many readable records were set aside.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from typing import Any

from .. import limits
from ..wal import (
    CORRUPT_RECORD,
    SEGMENT_HEADER_SIZE,
    TORN_TAIL,
    HeaderError,
    SegmentScanner,
    list_segment_names,
)
from ._common import RO_FS, ToolError, state_path_for
from .verify import read_state_meta, verify_dir, verify_file

COPY_CHUNK_BYTES = 1 << 20  # 1 MiB per read/write while copying a segment


@dataclass
class LostRecords:
    """Readable records that a cut or a quarantine sets aside."""

    records: int = 0
    first_lsn: int | None = None
    last_lsn: int | None = None

    def add(self, lsn: int) -> None:
        self.records += 1
        if self.first_lsn is None:
            self.first_lsn = lsn
        self.last_lsn = lsn

    def as_dict(self) -> dict[str, Any]:
        return {"records": self.records, "first_lsn": self.first_lsn,
                "last_lsn": self.last_lsn}


@dataclass
class RepairReport:
    input: str
    output: str
    segment: str
    base_lsn: int
    truncate_at: int
    last_valid_offset: int
    records_kept: int
    last_kept_lsn: int | None
    bytes_cut: int  # written (non-zero) bytes of IN after the cut
    first_lost_lsn: int | None
    lost: LostRecords
    damage: dict[str, Any] | None
    backup: str  # where the original bytes stay (IN, untouched)
    dry_run: bool
    output_size_bytes: int = 0
    output_verified: bool | None = None
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"input": self.input, "output": self.output, "segment": self.segment,
                "base_lsn": self.base_lsn, "truncate_at": self.truncate_at,
                "last_valid_offset": self.last_valid_offset,
                "records_kept": self.records_kept, "last_kept_lsn": self.last_kept_lsn,
                "bytes_cut": self.bytes_cut, "first_lost_lsn": self.first_lost_lsn,
                "lost_records": self.lost.as_dict(), "damage": self.damage,
                "backup": self.backup, "dry_run": self.dry_run,
                "output_size_bytes": self.output_size_bytes,
                "output_verified": self.output_verified, "warnings": list(self.warnings)}


def _data_end(path: str, limit: int) -> int:
    """Offset just past the last non-zero byte below ``limit``."""
    fd = os.open(path, os.O_RDONLY)
    try:
        pos = limit
        # Bounded: limit / replay_read_bytes_max reads at most.
        while pos > SEGMENT_HEADER_SIZE:
            lo = max(SEGMENT_HEADER_SIZE, pos - limits.replay_read_bytes_max)
            chunk = os.pread(fd, pos - lo, lo)
            stripped = chunk.rstrip(b"\0")
            if stripped:
                return lo + len(stripped)
            pos = lo
        return SEGMENT_HEADER_SIZE
    finally:
        os.close(fd)


def count_valid_after(path: str, offset: int, lost: LostRecords) -> None:
    """Add the readable records found after the damage at ``offset`` to ``lost``."""
    with SegmentScanner(RO_FS, path) as sc:
        pos = sc.find_valid_frame_after(offset)
        # Bounded: every pass starts past the previous damage, so it ends at the limit.
        while pos is not None:
            for rec in sc.records(pos):
                lost.add(rec.lsn)
            if sc.damage is None:
                return
            pos = sc.find_valid_frame_after(sc.damage[0])


def _nearest(boundaries: list[int], off: int) -> str:
    below = max((b for b in boundaries if b < off), default=None)
    above = min((b for b in boundaries if b > off), default=None)
    near = [str(b) for b in (below, above) if b is not None]
    return " or ".join(near)


def plan_segment_repair(in_path: str, out_path: str, truncate_at: int | None = None, *,
                        force: bool = False, advise: bool = True) -> RepairReport:
    """Decide the cut and what it loses, without writing anything."""
    if not os.path.isfile(in_path):
        raise ToolError(f"segment {in_path} does not exist",
                        hint="pass the damaged segment, e.g. --segment "
                             "/var/lib/stemedb/wal/segment.001.wal.corrupted")
    try:
        sc = SegmentScanner(RO_FS, in_path)
    except HeaderError as exc:
        raise ToolError(f"cannot repair {in_path}: its header is unreadable ({exc.reason}), "
                        "so its LSNs are unknown",
                        hint="stemedb wal repair --data-dir <data-dir> --dry-run (quarantines "
                             "it and the segments after it), or restore it from a backup") from exc
    except OSError as exc:
        raise ToolError(f"cannot read {in_path}: {exc.strerror or exc}") from exc
    with sc:
        boundaries = [SEGMENT_HEADER_SIZE]
        lsns: list[int] = []
        for rec in sc.records():
            lsns.append(rec.lsn)
            boundaries.append(rec.offset + rec.size)
        last_valid = sc.end_offset
        damage = sc.damage
        header = sc.header
        limit = sc.limit
        file_size = sc.file_size
    if truncate_at is None:
        cut = last_valid
    else:
        cut = truncate_at
        if cut < SEGMENT_HEADER_SIZE:
            raise ToolError(f"--truncate-at {cut} is inside the {SEGMENT_HEADER_SIZE}-byte "
                            "segment header",
                            hint=f"--truncate-at {SEGMENT_HEADER_SIZE} keeps no records; "
                                 "omit the value to keep every valid record")
        if cut > last_valid:
            if not force:
                raise ToolError(
                    f"--truncate-at {cut} is past the end of the last valid record "
                    f"(offset {last_valid}): the output would keep damaged bytes",
                    hint=f"--truncate-at {last_valid} (or no value), or --force to keep them")
            if cut % 8 or cut > limit:
                raise ToolError(f"--truncate-at {cut} is not an 8-byte aligned offset inside "
                                f"the segment ({limit} bytes)")
        elif cut not in boundaries:
            raise ToolError(f"--truncate-at {cut} is not a record boundary",
                            hint=f"the nearest boundaries are {_nearest(boundaries, cut)}; "
                                 f"or omit the value to cut at {last_valid}")
    kept = sum(1 for b in boundaries[1:] if b <= cut) if cut <= last_valid else len(lsns)
    lost = LostRecords()
    for lsn in lsns[kept:]:
        lost.add(lsn)
    if damage is not None and cut <= damage[0]:
        count_valid_after(in_path, damage[0], lost)
    data_end = _data_end(in_path, limit)
    bytes_cut = max(0, data_end - cut)
    name = os.path.basename(in_path)
    report = RepairReport(
        input=in_path, output=out_path, segment=name, base_lsn=header.base_lsn,
        truncate_at=cut, last_valid_offset=last_valid, records_kept=kept,
        last_kept_lsn=lsns[kept - 1] if kept else None, bytes_cut=bytes_cut,
        first_lost_lsn=header.base_lsn + cut if bytes_cut else None, lost=lost,
        damage=None if damage is None else {"offset": damage[0], "lsn": header.base_lsn
                                            + damage[0], "reason": damage[1]},
        backup=in_path, dry_run=True,
        output_size_bytes=max(cut, min(file_size, header.capacity_bytes)))
    if cut > last_valid:
        report.warnings.append(f"--force kept {cut - last_valid} damaged bytes after offset "
                               f"{last_valid}: verify will report them")
    if not advise:
        return report
    out_dir = os.path.dirname(os.path.abspath(out_path))
    try:
        later = [n for s, n in list_segment_names(RO_FS, out_dir) if s > header.seq]
    except OSError:
        later = []
    if later and bytes_cut:
        report.warnings.append(
            f"segments after this one ({', '.join(later)}) continue after the cut, leaving "
            f"a hole at LSN {header.base_lsn + cut}; quarantine them with: stemedb wal repair "
            f"--data-dir {out_dir}")
    state = state_path_for(out_dir)
    if state is not None and bytes_cut:
        try:
            applied = read_state_meta(state)["meta"].get("applied_end_lsn")
        except OSError:
            applied = None
        if applied is not None and int(applied) > header.base_lsn + cut:
            report.warnings.append(
                f"the state has applied records up to LSN {int(applied)}, past the cut at LSN "
                f"{header.base_lsn + cut}: they stay in state.sqlite3 and the server "
                "continues in a new segment")
    return report


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_output(report: RepairReport, *, force: bool) -> None:
    out = report.output
    out_dir = os.path.dirname(os.path.abspath(out))
    tmp = os.path.join(out_dir, f".{os.path.basename(out)}.repair-tmp")
    if os.path.exists(tmp):
        os.remove(tmp)  # our own temporary file from an interrupted run
    src = os.open(report.input, os.O_RDONLY)
    dst = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        pos = 0
        # Bounded: cut / COPY_CHUNK_BYTES passes.
        while pos < report.truncate_at:
            chunk = os.pread(src, min(COPY_CHUNK_BYTES, report.truncate_at - pos), pos)
            if not chunk:
                raise OSError(errno.EIO, f"{report.input} ended at {pos} while copying")
            view = memoryview(chunk)
            while view:  # bounded: each write moves at least one byte or raises
                n = os.pwrite(dst, view, pos)
                view = view[n:]
                pos += n
        size = report.output_size_bytes
        if size > pos:
            # Preallocate like the writer does, so appends never meet ENOSPC mid-record.
            try:
                os.posix_fallocate(dst, 0, size)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                os.ftruncate(dst, size)
        os.fdatasync(dst)
    except BaseException:
        os.close(dst)
        os.remove(tmp)
        raise
    finally:
        os.close(src)
    os.close(dst)
    if os.path.exists(out) and not force:
        os.remove(tmp)
        raise ToolError(f"{out} appeared while repairing; not overwritten",
                        hint="choose another --output, or --force")
    os.replace(tmp, out)
    _fsync_dir(out_dir)


def repair_segment(in_path: str, out_path: str, truncate_at: int | None = None, *,
                   force: bool = False, dry_run: bool = False) -> RepairReport:
    """Copy ``in_path`` to ``out_path`` up to the cut; return what was kept and lost."""
    if os.path.abspath(in_path) == os.path.abspath(out_path) or (
            os.path.exists(out_path) and os.path.samefile(in_path, out_path)):
        raise ToolError("--segment and --output are the same file; repair never modifies "
                        "its input",
                        hint=f"mv {in_path} {in_path}.corrupted, then --segment "
                             f"{in_path}.corrupted --output {in_path}")
    if os.path.isdir(out_path):
        raise ToolError(f"--output {out_path} is a directory", hint="name the output file")
    if os.path.exists(out_path) and not force:
        raise ToolError(f"{out_path} exists; repair does not overwrite it",
                        hint="choose another --output, or pass --force to replace it")
    report = plan_segment_repair(in_path, out_path, truncate_at, force=force)
    report.dry_run = dry_run
    if dry_run:
        return report
    try:
        _write_output(report, force=force)
    except OSError as exc:
        hint = ("free space on the WAL filesystem (df -h), then retry"
                if exc.errno == errno.ENOSPC else "check permissions and the kernel log")
        raise ToolError(f"cannot write {out_path}: {exc.strerror or exc}", hint=hint) from exc
    report.output_verified = verify_file(out_path).ok
    return report


# -- whole directory -----------------------------------------------------------------

@dataclass
class DirRepairReport:
    wal_dir: str
    dry_run: bool
    clean: bool = False
    cut_segment: str | None = None
    segment_repair: RepairReport | None = None
    quarantined: list[dict[str, Any]] = field(default_factory=list)  # {from, to, lost}
    lost: LostRecords = field(default_factory=LostRecords)
    first_lost_lsn: int | None = None
    wal_end_lsn: int | None = None
    unrepairable: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    verified_after: bool | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"wal_dir": self.wal_dir, "dry_run": self.dry_run, "clean": self.clean,
                "cut_segment": self.cut_segment,
                "segment_repair": None if self.segment_repair is None
                else self.segment_repair.as_dict(),
                "quarantined": list(self.quarantined), "lost_records": self.lost.as_dict(),
                "first_lost_lsn": self.first_lost_lsn, "wal_end_lsn": self.wal_end_lsn,
                "unrepairable": list(self.unrepairable), "warnings": list(self.warnings),
                "verified_after": self.verified_after}


def _aside_name(path: str) -> str:
    dst = f"{path}.corrupted"
    n = 1
    while os.path.exists(dst):  # bounded by the files in the directory
        dst = f"{path}.corrupted.{n}"
        n += 1
    return dst


def _lost_in_segment(path: str, lost: LostRecords) -> None:
    try:
        with SegmentScanner(RO_FS, path) as sc:
            for rec in sc.records():
                lost.add(rec.lsn)
            damage = sc.damage
        if damage is not None:
            count_valid_after(path, damage[0], lost)
    except (HeaderError, OSError):
        return


def _is_state_level(reason: str) -> bool:
    return reason.startswith("the state") or reason.startswith("the WAL directory has no")


def repair_dir(data_dir: str, *, dry_run: bool = False) -> DirRepairReport:
    """Cut the WAL at its first fault and quarantine what follows.

    Run with the server stopped.  Never deletes: the damaged segment is renamed to
    ``<segment>.corrupted`` before its repaired copy takes its name, and later
    segments are renamed to ``<segment>.corrupted``.
    """
    v = verify_dir(data_dir)
    report = DirRepairReport(wal_dir=v.wal_dir, dry_run=dry_run, wal_end_lsn=v.wal_end_lsn)
    if v.ok:
        report.clean = True
        return report
    names = [s.name for s in v.segments]
    cut_idx: int | None = None  # index of the first segment the repair changes
    cut_kind = ""
    for f in v.faults:
        if _is_state_level(f.reason) or f.segment not in names:
            report.unrepairable.append(f"{f.segment}: {f.reason}")
            continue
        idx = names.index(f.segment)
        if cut_idx is None or idx < cut_idx:
            cut_idx, cut_kind = idx, f.kind
    if cut_idx is None:
        return report
    segs = v.segments
    first_quarantined = cut_idx
    if cut_kind in (TORN_TAIL, CORRUPT_RECORD):
        s = segs[cut_idx]
        aside = _aside_name(s.path)
        plan = plan_segment_repair(s.path, s.path, None, advise=False)
        plan.input, plan.output, plan.backup, plan.dry_run = aside, s.path, aside, dry_run
        report.cut_segment = s.name
        report.segment_repair = plan
        report.first_lost_lsn = plan.first_lost_lsn
        report.lost.records = plan.lost.records
        report.lost.first_lsn, report.lost.last_lsn = plan.lost.first_lsn, plan.lost.last_lsn
        if not dry_run:
            os.rename(s.path, aside)
            _fsync_dir(v.wal_dir)
            _write_output(plan, force=False)
            plan.output_verified = verify_file(s.path).ok
        first_quarantined = cut_idx + 1
        report.wal_end_lsn = plan.base_lsn + plan.truncate_at
    else:
        prev = segs[cut_idx - 1] if cut_idx > 0 else None
        report.wal_end_lsn = prev.end_lsn if prev is not None else None
        # What is lost starts where the previous segment's LSN range ends (the missing
        # or unreadable segment's base), whatever later segments say.
        if prev is not None and prev.base_lsn is not None and prev.capacity_bytes:
            report.first_lost_lsn = prev.base_lsn + prev.capacity_bytes
        else:
            report.first_lost_lsn = segs[cut_idx].base_lsn
    for s in segs[first_quarantined:]:
        seg_lost = LostRecords()
        _lost_in_segment(s.path, seg_lost)
        if report.lost.first_lsn is None:
            report.lost.first_lsn = seg_lost.first_lsn
        if seg_lost.last_lsn is not None:
            report.lost.last_lsn = seg_lost.last_lsn
        report.lost.records += seg_lost.records
        if report.first_lost_lsn is None:
            report.first_lost_lsn = s.base_lsn
        dst = _aside_name(s.path)
        report.quarantined.append({"from": s.name, "to": os.path.basename(dst),
                                   "lost_records": seg_lost.as_dict()})
        if not dry_run:
            os.rename(s.path, dst)
    if not dry_run and report.quarantined:
        _fsync_dir(v.wal_dir)
    if report.wal_end_lsn is None and v.applied_end_lsn is not None:
        report.warnings.append("no segment is left but the state has applied records: the "
                               "server will not start; restore from a backup "
                               "(docs/operations/runbooks/restore-from-backup.md)")
    if (v.applied_end_lsn is not None and report.wal_end_lsn is not None
            and v.applied_end_lsn > report.wal_end_lsn):
        report.warnings.append(
            f"the state has applied up to LSN {v.applied_end_lsn}, past the new WAL end "
            f"(LSN {report.wal_end_lsn}): those records stay in state.sqlite3 but are no "
            "longer in the WAL (a replica or a restore that replays the WAL will not have "
            "them); the server continues in a new segment after the state")
    if not dry_run:
        after = verify_dir(data_dir)
        report.verified_after = not [f for f in after.faults
                                     if not _is_state_level(f.reason)]
    return report


__all__ = [
    "DirRepairReport",
    "LostRecords",
    "RepairReport",
    "count_valid_after",
    "plan_segment_repair",
    "repair_dir",
    "repair_segment",
]
