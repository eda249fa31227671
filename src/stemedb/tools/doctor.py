"""``stemedb doctor``: the runbook's investigation steps, run in one go.

Each check returns a :class:`Finding` with a severity (``ok`` < ``info`` <
``warning`` < ``critical``) and the runbook to follow.  The exit code follows the
worst finding: 0 for ok or info, 1 for a warning, 2 for a critical finding.

Works with the server running or stopped: the WAL is read through a read-only file
system, SQLite is opened ``mode=ro`` (WAL mode lets readers run beside the writer),
and the probes write only their own temporary files, which they remove.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

from .. import limits
from ..wal import TORN_TAIL
from ._common import ToolError, resolve_wal_dir, state_path_for
from .dump import Dump, DumpFilter
from .verify import VerifyReport, read_state_meta, verify_dir

SEVERITIES = ("ok", "info", "warning", "critical")
EXIT_CODES = {"ok": 0, "info": 0, "warning": 1, "critical": 2}

RUNBOOKS = "docs/operations/runbooks"
RB_FSYNC_FAILURE = f"{RUNBOOKS}/WALFsyncFailure.md"
RB_FSYNC_SLOW = f"{RUNBOOKS}/WALFsyncSlow.md"
RB_DISK_FULL = f"{RUNBOOKS}/WALDiskNearlyFull.md"
RB_DISK_FULL_GENERIC = f"{RUNBOOKS}/disk-full.md"
RB_STORAGE_ERRORS = f"{RUNBOOKS}/storage-errors.md"
RB_STORAGE_RATE = f"{RUNBOOKS}/HighStorageErrorRate.md"
RB_FENCED = f"{RUNBOOKS}/WritesFenced.md"
RB_CHECKPOINT = f"{RUNBOOKS}/CheckpointFailing.md"
RB_REPLAY_DEBT = f"{RUNBOOKS}/ReplayDebtHigh.md"
RB_HOLD_STUCK = f"{RUNBOOKS}/HoldStuck.md"
RB_ARCHIVE_FAILING = f"{RUNBOOKS}/ArchiveFailing.md"
RB_ARCHIVE_BACKLOG = f"{RUNBOOKS}/ArchiveBacklogGrowing.md"
# The archive's lag past which doctor calls it stalled: ArchiveFailing's threshold.
ARCHIVE_LAG_STALLED_SECONDS = 60.0

# Thresholds, each with its unit, mirroring ops/prometheus/stemedb.rules.yml.
DISK_USED_PERCENT_INFO = 70.0  # WALDiskNearlyFull tiers
DISK_USED_PERCENT_WARNING = 80.0
DISK_USED_PERCENT_CRITICAL = 90.0
INODES_USED_PERCENT_WARNING = 90.0
FSYNC_PROBE_WRITES = 64  # writes of FSYNC_PROBE_WRITE_BYTES, each followed by fdatasync
FSYNC_PROBE_WRITE_BYTES = 4096
FSYNC_P99_WARNING_MS = 10.0
FSYNC_P99_CRITICAL_MS = 100.0  # the WALFsyncSlow alert
REPLAY_DEBT_WARNING_SECONDS = 30.0  # the ReplayDebtHigh alert
CHECKPOINT_AGE_WARNING_SECONDS = 3600.0  # the CheckpointFailing alert
HOLD_STUCK_SECONDS = 1800.0  # the HoldStuck alert
HTTP_TIMEOUT_SECONDS = 5.0
DMESG_TIMEOUT_SECONDS = 5.0
KERNEL_LOG_LINES_SHOWN_MAX = 10

KERNEL_ERROR_RE = re.compile(
    r"i/o error|blk_update_request|buffer i/o error|critical medium error|"
    r"ext4-fs error|ext4-fs warning.*error|xfs.*(error|corrupt|shutdown)|"
    r"btrfs.*(error|corrupt)|remounting filesystem read-only|"
    r"nvme.*(timeout|reset|abort)|ata\d+.*(failed command|exception)", re.IGNORECASE)


@dataclass
class Finding:
    check: str
    severity: str
    summary: str
    detail: str = ""
    runbook: str | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        assert self.severity in SEVERITIES, self.severity

    def as_dict(self) -> dict[str, Any]:
        return {"check": self.check, "severity": self.severity, "summary": self.summary,
                "detail": self.detail, "runbook": self.runbook, "data": self.data}


@dataclass
class DoctorReport:
    data_dir: str
    wal_dir: str | None
    url: str | None
    findings: list[Finding] = field(default_factory=list)

    @property
    def worst(self) -> str:
        return max((f.severity for f in self.findings), key=SEVERITIES.index, default="ok")

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.worst]

    def by_check(self, check: str) -> Finding:
        for f in self.findings:
            if f.check == check:
                return f
        raise KeyError(check)

    def as_dict(self) -> dict[str, Any]:
        return {"data_dir": self.data_dir, "wal_dir": self.wal_dir, "url": self.url,
                "worst": self.worst, "exit_code": self.exit_code,
                "findings": [f.as_dict() for f in self.findings]}


def _pct(used: int, total: int) -> float:
    return 100.0 * used / total if total > 0 else 0.0


def _mib(n: int | float) -> str:
    return f"{n / limits.MiB:,.1f} MiB"


# -- filesystem ----------------------------------------------------------------------

def check_disk_space(path: str, reserve_bytes: int, *, check: str = "disk_space",
                     what: str = "WAL filesystem") -> Finding:
    """Free space and inodes of ``path``'s filesystem against the write reserve: the
    WAL's, or (``check``/``what`` renamed) the state's when the WAL is on another."""
    try:
        st = os.statvfs(path)
    except OSError as exc:
        return Finding(check, "critical", f"cannot read free space of {path}: "
                       f"{exc.strerror}", runbook=RB_STORAGE_ERRORS)
    size = st.f_blocks * st.f_frsize
    free = st.f_bavail * st.f_frsize
    used_pct = _pct(size - free, size)
    inodes_used_pct = _pct(st.f_files - st.f_favail, st.f_files)
    data = {"size_bytes": size, "free_bytes": free, "used_percent": round(used_pct, 1),
            "inodes": st.f_files, "free_inodes": st.f_favail,
            "inodes_used_percent": round(inodes_used_pct, 1), "reserve_bytes": reserve_bytes}
    detail = (f"df -h {path}: {_mib(free)} free of {_mib(size)} ({used_pct:.1f}% used); "
              f"inodes {st.f_favail:,} free of {st.f_files:,} ({inodes_used_pct:.1f}% used); "
              f"write reserve ([wal] disk_reserve_bytes) {_mib(reserve_bytes)}")
    if free < reserve_bytes:
        return Finding(check, "critical",
                       f"free space {_mib(free)} is under the write reserve "
                       f"{_mib(reserve_bytes)}: the server answers every write with 507",
                       detail, RB_DISK_FULL, data)
    if used_pct > DISK_USED_PERCENT_CRITICAL:
        return Finding(check, "critical", f"{what} {used_pct:.1f}% used",
                       detail, RB_DISK_FULL, data)
    if used_pct > DISK_USED_PERCENT_WARNING or free < 2 * reserve_bytes:
        return Finding(check, "warning", f"{what} {used_pct:.1f}% used, "
                       f"{_mib(free)} free", detail, RB_DISK_FULL, data)
    if inodes_used_pct > INODES_USED_PERCENT_WARNING:
        return Finding(check, "warning", f"{what} inodes "
                       f"{inodes_used_pct:.1f}% used", detail, RB_DISK_FULL, data)
    if used_pct > DISK_USED_PERCENT_INFO:
        return Finding(check, "info", f"{what} {used_pct:.1f}% used",
                       detail, RB_DISK_FULL, data)
    return Finding(check, "ok", f"{_mib(free)} free ({used_pct:.1f}% used)", detail,
                   data=data)


def check_write(wal_dir: str) -> Finding:
    """The runbook's ``touch /var/lib/stemedb/wal/test.file``, cleaned up after."""
    probe = os.path.join(wal_dir, f".stemedb-doctor-write-{os.getpid()}")
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        os.remove(probe)
    except OSError as exc:
        if exc.errno == errno.EROFS:
            return Finding("write_test", "critical",
                           f"the WAL filesystem is read-only: creating a file in {wal_dir} "
                           "failed with EROFS",
                           "every write fails; after checking dmesg for the cause: "
                           f"mount -o remount,rw {wal_dir}", RB_FSYNC_FAILURE,
                           {"errno": "EROFS"})
        if exc.errno == errno.ENOSPC:
            return Finding("write_test", "critical", f"no space to create a file in {wal_dir}",
                           "df -h; df -i", RB_DISK_FULL_GENERIC, {"errno": "ENOSPC"})
        name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        return Finding("write_test", "critical",
                       f"cannot create a file in {wal_dir}: {exc.strerror} ({name})",
                       "the server (user stemedb) must be able to write its WAL directory; "
                       f"check: ls -ld {wal_dir}; and run doctor as the server's user",
                       RB_STORAGE_ERRORS, {"errno": name})
    return Finding("write_test", "ok", f"created and removed a file in {wal_dir}")


@dataclass(frozen=True)
class Mount:
    mount_point: str
    fstype: str
    source: str
    mount_options: tuple[str, ...]
    super_options: tuple[str, ...]

    @property
    def options(self) -> tuple[str, ...]:
        return self.mount_options + tuple(o for o in self.super_options
                                          if o not in self.mount_options)


def _unescape(s: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), s)


def parse_mountinfo(text: str) -> list[Mount]:
    out = []
    for line in text.splitlines():
        parts = line.split()
        if "-" not in parts:
            continue
        sep = parts.index("-")
        if sep < 6 or len(parts) < sep + 3:
            continue
        out.append(Mount(_unescape(parts[4]), parts[sep + 1], _unescape(parts[sep + 2]),
                         tuple(parts[5].split(",")), tuple(parts[sep + 3].split(","))
                         if len(parts) > sep + 3 else ()))
    return out


def mount_of(path: str, mounts: list[Mount]) -> Mount | None:
    real = os.path.realpath(path)
    best: Mount | None = None
    for m in mounts:  # later entries shadow earlier ones at the same mount point
        mp = m.mount_point
        inside = real == mp or real.startswith(mp.rstrip("/") + "/")
        if inside and (best is None or len(mp) >= len(best.mount_point)):
            best = m
    return best


def check_mount(wal_dir: str, mountinfo_path: str = "/proc/self/mountinfo") -> Finding:
    try:
        with open(mountinfo_path) as f:
            m = mount_of(wal_dir, parse_mountinfo(f.read()))
    except OSError as exc:
        return Finding("mount_options", "info", f"cannot read {mountinfo_path}: "
                       f"{exc.strerror}", f"mount | grep {wal_dir}")
    if m is None:
        return Finding("mount_options", "info", f"no mount found for {wal_dir}")
    opts = m.options
    data = {"mount_point": m.mount_point, "fstype": m.fstype, "source": m.source,
            "options": list(opts)}
    detail = f"{m.source} on {m.mount_point} type {m.fstype} ({','.join(opts)})"
    if "ro" in m.mount_options or "ro" in m.super_options:
        return Finding("mount_options", "critical", f"{m.mount_point} is mounted read-only",
                       detail + f"; after checking dmesg: mount -o remount,rw {m.mount_point}",
                       RB_FSYNC_FAILURE, data)
    weak = [o for o in opts if o in ("data=writeback", "nobarrier", "barrier=0")]
    if weak:
        return Finding("mount_options", "warning",
                       f"{m.mount_point} is mounted with {', '.join(weak)}: a power loss can "
                       "lose or reorder data that fdatasync reported durable",
                       detail + "; prefer data=ordered,barrier=1 (see the runbook's fstab)",
                       RB_FSYNC_FAILURE, data)
    return Finding("mount_options", "ok", f"{m.fstype} on {m.mount_point}, read-write",
                   detail, data=data)


def _quantile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank quantile."""
    i = max(0, min(len(sorted_values) - 1, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[i]


def check_fsync(wal_dir: str, *, writes: int = FSYNC_PROBE_WRITES) -> Finding:
    """The runbook's ``dd ... && sync``, done as the WAL does it: write, then fdatasync."""
    probe = os.path.join(wal_dir, f".stemedb-doctor-fsync-{os.getpid()}")
    block = b"\xa5" * FSYNC_PROBE_WRITE_BYTES
    samples_ms: list[float] = []
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        return Finding("fsync_probe", "info", f"skipped: cannot create a probe file in "
                       f"{wal_dir} ({exc.strerror})", "see write_test")
    try:
        for _ in range(writes):  # bounded by FSYNC_PROBE_WRITES
            os.write(fd, block)
            t0 = time.perf_counter()
            os.fdatasync(fd)
            samples_ms.append((time.perf_counter() - t0) * 1000)
    except OSError as exc:
        return Finding("fsync_probe", "critical",
                       f"fdatasync on {wal_dir} failed: {exc.strerror}",
                       "the WAL cannot be made durable: dmesg | grep -i 'i/o error'",
                       RB_FSYNC_FAILURE, {"errno": errno.errorcode.get(exc.errno or 0)})
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.remove(probe)
    s = sorted(samples_ms)
    p50, p99 = _quantile(s, 0.5), _quantile(s, 0.99)
    data = {"writes": writes, "write_bytes": FSYNC_PROBE_WRITE_BYTES,
            "p50_ms": round(p50, 3), "p99_ms": round(p99, 3), "max_ms": round(s[-1], 3)}
    summary = f"fdatasync p50 {p50:.2f} ms, p99 {p99:.2f} ms ({writes} x 4 KiB writes)"
    detail = (f"thresholds: warning over {FSYNC_P99_WARNING_MS:g} ms p99, critical over "
              f"{FSYNC_P99_CRITICAL_MS:g} ms (the WALFsyncSlow alert)")
    if p99 > FSYNC_P99_CRITICAL_MS:
        return Finding("fsync_probe", "critical", summary, detail, RB_FSYNC_SLOW, data)
    if p99 > FSYNC_P99_WARNING_MS:
        return Finding("fsync_probe", "warning", summary, detail, RB_FSYNC_SLOW, data)
    return Finding("fsync_probe", "ok", summary, detail, data=data)


def kernel_errors(text: str) -> list[str]:
    return [line for line in text.splitlines() if KERNEL_ERROR_RE.search(line)]


def check_kernel_log(command: tuple[str, ...] = ("dmesg",)) -> Finding:
    try:
        proc = subprocess.run(list(command), capture_output=True, text=True,
                              timeout=DMESG_TIMEOUT_SECONDS, check=False,
                              errors="replace")
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Finding("kernel_log", "info", f"kernel log not readable ({exc})",
                       "run as root: dmesg | grep -i 'i/o error'; journalctl --dmesg | "
                       "grep -i 'ext4.*error'")
    if proc.returncode != 0:
        why = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        return Finding("kernel_log", "info", f"kernel log not readable ({why})",
                       "run as root: dmesg | grep -i 'i/o error'")
    errs = kernel_errors(proc.stdout)
    if errs:
        shown = errs[-KERNEL_LOG_LINES_SHOWN_MAX:]
        return Finding("kernel_log", "critical",
                       f"{len(errs)} storage error line(s) in the kernel log",
                       "\n".join(shown), RB_STORAGE_ERRORS, {"lines": shown, "count": len(errs)})
    return Finding("kernel_log", "ok", "no I/O or filesystem errors in the kernel log")


# -- the WAL and the state -----------------------------------------------------------

def check_wal(report: VerifyReport, *, server_up: bool) -> Finding:
    faults = report.faults
    data = {"segments": len(report.segments), "records": report.records,
            "faults": [f.as_dict() for f in faults]}
    if not faults:
        return Finding("wal_verify", "ok", f"{len(report.segments)} segment(s), "
                       f"{report.records} records, no faults", data=data)
    lines = []
    for f in faults:
        lines.append(f"{f.kind} in {f.segment} at offset {f.offset} (LSN {f.lsn}): {f.reason}")
        lines.extend(f"  repair: {c}" for c in f.repair)
    detail = "\n".join(lines)
    only_torn = all(f.kind == TORN_TAIL for f in faults)
    if only_torn:
        sev = "info" if server_up else "warning"
        why = ("the server is running: probably a write in progress" if server_up else
               "the server cuts a torn tail by itself on start")
        return Finding("wal_verify", sev, f"torn tail in {faults[0].segment} ({why})",
                       detail, RB_FSYNC_FAILURE, data)
    return Finding("wal_verify", "critical",
                   f"{len(faults)} WAL fault(s): {', '.join(sorted({f.kind for f in faults}))}",
                   detail + "\nstop the server first: systemctl stop stemedb-api",
                   RB_FSYNC_FAILURE, data)


@dataclass
class _StateInfo:
    meta: dict[str, Any]
    holds: list[tuple[str, int, float]]


def _record_times(data_dir: str, from_lsn: int) -> tuple[float | None, float | None]:
    """Times of the first record at or after ``from_lsn`` and of the last record."""
    first = last = None
    try:
        for rec in Dump.of_dir(data_dir, DumpFilter(from_lsn=from_lsn)).records():
            if rec.time_unix is None:
                continue
            if first is None:
                first = rec.time_unix
            last = rec.time_unix
    except ToolError:
        return None, None
    return first, last


def check_replay_debt(report: VerifyReport, state: _StateInfo | None,
                      status: dict[str, Any] | None) -> Finding:
    end = report.wal_end_lsn
    if state is None or end is None:
        return Finding("replay_debt", "info", "replay debt unknown (no readable state or WAL)")
    ckpt = int(state.meta.get("checkpoint_lsn") or 0)
    applied = state.meta.get("applied_end_lsn")
    first_base = next((s.base_lsn for s in report.segments if s.base_lsn is not None), 0)
    debt = max(0, end - max(ckpt, first_base))
    to_apply = max(0, end - int(applied)) if applied is not None else debt
    measured = state.meta.get("replay_bytes_per_second")
    rate = float(measured or limits.replay_throughput_bytes_per_second_initial)
    seconds = debt / rate
    source = (f"at the {_mib(rate)}/s the last replay measured" if measured
              else f"assuming {_mib(rate)}/s replay (none measured yet)")
    ck = (status or {}).get("checkpoint") or {}
    if isinstance(ck.get("replay_debt_seconds"), int | float):
        seconds = float(ck["replay_debt_seconds"])
        debt = int(ck.get("replay_debt_bytes") or debt)
        source = "the server's own estimate (stemedb_wal_replay_debt_seconds)"
    data = {"debt_bytes": debt, "unapplied_bytes": to_apply, "estimated_seconds":
            round(seconds, 3), "checkpoint_lsn": ckpt, "applied_end_lsn": applied,
            "wal_end_lsn": end}
    summary = (f"{_mib(debt)} of WAL since the last checkpoint; estimated restart "
               f"{seconds:.1f} s")
    detail = (f"checkpoint LSN {ckpt}, applied LSN {applied}, WAL end LSN {end}; "
              f"{to_apply} bytes not yet applied to state.sqlite3; {source}")
    if seconds > REPLAY_DEBT_WARNING_SECONDS:
        return Finding("replay_debt", "warning", summary, detail, RB_REPLAY_DEBT, data)
    return Finding("replay_debt", "ok", summary, detail, data=data)


def check_checkpoint(data_dir: str, report: VerifyReport, state: _StateInfo | None,
                     status: dict[str, Any] | None) -> Finding:
    ck = (status or {}).get("checkpoint") or {}
    if ck.get("last_error"):
        return Finding("checkpoint_age", "warning", "the last checkpoint failed",
                       str(ck["last_error"]), RB_CHECKPOINT, {"last_error": ck["last_error"]})
    if state is None or report.wal_end_lsn is None:
        return Finding("checkpoint_age", "info", "checkpoint age unknown (no readable state)")
    ckpt = int(state.meta.get("checkpoint_lsn") or 0)
    debt = report.wal_end_lsn - ckpt
    if isinstance(ck.get("last_unix"), int | float):
        age = time.time() - float(ck["last_unix"])
        data = {"last_unix": ck["last_unix"], "age_seconds": round(age, 1)}
        summary = f"last checkpoint {age:.0f} s ago (checkpoint LSN {ckpt})"
        if age > CHECKPOINT_AGE_WARNING_SECONDS and debt > 0:
            return Finding("checkpoint_age", "warning", summary + " while the WAL grew", "",
                           RB_CHECKPOINT, data)
        return Finding("checkpoint_age", "ok", summary, data=data)
    first, last = _record_times(data_dir, ckpt)
    if first is None or last is None or debt <= 0:
        return Finding("checkpoint_age", "ok", f"every record is checkpointed "
                       f"(checkpoint LSN {ckpt})", data={"checkpoint_lsn": ckpt})
    span = last - first
    data = {"checkpoint_lsn": ckpt, "oldest_unchecked_unix": first, "newest_unix": last,
            "span_seconds": round(span, 1)}
    summary = (f"records written over {span:.0f} s since the last checkpoint "
               f"(checkpoint LSN {ckpt})")
    if span > CHECKPOINT_AGE_WARNING_SECONDS:
        return Finding("checkpoint_age", "warning",
                       summary + ": no checkpoint for over an hour while the WAL grew",
                       "the server checkpoints every [checkpoint] interval_seconds; check "
                       "journalctl -u stemedb-api | grep 'checkpoint failed'",
                       RB_CHECKPOINT, data)
    return Finding("checkpoint_age", "ok", summary, data=data)


def check_holds(data_dir: str, report: VerifyReport, state: _StateInfo | None,
                status: dict[str, Any] | None) -> Finding:
    end = report.wal_end_lsn
    live = (status or {}).get("holds")
    stuck: list[str] = []
    rows: list[dict[str, Any]] = []
    if isinstance(live, dict) and live:
        now = time.time()
        for name, h in sorted(live.items()):
            adv = h.get("last_advance_unix")
            lag = int(h.get("lag_bytes") or 0)
            rows.append({"hold": name, "lsn": h.get("lsn"), "lag_bytes": lag,
                         "last_advance_unix": adv})
            if isinstance(adv, int | float) and now - adv > HOLD_STUCK_SECONDS and lag > 0:
                stuck.append(f"{name} (not moved for {now - adv:.0f} s, keeps "
                             f"{_mib(lag)})")
    elif state is not None and state.holds and end is not None:
        last_base = next((x.base_lsn for x in reversed(report.segments)
                          if x.base_lsn is not None), 0)
        _, newest = _record_times(data_dir, last_base)
        for name, lsn, updated in state.holds:
            lag = max(0, end - lsn)
            rows.append({"hold": name, "lsn": lsn, "lag_bytes": lag,
                         "updated_unix": updated})
            if newest is not None and newest - updated > HOLD_STUCK_SECONDS and lag > 0:
                stuck.append(f"{name} (last set {newest - updated:.0f} s before the newest "
                             f"record, keeps {_mib(lag)})")
    if not rows:
        return Finding("holds", "ok", "no holds keep WAL segments")
    detail = "; ".join(f"{r['hold']}: LSN {r['lsn']}, lag {r['lag_bytes']} bytes" for r in rows)
    if stuck:
        return Finding("holds", "warning", "hold(s) stopped moving: " + ", ".join(stuck),
                       detail, RB_HOLD_STUCK, {"holds": rows})
    return Finding("holds", "ok", f"{len(rows)} hold(s) moving or idle", detail,
                   data={"holds": rows})


def _node_facts(data_dir: str, key: str) -> dict[str, Any]:
    """One table of ``<data-dir>/node.json`` (``archive``, ``backup``; empty when none)."""
    try:
        with open(os.path.join(data_dir, "node.json"), "rb") as f:
            doc = json.loads(f.read() or b"{}")
    except (OSError, ValueError):
        return {}
    a = doc.get(key) if isinstance(doc, dict) else None
    return a if isinstance(a, dict) else {}


def check_archive(data_dir: str, status: dict[str, Any] | None) -> Finding:
    """The WAL archive: configured, moving, under its cap, and nothing dropped.

    From the live server's status when there is one; else from ``node.json``, which
    keeps the archiver's timeline and every drop across restarts.  Dropped WAL is
    critical until a base backup taken after it lets restores reach past it.
    """
    from ..archive import drop_covered  # here: `wal verify` does not load the archive

    live = (status or {}).get("archive") if status is not None else None
    if isinstance(live, dict) and not live.get("configured", True):
        return Finding("archive", "info", "no WAL archive ([archive] url is empty): a lost "
                       "disk loses every write", "see docs/operations/archive.md")
    facts = live if isinstance(live, dict) else _node_facts(data_dir, "archive")
    if not facts:
        return Finding("archive", "info", "no WAL archive known (no server status, no "
                       "archive facts in node.json)")
    drops = [d for d in (facts.get("drops") or []) if isinstance(d, dict)]
    backup = ((status or {}).get("backup") or {}).get("last_backup") if status is not None \
        else _node_facts(data_dir, "backup").get("last_backup")
    if drops and not drop_covered(drops[-1], backup if isinstance(backup, dict) else None):
        d = drops[-1]
        return Finding("archive", "critical",
                       f"WAL was dropped from the archive ({len(drops)} time(s)): restores "
                       f"cannot cross LSN {d.get('parent_end_lsn')}..{d.get('start_lsn')}",
                       "the archive's backlog reached max_backlog_bytes under "
                       "on_backlog_full = \"drop\"; take a base backup once the archive "
                       "answers, and keep this disk safe until then",
                       RB_ARCHIVE_BACKLOG, {"drops": drops})
    if not isinstance(live, dict):
        return Finding("archive", "info", f"archive facts from node.json (timeline "
                       f"{facts.get('timeline')}); start the server, or pass --url, for its "
                       "progress", data={"archive": facts})
    data = {k: live.get(k) for k in ("url", "timeline", "archived_lsn", "durable_lsn",
                                      "backlog_bytes", "max_backlog_bytes", "lag_seconds",
                                      "consecutive_failures", "last_error")}
    if live.get("refusing_writes") or live.get("backlog_full"):
        return Finding("archive", "critical",
                       "the archive's backlog is at max_backlog_bytes: writes are refused "
                       "(507 archive_backlog_full)",
                       f"last error: {live.get('last_error')}", RB_ARCHIVE_BACKLOG, data)
    lag = float(live.get("lag_seconds") or 0.0)
    if lag > ARCHIVE_LAG_STALLED_SECONDS:
        return Finding("archive", "critical",
                       f"the archive is stalled: the oldest unarchived record is {lag:.0f} s "
                       "old (a lost disk loses that much)",
                       f"last error: {live.get('last_error')}", RB_ARCHIVE_FAILING, data)
    if int(live.get("consecutive_failures") or 0) > 0:
        return Finding("archive", "warning", "the archive's last tries failed; it retries",
                       f"last error: {live.get('last_error')}", RB_ARCHIVE_FAILING, data)
    return Finding("archive", "ok", f"archive at LSN {live.get('archived_lsn')} of "
                   f"{live.get('durable_lsn')} (lag {lag:.1f} s) to {live.get('url')}",
                   data=data)


# -- the live server -----------------------------------------------------------------

_SAMPLE_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
_LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Prometheus text exposition -> {sample name: [(labels, value)]}."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE_RE.match(line)
        if not m:
            continue
        try:
            value = float(m.group(3))
        except ValueError:
            continue
        labels = dict(_LABEL_RE.findall(m.group(2) or ""))
        out.setdefault(m.group(1), []).append((labels, value))
    return out


@dataclass
class ServerView:
    reachable: bool
    error: str | None = None
    metrics: dict[str, list[tuple[dict[str, str], float]]] = field(default_factory=dict)
    ready_status: int | None = None
    ready_body: str = ""
    status: dict[str, Any] | None = None
    status_error: str | None = None


def probe_server(url: str, token: str | None = None) -> ServerView:
    import httpx  # imported here: verify and dump should not pay for it at start-up

    base = url.rstrip("/")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with httpx.Client(timeout=HTTP_TIMEOUT_SECONDS, headers=headers) as c:
            r = c.get(f"{base}/metrics")
            if r.status_code != 200:
                return ServerView(False, f"GET /metrics answered {r.status_code}")
            view = ServerView(True, metrics=parse_metrics(r.text))
            rr = c.get(f"{base}/readyz")
            view.ready_status, view.ready_body = rr.status_code, rr.text.strip()
            rs = c.get(f"{base}/v1/admin/status")
            if rs.status_code == 200:
                try:
                    doc = rs.json()
                    view.status = doc if isinstance(doc, dict) else None
                except json.JSONDecodeError as exc:
                    view.status_error = f"not JSON: {exc}"
            else:
                view.status_error = f"GET /v1/admin/status answered {rs.status_code}"
            return view
    except httpx.HTTPError as exc:
        return ServerView(False, f"{type(exc).__name__}: {exc}")


def _sum(view: ServerView, name: str) -> float | None:
    samples = view.metrics.get(name)
    return None if samples is None else sum(v for _, v in samples)


def check_server(url: str, view: ServerView) -> list[Finding]:
    if not view.reachable:
        return [Finding("server", "warning", f"server not reachable at {url}",
                        f"{view.error}; is it running? systemctl status stemedb-api; "
                        "journalctl -u stemedb-api | tail -50")]
    out: list[Finding] = []
    errs = view.metrics.get("stemedb_wal_fsync_errors_total", [])
    total = sum(v for _, v in errs)
    per_seg = ", ".join(f"{lab.get('segment', '?')}: {v:g}" for lab, v in errs if v > 0)
    if total > 0:
        out.append(Finding("server_fsync_errors", "critical",
                           f"{total:g} WAL fsync error(s) since the server started",
                           f"stemedb_wal_fsync_errors_total {per_seg}", RB_FSYNC_FAILURE,
                           {"total": total}))
    else:
        out.append(Finding("server_fsync_errors", "ok", "no WAL fsync errors"))
    fenced = _sum(view, "stemedb_wal_writes_fenced")
    st_fsync = (view.status or {}).get("fsync") or {}
    if (fenced or 0) >= 1 or st_fsync.get("fenced") is True:
        out.append(Finding("server_fenced", "critical",
                           "writes are fenced: every write answers 500 wal_fsync_failed "
                           "until a restart",
                           str(st_fsync.get("error") or "stemedb_wal_writes_fenced 1") +
                           "; fix the disk, then: systemctl restart stemedb-api",
                           RB_FENCED, {"fenced": True}))
    else:
        out.append(Finding("server_fenced", "ok", "writes are not fenced"))
    if view.ready_status == 200:
        out.append(Finding("server_ready", "ok", "/readyz answers 200"))
    else:
        out.append(Finding("server_ready", "warning",
                           f"/readyz answers {view.ready_status}: not ready",
                           view.ready_body[:500], None, {"status": view.ready_status}))
    storage = _sum(view, "stemedb_storage_errors_total") or 0.0
    if storage > 0:
        out.append(Finding("server_storage_errors", "warning",
                           f"{storage:g} failed storage operation(s) since the server started",
                           "stemedb_storage_errors_total by operation", RB_STORAGE_RATE,
                           {"total": storage}))
    p99 = next((v for lab, v in view.metrics.get("stemedb_wal_fsync_duration_seconds", [])
                if lab.get("quantile") == "0.99"), None)
    if p99 is not None and p99 == p99 and p99 > FSYNC_P99_CRITICAL_MS / 1000:
        out.append(Finding("server_fsync_latency", "warning",
                           f"the server's fsync p99 is {p99 * 1000:.0f} ms (over 100 ms)",
                           "stemedb_wal_fsync_duration_seconds{quantile=\"0.99\"}",
                           RB_FSYNC_SLOW, {"p99_seconds": p99}))
    disk = (view.status or {}).get("disk") or {}
    if disk.get("refusing_writes"):
        out.append(Finding("server_disk_guard", "critical",
                           "the disk guard refuses writes (507 insufficient_storage)",
                           f"free {disk.get('free_bytes')} bytes, reserve "
                           f"{disk.get('reserve_bytes')} bytes", RB_DISK_FULL, dict(disk)))
    if view.status is None and view.status_error:
        out.append(Finding("server_status", "info", f"status not read: {view.status_error}",
                           "pass --token with an admin token if auth is on"))
    return out


# -- all together --------------------------------------------------------------------

def _on_another_filesystem(data_dir: str, wal_dir: str) -> bool:
    try:
        return os.stat(data_dir).st_dev != os.stat(wal_dir).st_dev
    except OSError:
        return False


def run_doctor(data_dir: str, url: str | None = None, *,
               reserve_bytes: int = limits.disk_reserve_bytes_default,
               token: str | None = None,
               kernel_log_command: tuple[str, ...] = ("dmesg",)) -> DoctorReport:
    report = DoctorReport(data_dir=data_dir, wal_dir=None, url=url)
    view = probe_server(url, token) if url else None
    status = view.status if view is not None else None
    try:
        wal_dir = resolve_wal_dir(data_dir)
    except ToolError as exc:
        report.findings.append(Finding("data_dir", "critical", exc.message, exc.hint or ""))
        wal_dir = None
    report.wal_dir = wal_dir
    if wal_dir is not None:
        report.findings.append(check_disk_space(wal_dir, reserve_bytes))
        if _on_another_filesystem(data_dir, wal_dir):  # wal.dir: the WAL on its own disk
            report.findings.append(check_disk_space(data_dir, reserve_bytes,
                                                    check="state_disk_space",
                                                    what="state filesystem"))
        write = check_write(wal_dir)
        report.findings.append(write)
        report.findings.append(check_mount(wal_dir))
        if write.severity == "ok":
            report.findings.append(check_fsync(wal_dir))
        else:
            report.findings.append(Finding("fsync_probe", "info",
                                           "skipped: the WAL directory is not writable",
                                           "see write_test"))
    report.findings.append(check_kernel_log(kernel_log_command))
    if wal_dir is not None:
        try:
            vr: VerifyReport | None = verify_dir(data_dir)
        except ToolError as exc:
            vr = None
            report.findings.append(Finding("wal_verify", "critical", exc.message,
                                           exc.hint or "", RB_STORAGE_ERRORS))
        if vr is not None:
            report.findings.append(check_wal(vr, server_up=bool(view and view.reachable)))
            state: _StateInfo | None = None
            sp = state_path_for(wal_dir)
            if sp is not None:
                try:
                    raw = read_state_meta(sp)
                    state = _StateInfo(raw["meta"], raw["holds"])
                except OSError:
                    state = None
            report.findings.append(check_replay_debt(vr, state, status))
            report.findings.append(check_checkpoint(data_dir, vr, state, status))
            report.findings.append(check_holds(data_dir, vr, state, status))
    report.findings.append(check_archive(data_dir, status))
    if url is not None and view is not None:
        report.findings.extend(check_server(url, view))
    return report
