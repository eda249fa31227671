"""Restore and point-in-time recovery: a base backup, then archived WAL replayed by
the engine's applier up to a target.

Targets (one at most; none: the newest archived record):

- ``to_lsn=N``: every record whose LSN is **below** N, none at or after it.  The
  ``lsn`` of a write's response names its record, so ``--to-lsn <that lsn>`` is the
  state just before that write.  Reached when the archive holds the WAL up to N.
- ``to_time=T``: every record whose time (its ``t``, when the node committed it) is
  **at or before** T, up to the first record after T.  Reached when a record after T
  is archived: the archive proves nothing about a time it holds no record after.
- ``to_epoch=N``: every record up to **and including** the seal of epoch N.
- none: every record up to the newest one of the newest timeline.  Reached when the
  path there has no gap.

A target that cannot be reached is :class:`TargetNotReached`, with the furthest point
the archive does reach; the directory is removed again.  The records go through
:meth:`stemedb.engine._applier.Applier.apply`, the code that applies live writes and
recovery's replay, in transactions of ``replay_apply_records_max`` records.

The restored directory holds the state, a WAL whose first segment begins where the
state ends (its base LSN is the applied LSN less the segment header, so the node's
next record continues the LSNs), and ``node.json`` naming a new timeline, claimed in
the archive by writing its history object first: the restored node's archiver
continues there and never writes an object name of the old history.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Any

from .. import limits
from .. import state as st
from ..archive import ArchiveKey, ArchiveReader, Target, timeline_history_name
from ..errors import ArchiveError, InvalidInput, StemeError
from ..layout import RESTORE_MARKER_NAME, wal_link_path
from ..metrics import Metrics
from ..read_index import ReadIndex
from ..storage import OsFileSystem, sync_dir
from ..wal import SEGMENT_HEADER_SIZE, RecordType, WalWriter
from ._fetch import download_backup
from ._manifest import Manifest, read_catalog
from ._plan import History, LegPlan, path_plans, read_history
from ._take import STATE_FILE

log = logging.getLogger("stemedb.backup")


@dataclass
class RestoreTarget:
    lsn: int | None = None
    time_unix: float | None = None
    time_text: str | None = None
    epoch: int | None = None

    def __post_init__(self) -> None:
        given = [x for x in (self.lsn, self.time_unix, self.epoch) if x is not None]
        if len(given) > 1:
            raise InvalidInput("give at most one restore target: --to-time, --to-lsn or "
                               "--to-epoch")
        if self.lsn is not None and self.lsn < 0:
            raise InvalidInput(f"--to-lsn must be at least 0, got {self.lsn}")
        if self.epoch is not None and self.epoch < 1:
            raise InvalidInput(f"--to-epoch must be at least 1, got {self.epoch}")

    @property
    def latest(self) -> bool:
        return self.lsn is None and self.time_unix is None and self.epoch is None

    def describe(self) -> str:
        if self.lsn is not None:
            return f"LSN {self.lsn} (every record below it)"
        if self.time_unix is not None:
            return f"time {self.time_text or self.time_unix} (every record at or before it)"
        if self.epoch is not None:
            return f"the seal of epoch {self.epoch}"
        return "the newest archived record"

    def admits(self, m: Manifest) -> bool:
        """Whether backup ``m`` holds nothing past the target."""
        if self.lsn is not None:
            return m.lsn <= self.lsn
        if self.time_unix is not None:
            return m.started_unix <= self.time_unix
        if self.epoch is not None:
            return m.open_epoch <= self.epoch
        return True


@dataclass
class RestoreReport:
    data_dir: str
    backup: dict[str, Any]
    target: str
    reached: bool
    end_lsn: int  # the restored state's applied LSN
    records: int  # WAL records replayed after the backup
    objects: int  # WAL objects downloaded
    last_record_lsn: int | None
    last_record_time: str | None
    last_sealed_epoch: int
    timeline_from: int
    timeline: int | None  # the restored node's own (None: not claimed, as in a drill)
    seconds: float
    gaps: list[dict[str, Any]] = field(default_factory=list)

    def furthest(self) -> str:
        t = f", time {self.last_record_time}" if self.last_record_time else ""
        last = (f"last record at LSN {self.last_record_lsn}{t}"
                if self.last_record_lsn is not None else "no record after the base backup")
        return f"LSN {self.end_lsn} ({last}; epoch {self.last_sealed_epoch} is the last sealed)"


class TargetNotReached(StemeError):
    code = "restore_target_not_reached"

    def __init__(self, message: str, report: RestoreReport, *, hint: str | None = None
                 ) -> None:
        super().__init__(message, hint=hint)
        self.report = report


def prepare_dir(data_dir: str) -> None:
    """``data_dir`` must be absent, empty, or a restore that did not finish (its
    marker is there): then it is emptied.  The marker is written first."""
    marker = os.path.join(data_dir, RESTORE_MARKER_NAME)
    if os.path.isdir(data_dir):
        entries = os.listdir(data_dir)
        if entries and RESTORE_MARKER_NAME not in entries:
            raise InvalidInput(f"--data-dir {data_dir} is not empty; a restore writes only "
                               f"into an empty or absent directory",
                               hint="give a new directory, or move this one aside")
        for e in entries:
            if e == RESTORE_MARKER_NAME:
                continue
            p = os.path.join(data_dir, e)
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p)
            else:
                os.remove(p)
        if entries:
            log.info("%s held a restore that did not finish: emptied, restoring again",
                     data_dir)
    elif os.path.exists(data_dir):
        raise InvalidInput(f"--data-dir {data_dir} exists and is not a directory")
    os.makedirs(data_dir, exist_ok=True)
    with open(marker, "wb") as f:
        f.write(b"a restore into this directory has not finished; run it again\n")
        os.fsync(f.fileno())
    sync_dir(data_dir)
    sync_dir(os.path.dirname(os.path.abspath(data_dir)))




def choose(target: Target, reader: ArchiveReader, to: RestoreTarget,
           backup_id: str | None) -> tuple[Manifest, History, int]:
    """The backup to start from, the archive's history and the timeline to follow."""
    catalog = read_catalog(target)
    history = read_history(reader, [b.timeline for b in catalog.backups])
    if backup_id is not None:
        m = catalog.find(backup_id)
        if m is None:
            bad = [f.message for f in catalog.faults]
            raise InvalidInput(f"{target.url} holds no base backup {backup_id}"
                               + (f" (damaged manifests: {'; '.join(bad)})" if bad else ""),
                               hint="stemedb backup list --from " + target.url)
        if not to.admits(m):
            raise InvalidInput(f"backup {backup_id} is past the target {to.describe()}",
                               hint="choose an older backup, or no --backup")
        return m, history, history.newest_descending_from(m.timeline)
    if not history.timelines:
        raise InvalidInput(f"{target.url} holds no base backup and no WAL",
                           hint="check the URL; a server takes its first base backup as "
                                "soon as its archive answers")
    newest = history.newest()
    on_line = [b for b in catalog.backups
               if history.legs(b, newest) is not None and to.admits(b)]
    if not on_line:
        bad = [f.message for f in catalog.faults]
        raise InvalidInput(f"{target.url} holds no base backup on timeline {newest}'s line "
                           f"of history that precedes the target {to.describe()}"
                           + (f" (damaged manifests: {'; '.join(bad)})" if bad else ""),
                           hint="stemedb backup list --from " + target.url)
    best = max(on_line, key=lambda b: (b.lsn, b.finished_unix))
    return best, history, newest


def restore(target: Target, data_dir: str, *, key: ArchiveKey | None = None,
            to: RestoreTarget | None = None, backup_id: str | None = None,
            claim_timeline: bool = True,
            segment_size_bytes: int = limits.segment_size_bytes_default,
            idempotency_ttl_seconds: float = limits.idempotency_ttl_seconds_default
            ) -> RestoreReport:
    """Restore into ``data_dir`` (see the module's docstring); the report, or
    :class:`TargetNotReached` / ArchiveError / InvalidInput with the directory removed
    again (a crash leaves it marked unfinished: run the restore again)."""
    to = to or RestoreTarget()
    t0 = time.monotonic()
    reader = ArchiveReader(target, key)
    m, history, newest = choose(target, reader, to, backup_id)
    prepare_dir(data_dir)
    try:
        report = _restore(target, reader, data_dir, m, history, newest, to, key,
                          claim_timeline, segment_size_bytes, idempotency_ttl_seconds, t0)
    except BaseException:
        with contextlib.suppress(OSError):
            shutil.rmtree(data_dir)
        raise
    return report


def _restore(target: Target, reader: ArchiveReader, data_dir: str, m: Manifest,
             history: History, newest: int, to: RestoreTarget, key: ArchiveKey | None,
             claim: bool, segment_size_bytes: int, ttl_seconds: float, t0: float
             ) -> RestoreReport:
    if m.encrypted and key is None:
        raise InvalidInput(f"backup {m.id} is encrypted (key id {m.key_id}) and no key was "
                           f"given", hint="--encryption-key-file, or "
                                          "STEMEDB_ARCHIVE_ENCRYPTION_KEY_FILE")
    download_backup(target, key, m, data_dir)
    db_path = os.path.join(data_dir, STATE_FILE)
    conn = st.connect(db_path)
    try:
        if st.applied_end_lsn(conn) != m.lsn:
            raise ArchiveError(f"backup {m.id}: its state has applied up to LSN "
                               f"{st.applied_end_lsn(conn)}, the manifest says {m.lsn}",
                               reason="verify")
        plans = path_plans(reader, history, m, newest) or []
        report = RestoreReport(data_dir, m.summary(), to.describe(), False, m.lsn, 0, 0,
                               None, None, max(0, m.open_epoch - 1), m.timeline, None, 0.0)
        stopped = _replay(reader, conn, plans, to, m, report, ttl_seconds)
        gap = next((p.gap for p in plans if p.gap is not None), None)
        if gap is not None:
            report.gaps.append(gap.as_dict())
        if to.lsn is not None:
            report.reached = stopped or report.end_lsn >= to.lsn or (
                gap is None and bool(plans) and plans[-1].reached_lsn >= to.lsn)
        elif to.latest:
            report.reached = gap is None
        else:
            report.reached = stopped
        if not report.reached:
            why = f"; the archive breaks at LSN {gap.start_lsn}..{gap.end_lsn}: {gap.why}" \
                if gap is not None else "; the archive holds no record past it"
            raise TargetNotReached(
                f"the restore target {to.describe()} cannot be reached from backup {m.id}: "
                f"the furthest reachable point is {report.furthest()}{why}", report,
                hint=f"restore with --to-lsn {report.end_lsn} to get that point, or wait "
                     f"for the archive to hold more WAL")
        # The new WAL continues from the state's end: the check of the last applied
        # record against the WAL has no WAL record to look at, and needs none.
        conn.execute("DELETE FROM meta WHERE key='applied_last_lsn'")
        st.set_meta(conn, "checkpoint_lsn", report.end_lsn)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    with open(db_path, "rb") as f:
        os.fsync(f.fileno())
    if claim:
        report.timeline = _claim_timeline(target, history, report, m)
    _start_wal(data_dir, report.end_lsn, segment_size_bytes)
    _write_node_facts(data_dir, report, m)
    os.remove(os.path.join(data_dir, RESTORE_MARKER_NAME))
    sync_dir(data_dir)
    report.seconds = round(time.monotonic() - t0, 3)
    log.info("restored backup %s and %d WAL record(s) into %s: LSN %d, target %s, timeline "
             "%s, %.3fs", m.id, report.records, data_dir, report.end_lsn, report.target,
             report.timeline, report.seconds)
    return report


def _replay(reader: ArchiveReader, conn: Any, plans: list[LegPlan], to: RestoreTarget,
            m: Manifest, report: RestoreReport, ttl_seconds: float) -> bool:
    """Apply the legs' records up to the target; True when a record past the target
    (or the seal of the target epoch) was met."""
    from ..engine import parse_rfc3339
    from ..engine._applier import Applier  # the one apply path; loaded when needed

    applier = Applier(conn, Metrics(), ReadIndex(m.lsn),
                      idempotency_ttl_seconds=ttl_seconds,
                      applied_records=m.applied_records)
    open_epoch = m.open_epoch
    seal, genesis = int(RecordType.SEAL), int(RecordType.GENESIS)
    batch: list[tuple[int, int, bytes, int]] = []
    batch_bytes = 0
    where: dict[int, str] = {}

    def flush() -> None:
        nonlocal batch_bytes
        if batch:
            first = batch[0][0]
            name = where.get(first, "?")
            out = applier.apply(batch, lambda lsn: (name, lsn - first))
            report.end_lsn = out.end_lsn
            report.last_record_lsn = batch[-1][0]
            report.records += len(batch)
            batch.clear()
            batch_bytes = 0

    for plan in plans:
        end = plan.leg.end_lsn
        report.timeline_from = plan.leg.timeline  # the line the restored state is on
        for obj in plan.objects:
            if to.lsn is not None and obj.start_lsn >= to.lsn:
                flush()
                return True  # never download what the target does not need
            wal = reader.fetch(obj)  # ArchiveCorruption names the object
            report.objects += 1
            for lsn, rtype, payload in wal.records():
                if lsn < plan.leg.start_lsn:
                    continue
                if end is not None and lsn >= end:
                    break
                if to.lsn is not None and lsn >= to.lsn:
                    flush()
                    return True
                t_text = st.RECORD_DECODER.decode(payload).t
                if to.time_unix is not None and parse_rfc3339(t_text) > to.time_unix:
                    flush()
                    return True
                if not batch:
                    where[lsn] = obj.name
                batch.append((lsn, rtype, payload, lsn - obj.start_lsn))
                batch_bytes += len(payload)
                report.last_record_time = t_text
                if rtype == genesis:
                    open_epoch = 1
                elif rtype == seal:
                    report.last_sealed_epoch = open_epoch
                    open_epoch += 1
                    if to.epoch is not None and report.last_sealed_epoch == to.epoch:
                        flush()
                        return True
                if (len(batch) >= limits.replay_apply_records_max
                        or batch_bytes >= limits.replay_apply_bytes_max):
                    flush()
        flush()
    return False


def _claim_timeline(target: Target, history: History, report: RestoreReport,
                    m: Manifest) -> int:
    """Write the history object of a timeline no one has used; its number."""
    t = max([*history.timelines, m.timeline]) + 1
    for _ in range(limits.restore_timeline_claims_max):  # bounded: a run of claimed ones
        doc = {"timeline": t, "parent_timeline": report.timeline_from,
               "parent_end_lsn": report.end_lsn, "start_lsn": report.end_lsn,
               "unix": round(time.time(), 3),
               "reason": f"restored from base backup {m.id} to {report.target}"}
        data = json.dumps(doc, sort_keys=True).encode()
        if target.put_if_absent(timeline_history_name(t), data):
            if target.get(timeline_history_name(t)) != data:
                raise ArchiveError(f"{target.url}: {timeline_history_name(t)} read back "
                                   f"differs from what was written", reason="verify")
            return t
        t += 1
    raise ArchiveError(f"{target.url}: {limits.restore_timeline_claims_max} timeline numbers "
                       f"in a row are taken", reason="conflict")


def _start_wal(data_dir: str, end_lsn: int, segment_size_bytes: int) -> None:
    wal_dir = wal_link_path(data_dir)
    os.makedirs(wal_dir, exist_ok=True)
    w = WalWriter(OsFileSystem(), wal_dir, segment_size_bytes=segment_size_bytes,
                  background_preallocate=False)
    w.create_first(seq=1, base_lsn=end_lsn - SEGMENT_HEADER_SIZE)
    w.close()
    sync_dir(data_dir)


def _write_node_facts(data_dir: str, report: RestoreReport, m: Manifest) -> None:
    from ..engine._retention import NodeFacts

    facts = NodeFacts(data_dir)
    if report.timeline is not None:
        facts.archive = {"timeline": report.timeline, "timeline_start_lsn": report.end_lsn,
                         "restored_from": {"backup": m.id, "timeline": report.timeline_from,
                                           "lsn": report.end_lsn, "target": report.target}}
    facts.save()


__all__ = ["RestoreReport", "RestoreTarget", "TargetNotReached", "choose", "prepare_dir",
           "restore"]
