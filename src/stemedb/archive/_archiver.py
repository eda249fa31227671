"""The continuous archiver: durable WAL to the archive, verified, then released.

One thread per engine (``stemedb-archiver``).  Every ``interval_seconds`` it ships
the WAL between its position and the durable LSN (never past it) as objects of at most
``object_bytes_max`` plaintext bytes.  An object is read back and checked before the
position moves; then the engine's ``archive`` hold moves to it, so a checkpoint removes
a segment only once every byte of it is in the archive, verified.

A failure is logged with the target's own error, counted by reason
(``stemedb_archive_failures_total``) and retried: up to ``upload_attempts_max`` tries per
object in a pass, then passes spaced by a backoff that doubles up to
``backoff_seconds_max``.  The archiver never gives up on its own.  What bounds the
WAL it keeps is ``max_backlog_bytes``: past it, ``refuse_writes`` makes the committer
refuse writes with 507 ``archive_backlog_full`` until the backlog drains, and ``drop``
releases the WAL, starts a new timeline and says so in the log, the metrics and the
status.

The position survives restarts: the hold (and the timeline) are in ``node.json``, and
at start the archiver looks in the archive for objects past its hold (uploaded, but a
crash came before the hold moved), checks them and moves on from their end, so no two
objects of a timeline overlap.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from .. import limits
from ..errors import ArchiveError, ArchiveObjectConflict, StemeError
from ..metrics import ARCHIVE_FAILURE_REASONS, Metrics
from ._cipher import ArchiveKey
from ._format import ObjectFault, ObjectHeader, pack_object
from ._heartbeat import Heartbeat
from ._naming import WalObjectName, timeline_history_name
from ._reader import ArchiveReader, verify_object
from ._settings import ArchiveSettings
from ._target import Target
from ._wal_source import WalChunk, WalSource

log = logging.getLogger("stemedb.archive")

HOLD_NAME = "archive"
_REASONS = frozenset(ARCHIVE_FAILURE_REASONS)


class Archiver:
    """Ships one engine's durable WAL to its archive.

    The engine gives it four calls: ``durable_lsn()`` (the end of the fsynced WAL, any
    thread), ``written_lsn()`` (the end of the written WAL, the committer's thread),
    ``move_hold(lsn)`` (blocking until the hold is saved) and ``save_state(doc)`` (the
    timeline, into ``node.json``).
    """

    def __init__(self, settings: ArchiveSettings, *, target: Target, source: WalSource,
                 metrics: Metrics, key: ArchiveKey | None,
                 durable_lsn: Callable[[], int], written_lsn: Callable[[], int],
                 move_hold: Callable[[int], None],
                 save_state: Callable[[dict[str, Any]], None],
                 state: dict[str, Any], start_lsn: int,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.target = target
        self.source = source
        self.m = metrics
        self.key = key
        self._durable_lsn = durable_lsn
        self._written_lsn = written_lsn
        self._move_hold = move_hold
        self._save_state = save_state
        self.clock = clock
        self.reader = ArchiveReader(target, key, plaintext_bytes_max=settings.object_bytes_max)
        self.state = dict(state)
        self.timeline = int(self.state.get("timeline", 1))
        self.lsn = start_lsn  # everything before it is in the archive, verified
        self.hold_lsn = start_lsn  # where the engine's hold is (it follows self.lsn)
        self.last_success_unix: float | None = None
        self.last_error: str | None = None
        self.last_error_reason: str | None = None
        self.last_error_unix: float | None = None
        self.consecutive_failures = 0
        self.failures: dict[str, int] = {}
        self.objects_archived = 0
        self.bytes_archived = 0
        self._reconciled = False
        self._caught_up_unix = clock()
        self._oldest: tuple[int, float | None] | None = None  # (lsn, its record time)
        self.heartbeat = (Heartbeat(settings.heartbeat_url,
                                    settings.heartbeat_interval_seconds, metrics)
                          if settings.heartbeat_url else None)
        self._pass_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        m = metrics
        m.archive_timeline.set(self.timeline)
        m.archive_lsn.set(self.lsn)
        m.archive_max_backlog_bytes.set(settings.max_backlog_bytes)
        m.archive_backlog_bytes.set_function(self.backlog_bytes)
        m.archive_lag_seconds.set_function(self.lag_seconds)
        m.archive_backlog_full.set_function(lambda: float(self.backlog_full()))

    # -- positions ----------------------------------------------------------------
    def backlog_bytes(self) -> int:
        """Durable WAL not in the archive yet (what the hold keeps for it)."""
        return max(0, self._durable_lsn() - self.lsn)

    def backlog_full(self) -> bool:
        return self.backlog_bytes() >= self.settings.max_backlog_bytes

    def lag_seconds(self) -> float:
        """Age of the oldest durable record not yet archived; 0 when caught up."""
        if self._durable_lsn() <= self.lsn:
            return 0.0
        oldest = self._oldest
        t = oldest[1] if oldest is not None and oldest[0] == self.lsn else None
        if t is None:
            # Not read yet: the record is younger than the last moment the archive
            # had everything (an upper bound, late by at most one interval).
            t = self._caught_up_unix
        return max(0.0, self.clock() - t)

    def refusal(self) -> str | None:
        """For the committer, before each group: why writes are refused, or None.
        Only under ``refuse_writes``; no I/O."""
        s = self.settings
        if s.on_backlog_full != "refuse_writes":
            return None
        backlog = self._written_lsn() - self.lsn
        if backlog < s.max_backlog_bytes:
            return None
        return (f"the archive has not taken {backlog} bytes of WAL, the cap is "
                f"max_backlog_bytes={s.max_backlog_bytes} (on_backlog_full="
                f"refuse_writes): writes wait for the archive; last archive error: "
                f"{self.last_error or 'none yet'}")

    # -- the thread -----------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="stemedb-archiver",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout_seconds: float = limits.archive_stop_seconds) -> bool:
        """Stop the thread (its pass in progress finishes first); False when it did
        not stop in time (an upload that has not returned)."""
        self._stop.set()
        t = self._thread
        if t is not None:
            t.join(timeout_seconds)
            if t.is_alive():
                log.error("the archiver did not stop within %.1fs (an upload that has not "
                          "returned); what it had not shipped stays held in the WAL and "
                          "ships at the next start", timeout_seconds)
                return False
        return True

    def final_pass(self) -> None:
        """After the writer stopped: ship what is durable once more (one try per
        object), so a clean stop leaves the archive up to date when the target works."""
        try:
            self.run_pass(attempts_max=1)
        except Exception as exc:  # counted and logged by run_pass
            log.warning("the archive's last pass before stopping failed: %s; the WAL it "
                        "did not take stays held and ships at the next start", exc)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        s = self.settings
        while not self._stop.is_set():  # bounded by stop(); each pass is bounded
            try:
                self.run_pass()
                wait = s.interval_seconds
            except Exception:
                n = self.consecutive_failures
                wait = min(max(s.interval_seconds,
                               s.backoff_seconds_initial * 2 ** min(n, 30)),
                           s.backoff_seconds_max)
            self._stop.wait(wait)

    # -- one pass -------------------------------------------------------------------
    def run_pass(self, attempts_max: int | None = None) -> int:
        """Ship everything durable now (at most ``archive_objects_per_pass_max``
        objects); returns the objects shipped.  Raises the last failure."""
        with self._pass_lock:
            try:
                return self._pass(attempts_max or self.settings.upload_attempts_max)
            except ArchiveError as exc:
                self._failed(exc)
                raise
            except Exception as exc:
                err = ArchiveError(f"the archiver failed: {type(exc).__name__}: {exc}",
                                   reason="other")
                log.exception("archive pass failed")
                self._failed(err, logged=True)
                raise err from exc
            finally:
                self._note_oldest()

    def _pass(self, attempts_max: int) -> int:
        if not self._reconciled:
            self._reconcile()
        durable = self._durable_lsn()
        if (self.settings.on_backlog_full == "drop"
                and durable - self.lsn >= self.settings.max_backlog_bytes):
            self._drop(durable)
        if self.hold_lsn < self.lsn:
            self._hold(self.lsn)
        for event in self._pending_histories():  # bounded: archive_drops_kept_max
            self._put_history(event, attempts_max)
        shipped = 0
        while self.lsn < durable and shipped < limits.archive_objects_per_pass_max:
            try:
                chunk = self.source.read(self.lsn, durable, self.settings.object_bytes_max)
            except ArchiveError:
                raise
            except OSError as exc:
                raise ArchiveError(f"reading the WAL at LSN {self.lsn}: {exc}",
                                   reason="wal_read") from exc
            self._ship(chunk, attempts_max)
            shipped += 1
            self._hold(chunk.end_lsn)
        if self.lsn >= durable:
            self._caught_up_unix = self.clock()
            if self.heartbeat is not None:  # everything durable is archived: say so
                self.heartbeat.beat()
        if self.consecutive_failures:
            log.info("archive %s works again: timeline %d is archived up to LSN %d",
                     self.target.url, self.timeline, self.lsn)
        self.consecutive_failures = 0
        return shipped

    def _ship(self, chunk: WalChunk, attempts_max: int) -> None:
        parts = WalObjectName(self.timeline, chunk.start_lsn, chunk.end_lsn)
        header, data = pack_object(self.timeline, chunk.start_lsn, chunk.end_lsn,
                                   chunk.records, chunk.data, self.key)
        for attempt in range(1, attempts_max + 1):  # bounded: upload_attempts_max
            try:
                self._put_verified(parts, header, data)
                break
            except ArchiveObjectConflict:
                raise  # another history: trying again cannot help
            except ArchiveError as exc:
                if attempt == attempts_max:
                    raise
                self._failed(exc, attempt=attempt, attempts_max=attempts_max)
                delay = min(self.settings.backoff_seconds_initial * 2 ** (attempt - 1),
                            self.settings.backoff_seconds_max)
                if self._stop.wait(delay):
                    raise
        now = self.clock()
        self.lsn = chunk.end_lsn
        self.last_success_unix = now
        self.objects_archived += 1
        self.bytes_archived += len(data)
        m = self.m
        m.archive_lsn.set(self.lsn)
        m.archive_last_success_timestamp_seconds.set(now)
        m.archive_objects_total.inc()
        m.archive_uploaded_bytes_total.inc(len(data))

    def _put_verified(self, parts: WalObjectName, header: ObjectHeader, data: bytes) -> None:
        """Create the object (or find the same content there), then read it back."""
        name = parts.name
        created = self.target.put_if_absent(name, data)
        back = self.target.get(name)
        if created:
            if back != data:
                raise ArchiveError(f"{self.target.url}: {name} read back differs from what "
                                   f"was written ({len(back)} of {len(data)} bytes)",
                                   reason="verify")
            return
        # The name was taken: the same records (a re-upload after a crash) are fine,
        # anything else is another history at the same place.
        try:
            there = ObjectHeader.decode(back)
        except ObjectFault as exc:
            raise self._conflict(name, f"what is there is not an archived WAL object "
                                       f"({exc})") from exc
        if there.plaintext_sha256 != header.plaintext_sha256:
            raise self._conflict(name, f"it holds other records (SHA-256 "
                                       f"{there.plaintext_sha256.hex()[:16]}…, ours "
                                       f"{header.plaintext_sha256.hex()[:16]}…)")
        verify_object(parts, back, self.key, self.settings.object_bytes_max)
        log.info("archive %s already holds %s with the same records (uploaded before a "
                 "restart); keeping it", self.target.url, name)

    def _conflict(self, name: str, why: str) -> ArchiveObjectConflict:
        return ArchiveObjectConflict(
            f"{self.target.url}: {name} exists and {why}; it is never overwritten",
            name=name, hint="another node or database archives to the same URL: give each "
                            "its own archive.url (or prefix)")

    def _hold(self, lsn: int) -> None:
        try:
            self._move_hold(lsn)
        except StemeError as exc:
            raise ArchiveError(f"the WAL hold could not move to LSN {lsn}: {exc}",
                               reason="hold") from exc
        except TimeoutError as exc:
            raise ArchiveError(f"the writer did not move the WAL hold to LSN {lsn} within "
                               f"{limits.archive_hold_wait_seconds}s", reason="hold") from exc
        self.hold_lsn = lsn

    # -- start-up: where the archive really is ------------------------------------------
    def _reconcile(self) -> None:
        """Objects of this timeline from our position on: checked, and the position
        moved past them (uploaded before a crash kept the hold from moving)."""
        objs = self.reader.wal_objects(self.timeline, from_lsn=self.lsn)
        durable = self._durable_lsn()
        lsn = self.lsn
        for o in objs:  # bounded by the listing
            if o.start_lsn != lsn:
                raise ArchiveError(
                    f"{self.target.url}: timeline {self.timeline} holds {o.name}, which does "
                    f"not continue this node's archive position LSN {lsn}",
                    reason="archive_mismatch",
                    hint="another node or database archives to the same URL: give each its "
                         "own archive.url")
            if o.end_lsn > durable:
                raise ArchiveError(
                    f"{self.target.url}: {o.name} reaches past this node's durable WAL "
                    f"(LSN {durable})", reason="archive_mismatch",
                    hint="another node or database archives to the same URL")
            self.reader.fetch(o)
            lsn = o.end_lsn
        if lsn != self.lsn:
            log.info("archive %s already holds timeline %d up to LSN %d (past this node's "
                     "hold at %d): continuing from there", self.target.url, self.timeline,
                     lsn, self.lsn)
            self.lsn = lsn
            self.m.archive_lsn.set(lsn)
        self._reconciled = True

    # -- the cap under "drop" ----------------------------------------------------------
    def _drop(self, durable: int) -> None:
        old, lost_from = self.timeline, self.lsn
        event = {"timeline": old + 1, "parent_timeline": old, "parent_end_lsn": lost_from,
                 "start_lsn": durable, "dropped_bytes": durable - lost_from,
                 "unix": round(self.clock(), 3),
                 "reason": f"on_backlog_full=drop: the archive had not taken "
                           f"{durable - lost_from} bytes of WAL (max_backlog_bytes="
                           f"{self.settings.max_backlog_bytes}); last error: "
                           f"{self.last_error or 'none'}"}
        drops = list(self.state.get("drops") or [])[-(limits.archive_drops_kept_max - 1):]
        state = dict(self.state, timeline=old + 1, timeline_start_lsn=durable,
                     drops=[*drops, event],
                     history_pending=[*self._pending_histories(), event])
        self._save_state(state)  # first: a crash after it never reuses the old timeline
        self.state = state
        self.timeline, self.lsn = old + 1, durable
        m = self.m
        m.archive_drops_total.inc()
        m.archive_dropped_bytes_total.inc(durable - lost_from)
        m.archive_timeline.set(self.timeline)
        m.archive_lsn.set(self.lsn)
        log.error("ARCHIVE DROPPED WAL: the archive %s had not taken LSN %d..%d (%d bytes, "
                  "max_backlog_bytes=%d, on_backlog_full=drop); that WAL is released "
                  "locally and will never be archived. Archiving goes on as timeline %d "
                  "from LSN %d. Until a base backup is taken after it, the archive cannot "
                  "restore past LSN %d. Last error: %s", self.target.url, lost_from, durable,
                  durable - lost_from, self.settings.max_backlog_bytes, self.timeline,
                  durable, lost_from, self.last_error)
        self._hold(durable)

    def _put_history(self, event: dict[str, Any], attempts_max: int) -> None:
        """``timelines/NNNNNNNN.json``: why the timeline began, before its first object."""
        name = timeline_history_name(int(event["timeline"]))
        data = json.dumps(event, sort_keys=True).encode()
        created = self.target.put_if_absent(name, data)
        back = self.target.get(name)
        if back != data:
            if created:
                raise ArchiveError(f"{self.target.url}: {name} read back differs from what "
                                   "was written", reason="verify")
            raise self._conflict(name, "it holds another history of that timeline")
        state = dict(self.state)
        left = [e for e in self._pending_histories() if e != event]
        if left:
            state["history_pending"] = left
        else:
            state.pop("history_pending", None)
        self._save_state(state)
        self.state = state

    def _pending_histories(self) -> list[dict[str, Any]]:
        """History objects not written yet, oldest first: a second drop while the
        archive is still down must not lose the first one's (a restore follows the
        chain of histories from the newest timeline back)."""
        p = self.state.get("history_pending")
        items = [p] if isinstance(p, dict) else p if isinstance(p, list) else []
        return [e for e in items if isinstance(e, dict)][-limits.archive_drops_kept_max:]

    # -- failures and status ------------------------------------------------------------
    def _failed(self, exc: ArchiveError, *, attempt: int | None = None,
                attempts_max: int | None = None, logged: bool = False) -> None:
        reason = exc.reason if exc.reason in _REASONS else "other"
        self.m.archive_failures_total.labels(reason=reason).inc()
        self.failures[reason] = self.failures.get(reason, 0) + 1
        self.consecutive_failures += 1
        self.last_error = str(exc)
        self.last_error_reason = reason
        self.last_error_unix = self.clock()
        if not logged:
            tries = f" (try {attempt} of {attempts_max})" if attempt else ""
            log.error("archive %s failed [%s]%s: %s; timeline %d is archived up to LSN %d, "
                      "%d bytes behind", self.target.url, reason, tries, exc, self.timeline,
                      self.lsn, self.backlog_bytes())

    def _note_oldest(self) -> None:
        if self._durable_lsn() > self.lsn and (self._oldest is None
                                               or self._oldest[0] != self.lsn):
            self._oldest = (self.lsn, self.source.record_time(self.lsn))

    def status(self) -> dict[str, Any]:
        s = self.settings
        drops = list(self.state.get("drops") or [])
        full = self.backlog_full()
        out: dict[str, Any] = {
            "configured": True,
            "url": self.target.url,
            "encrypted": self.key is not None,
            "running": self.running,
            "timeline": self.timeline,
            "timeline_start_lsn": self.state.get("timeline_start_lsn"),
            "archived_lsn": self.lsn,
            "hold_lsn": self.hold_lsn,
            "durable_lsn": self._durable_lsn(),
            "backlog_bytes": self.backlog_bytes(),
            "max_backlog_bytes": s.max_backlog_bytes,
            "on_backlog_full": s.on_backlog_full,
            "backlog_full": full,
            "refusing_writes": full and s.on_backlog_full == "refuse_writes",
            "lag_seconds": round(self.lag_seconds(), 3),
            "interval_seconds": s.interval_seconds,
            "last_success_unix": self.last_success_unix,
            "objects_archived": self.objects_archived,
            "bytes_archived": self.bytes_archived,
            "consecutive_failures": self.consecutive_failures,
            "failures": dict(self.failures),
            "last_error": self.last_error,
            "last_error_reason": self.last_error_reason,
            "last_error_unix": self.last_error_unix,
            "drops": drops,
            "heartbeat": None if self.heartbeat is None else {
                "last_success_unix": self.heartbeat.last_success_unix,
                "last_error": self.heartbeat.last_error},
        }
        if drops:
            d = drops[-1]
            out["warning"] = (f"WAL LSN {d['parent_end_lsn']}..{d['start_lsn']} was dropped "
                              f"from the archive (timeline {d['parent_timeline']} -> "
                              f"{d['timeline']}): restores cannot cross it until a base "
                              f"backup is taken after LSN {d['start_lsn']}")
        return out


def drop_covered(drop: dict[str, Any], backup: dict[str, Any] | None) -> bool:
    """Whether base backup ``backup`` (a manifest summary: ``timeline``, ``end_lsn``)
    lets a restore reach past dropped WAL ``drop`` (``timeline``, ``start_lsn``): it is
    on the drop's timeline or a later one, consistent at or after where it began."""
    if not backup:
        return False
    try:
        return (int(backup["timeline"]) >= int(drop["timeline"])
                and int(backup["end_lsn"]) >= int(drop["start_lsn"]))
    except (KeyError, TypeError, ValueError):
        return False


__all__ = ["HOLD_NAME", "Archiver", "drop_covered"]
