"""The server's backup thread: base backups on schedule and on request, restore drills
on schedule, each measured and reported.

One thread per engine (``stemedb-backup``), started with the archiver; nothing of it
runs on the event loop.  A base backup is due when the archiver's timeline has none
yet (the first after archiving began, after a restore, or after WAL was dropped: taken
as soon as the archive answers, retried with a backoff until it does), or when the
last one is ``interval_hours`` old.  A drill is due ``drill_interval_hours`` after the
last one (the first as soon as a backup exists).  Requests (``POST
/v1/admin/backup``) run in order between them.  The times of the last backup and drill
survive restarts in ``node.json``.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import logging
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable
from typing import Any

from .. import limits
from ..archive import Archiver
from ..errors import Unavailable
from ..metrics import Metrics
from ._drill import DrillReport, StateFacts, run_drill
from ._manifest import Manifest, read_catalog
from ._settings import BackupSettings
from ._take import SCRATCH_NAME, take_base_backup

log = logging.getLogger("stemedb.backup")
HOUR_SECONDS = 3600.0


class BackupScheduler:
    """Base backups and drills of one engine.

    The engine gives it the archiver (target, key, timeline), the state's path,
    ``wait_applied(lsn)`` (blocks until the applier reached ``lsn``), ``live(lsn)``
    (the live state's facts below ``lsn``, for the drill) and ``save(doc)`` (into
    ``node.json``).
    """

    def __init__(self, settings: BackupSettings, *, archiver: Archiver, db_path: str,
                 data_dir: str, metrics: Metrics, facts: dict[str, Any],
                 save: Callable[[dict[str, Any]], None],
                 wait_applied: Callable[[int], None],
                 live: Callable[[int], StateFacts] | None,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.archiver = archiver
        self.db_path = db_path
        self.scratch_dir = os.path.join(data_dir, SCRATCH_NAME)
        self.m = metrics
        self.facts = dict(facts)
        self._save = save
        self._wait_applied = wait_applied
        self._live = live
        self.clock = clock
        self._requests: queue.SimpleQueue[tuple[str, cf.Future[Any]]] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._listed = False
        self._retry_at = 0.0
        self._failures_in_row = 0
        self.last_backup: dict[str, Any] | None = self.facts.get("last_backup")
        self.last_error: str | None = None
        self.last_error_unix: float | None = None
        self.last_drill: dict[str, Any] | None = self.facts.get("last_drill")
        self.in_progress: str | None = None
        metrics.backup_interval_seconds.set(self.settings.interval_hours * 3600)
        metrics.backup_drill_interval_seconds.set(self.settings.drill_interval_hours * 3600)
        verified = self.facts.get("last_verified_unix")
        if verified:
            metrics.backup_last_verified_timestamp_seconds.set(float(verified))
        if self.last_backup:
            self._published(self.last_backup)

    # -- requests -------------------------------------------------------------------
    def request(self, what: str) -> cf.Future[Any]:
        """``"backup"`` or ``"drill"`` now, after what the thread is doing; a future
        of its :class:`Manifest` or :class:`DrillReport`."""
        fut: cf.Future[Any] = cf.Future()
        if not self.running:
            fut.set_exception(Unavailable("the backup thread is not running (the node is "
                                          "starting or stopping)",
                                          code="backup_unavailable"))
            return fut
        self._requests.put((what, fut))
        self._wake.set()
        return fut

    # -- the thread -----------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="stemedb-backup", daemon=True)
        self._thread.start()

    def stop(self, timeout_seconds: float = limits.backup_stop_seconds) -> bool:
        self._stop.set()
        self._wake.set()
        t = self._thread
        if t is not None:
            t.join(timeout_seconds)
            if t.is_alive():
                log.error("the backup thread did not stop within %.1fs (a backup or drill "
                          "in progress); it ends with the process", timeout_seconds)
                return False
        while True:  # bounded: what was queued
            try:
                _, fut = self._requests.get_nowait()
            except queue.Empty:
                break
            fut.set_exception(Unavailable("the server is stopping", code="stopping"))
        return True

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stop.is_set()

    def _run(self) -> None:
        # A backup's copy or a drill's restore that a crash interrupted: never reused.
        shutil.rmtree(self.scratch_dir, ignore_errors=True)
        while not self._stop.is_set():  # bounded by stop()
            try:
                what, fut = self._requests.get_nowait()
            except queue.Empty:
                what, fut = "", None
            if fut is not None:
                self._serve(what, fut)
                continue
            try:
                self._scheduled()
            except Exception:  # logged; the thread goes on
                log.exception("backup schedule")
            self._wake.wait(limits.backup_poll_seconds)
            self._wake.clear()

    def _serve(self, what: str, fut: cf.Future[Any]) -> None:
        if not fut.set_running_or_notify_cancel():
            return
        try:
            fut.set_result(self.backup_now() if what == "backup" else self.drill_now())
        except BaseException as exc:
            fut.set_exception(exc)

    def _scheduled(self) -> None:
        now = self.clock()
        s = self.settings
        if not self._listed:
            if now < self._retry_at:
                return
            try:
                self._learn_from_archive()
            except Exception as exc:
                self._backup_failed(exc, listing=True)
                return
        if now >= self._retry_at and self._backup_due(now):
            with contextlib.suppress(Exception):  # counted, logged, retried by backup_now
                self.backup_now()
        # In the same pass: a backup that is always due must not starve the drills.
        if s.drill_interval_hours > 0 and self.last_backup is not None and not self._stop.is_set():
            last = float((self.last_drill or {}).get("started_unix") or 0)
            if self.clock() - last >= s.drill_interval_hours * HOUR_SECONDS:
                self.drill_now()

    def _backup_due(self, now: float) -> bool:
        last = self.last_backup
        if last is None or int(last.get("timeline", 0)) != self.archiver.timeline:
            return True  # every timeline gets a base backup as soon as the archive answers
        s = self.settings
        return s.interval_hours > 0 and now - float(last["finished_unix"]) >= \
            s.interval_hours * HOUR_SECONDS

    def _learn_from_archive(self) -> None:
        """The newest backup of the archiver's timeline, once, before the schedule."""
        catalog = read_catalog(self.archiver.target)
        mine = [b for b in catalog.backups if b.timeline == self.archiver.timeline]
        if mine:
            newest = max(mine, key=lambda b: b.finished_unix)
            if self.last_backup is None or \
                    float(self.last_backup.get("finished_unix", 0)) < newest.finished_unix:
                self.last_backup = newest.summary() | {"finished_unix": newest.finished_unix,
                                                       "timeline": newest.timeline,
                                                       "lsn": newest.lsn}
                self._published(self.last_backup)
        self._listed = True

    # -- one backup, one drill (on this thread, or a caller's that is not the loop) ---
    def backup_now(self) -> Manifest:
        a = self.archiver
        timeline = a.timeline
        start = int(a.state.get("timeline_start_lsn") or 0)
        self.in_progress = "backup"
        t0 = time.monotonic()
        try:
            # The copy must be at or past the timeline's start, so the timeline's WAL
            # continues it (after a drop, the applier may still be behind it).
            self._wait_applied(start)
            m = take_base_backup(self.db_path, self.scratch_dir, target=a.target, key=a.key,
                                 timeline=timeline, clock=self.clock)
        except Exception as exc:
            self._backup_failed(exc)
            raise
        finally:
            self.in_progress = None
        self._failures_in_row = 0
        self._retry_at = 0.0
        self.last_error = None
        self.last_backup = m.summary() | {"finished_unix": m.finished_unix,
                                          "timeline": m.timeline, "lsn": m.lsn,
                                          "seconds": round(time.monotonic() - t0, 3)}
        self.m.backup_duration_seconds.set(time.monotonic() - t0)
        self._published(self.last_backup)
        self._persist()
        return m

    def _published(self, b: dict[str, Any]) -> None:
        self.m.backup_last_success_timestamp_seconds.set(float(b["finished_unix"]))
        self.m.backup_size_bytes.set(float(b.get("size_bytes") or 0))
        self.m.backup_lsn.set(float(b.get("lsn") or 0))

    def _backup_failed(self, exc: BaseException, *, listing: bool = False) -> None:
        self._failures_in_row += 1
        s = self.settings
        wait = min(s.retry_seconds_initial * 2 ** min(self._failures_in_row - 1, 30),
                   s.retry_seconds_max)
        self._retry_at = self.clock() + wait
        self.last_error = f"{type(exc).__name__}: {exc}"
        self.last_error_unix = self.clock()
        if not listing:
            self.m.backup_failures_total.inc()
        log.error("base backup to %s failed%s: %s; trying again in %.1fs",
                  self.archiver.target.url, " (listing the archive's backups)" if listing
                  else "", exc, wait)

    def drill_now(self) -> DrillReport:
        self.in_progress = "drill"
        try:
            os.makedirs(self.scratch_dir, exist_ok=True)
            r = run_drill(self.archiver.target, self.archiver.key, self.scratch_dir,
                          live=self._live, clock=self.clock)
        finally:
            self.in_progress = None
        self.m.restore_drills_total.inc()
        self.last_drill = r.as_dict()
        if r.passed:
            self.m.backup_last_verified_timestamp_seconds.set(r.started_unix)
            self.facts["last_verified_unix"] = r.started_unix
            log.info("restore drill passed: backup %s restored and replayed to LSN %s "
                     "(%d records), %d sealed epoch(s) checked, %.3fs", r.backup, r.lsn,
                     r.records_replayed, r.epochs_checked, r.seconds)
        else:
            self.m.restore_drill_failures_total.inc()
            log.error("RESTORE DRILL FAILED: %s", "; ".join(r.problems))
        self._persist()
        return r

    def _persist(self) -> None:
        self.facts["last_backup"] = self.last_backup
        self.facts["last_drill"] = self.last_drill
        try:
            self._save(self.facts)
        except OSError as exc:
            log.warning("could not save the backup facts in node.json: %s", exc)

    def status(self) -> dict[str, Any]:
        s = self.settings
        return {
            "configured": True,
            "running": self.running,
            "in_progress": self.in_progress,
            "interval_hours": s.interval_hours,
            "drill_interval_hours": s.drill_interval_hours,
            "retain_count": s.retain_count,
            "retain_days": s.retain_days,
            "last_backup": self.last_backup,
            "last_error": self.last_error,
            "last_error_unix": self.last_error_unix,
            "consecutive_failures": self._failures_in_row,
            "last_drill": self.last_drill,
            "last_verified_unix": self.facts.get("last_verified_unix"),
        }


__all__ = ["BackupScheduler"]
