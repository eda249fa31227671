"""Checkpoints, holds and WAL retention: which segments can go, and when.

A checkpoint makes the state durable in SQLite's own file up to the LSN the applier has
reached (``PRAGMA wal_checkpoint(RESTART)`` on the applier's connection, between two of
its transactions), then removes every whole segment below the lowest LSN anyone still
needs: that checkpoint, and each *hold* (an archiver's verified position, a replica's).
Checkpoints run on the committer's thread, so no segment is added or removed by anyone
else meanwhile; the SQLite part runs on the applier's.

Holds and the measured replay speed are facts of this node, not of the ledger: they are
kept in ``<data-dir>/node.json`` (written whole, synced, renamed), never in the state, so
that the state stays a function of the WAL alone.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import limits
from .. import state as st
from ..errors import Unavailable
from ..metrics import Metrics
from ..storage import FileSystem
from ..wal import SEGMENT_HEADER_SIZE, WalWriter, segment_name
from ._applier import Applier
from ._types import CheckpointReport, EngineConfig

log = logging.getLogger("stemedb.engine")

NODE_FACTS_NAME = "node.json"


@dataclass
class SegMeta:
    seq: int
    base_lsn: int
    capacity_bytes: int


class NodeFacts:
    """``<data-dir>/node.json``: holds and the measured replay speed of this node."""

    def __init__(self, data_dir: str) -> None:
        self.path = os.path.join(data_dir, NODE_FACTS_NAME)
        self.holds: dict[str, dict[str, float]] = {}
        self.replay_bytes_per_second: float | None = None
        # The archiver's own facts: its timeline, where it began, WAL it dropped.
        self.archive: dict[str, Any] = {}
        # The backup thread's facts: its last backup and drill (stemedb.backup).
        self.backup: dict[str, Any] = {}
        # The committer (holds) and the archiver (its timeline) both save the file.
        self.lock = threading.RLock()

    def load(self, conn: sqlite3.Connection) -> None:
        """Read the file; a data directory from before it takes its facts from the
        state's old ``holds`` table and meta, once."""
        try:
            with open(self.path, "rb") as f:
                doc = json.loads(f.read() or b"{}")
        except FileNotFoundError:
            doc = None
        if doc is None:
            self.holds = {str(n): {"lsn": int(lsn), "updated_unix": float(u)}
                          for n, lsn, u in conn.execute(
                              "SELECT name, lsn, updated_unix FROM holds")}
            measured = st.get_meta(conn, "replay_bytes_per_second")
            self.replay_bytes_per_second = float(measured) if measured else None
            if self.holds or self.replay_bytes_per_second:
                self.save()
            return
        self.holds = {str(n): {"lsn": int(h["lsn"]), "updated_unix": float(h["updated_unix"])}
                      for n, h in (doc.get("holds") or {}).items()}
        r = doc.get("replay_bytes_per_second")
        self.replay_bytes_per_second = float(r) if r else None
        a = doc.get("archive")
        self.archive = dict(a) if isinstance(a, dict) else {}
        b = doc.get("backup")
        self.backup = dict(b) if isinstance(b, dict) else {}

    def save_archive(self, doc: dict[str, Any]) -> None:
        """Replace the archiver's facts and save (any thread)."""
        with self.lock:
            self.archive = dict(doc)
            self.save()

    def save_backup(self, doc: dict[str, Any]) -> None:
        """Replace the backup thread's facts and save (any thread)."""
        with self.lock:
            self.backup = dict(doc)
            self.save()

    def save(self) -> None:
        with self.lock:
            self._save()

    def _save(self) -> None:
        doc: dict[str, Any] = {"holds": self.holds,
                               "replay_bytes_per_second": self.replay_bytes_per_second}
        if self.archive:
            doc["archive"] = self.archive
        if self.backup:
            doc["backup"] = self.backup
        data = json.dumps(doc, sort_keys=True, indent=1).encode()
        tmp = self.path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        dfd = os.open(os.path.dirname(self.path) or ".", os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


class Retention:
    """Segments, holds and checkpoints of one engine (the committer thread's)."""

    def __init__(self, config: EngineConfig, fs: FileSystem, wal_dir: str, db_path: str,
                 metrics: Metrics, facts: NodeFacts) -> None:
        self.config = config
        self.fs = fs
        self.wal_dir = wal_dir
        self.db_path = db_path
        self.m = metrics
        self.facts = facts
        self.segments: list[SegMeta] = []
        self.holds: dict[str, int] = {n: int(h["lsn"]) for n, h in facts.holds.items()}
        self.hold_advanced: dict[str, float] = {n: time.time() for n in self.holds}
        self.checkpoint_lsn = 0
        self.last_checkpoint_unix: float | None = None
        self.last_checkpoint_error: str | None = None
        self.last_checkpoint_mono = time.monotonic()
        self.apply_bytes_per_s = (facts.replay_bytes_per_second
                                  or float(limits.replay_throughput_bytes_per_second_initial))
        self.gauges_mono = 0.0
        # Wired by the engine once the parts exist.
        self.writer: WalWriter | None = None
        self.applier: Applier | None = None
        self.sync_wal: Callable[[], None] = lambda: None  # the committer's, may fence
        self.backfill_lock: Any = None
        self.on_checkpoint_durable: Callable[[str], None] | None = None

    # -- positions --------------------------------------------------------------------
    def end_lsn(self) -> int:
        w = self.writer
        return 0 if w is None or w.header is None else w.end_lsn

    def replay_debt_bytes(self) -> int:
        w = self.writer
        return 0 if w is None or w.header is None else max(0, w.end_lsn - self.checkpoint_lsn)

    def replay_debt_seconds(self) -> float:
        return self.replay_debt_bytes() / max(self.apply_bytes_per_s, 1.0)

    def on_rotate(self, name: str) -> None:
        self.m.wal_segment_rotations_total.inc()
        w = self.writer
        if w is not None and w.header is not None:
            self.segments.append(SegMeta(w.header.seq, w.header.base_lsn,
                                         w.header.capacity_bytes))
        log.info("WAL rotated to %s", name)

    def measured_replay(self, bytes_per_second: float) -> None:
        """A replay measured its speed: the estimate of later restarts."""
        self.apply_bytes_per_s = bytes_per_second
        self.facts.replay_bytes_per_second = bytes_per_second
        self.facts.save()

    # -- checkpoints ------------------------------------------------------------------
    def checkpoint_due(self) -> bool:
        cfg = self.config
        debt = self.replay_debt_bytes()
        if debt <= SEGMENT_HEADER_SIZE:
            return False
        return (debt >= cfg.checkpoint_wal_bytes
                or self.replay_debt_seconds() >= cfg.replay_budget_seconds
                or time.monotonic() - self.last_checkpoint_mono
                >= cfg.checkpoint_interval_seconds)

    def checkpoint(self) -> CheckpointReport:
        """On the committer's thread (or with no threads at all)."""
        w, applier = self.writer, self.applier
        assert w is not None and applier is not None
        t0 = time.monotonic()
        try:
            # Every record the state holds must be durable in the WAL before the state
            # itself is made durable (fsync="interval" and "never" acknowledge first).
            self.sync_wal()
            lsn = applier.call(self._sqlite_checkpoint).result()
            self.checkpoint_lsn = lsn
            if self.on_checkpoint_durable is not None:
                self.on_checkpoint_durable(self.db_path)
            lowest = min([lsn, *self.holds.values()])
            removed = []
            assert w.header is not None
            keep: list[SegMeta] = []
            for s in self.segments:
                if s.seq != w.header.seq and s.base_lsn + s.capacity_bytes <= lowest:
                    with contextlib.suppress(FileNotFoundError):
                        self.fs.remove(os.path.join(self.wal_dir, segment_name(s.seq)))
                    removed.append(segment_name(s.seq))
                else:
                    keep.append(s)
            if removed:
                self.segments = keep
                self.fs.sync_dir(self.wal_dir)
        except Exception as exc:
            self.m.checkpoint_failures_total.inc()
            self.last_checkpoint_error = str(exc)
            log.error("checkpoint failed: %s", exc)
            raise
        secs = time.monotonic() - t0
        self.last_checkpoint_unix = time.time()
        self.last_checkpoint_error = None
        self.last_checkpoint_mono = time.monotonic()
        self.m.checkpoint_duration_seconds.observe(secs)
        self.m.checkpoint_last_success_timestamp_seconds.set(self.last_checkpoint_unix)
        self.m.checkpoint_lsn.set(lsn)
        self.update_gauges()
        if removed:
            log.info("checkpoint at LSN %d removed %s", lsn, ", ".join(removed))
        return CheckpointReport(lsn, removed, secs, lowest, dict(self.holds))

    def _sqlite_checkpoint(self) -> int:
        """On the applier's thread, between its transactions: the state durable in its
        own file up to what it has applied.  Returns that LSN."""
        applier = self.applier
        assert applier is not None
        conn = applier.conn
        lsn = st.applied_end_lsn(conn) or 0
        conn.execute("BEGIN IMMEDIATE")
        st.set_meta(conn, "checkpoint_lsn", lsn)
        conn.execute("COMMIT")
        # RESTART, not TRUNCATE: the same guarantee (every frame copied, the database
        # file synced, the next write starts SQLite's WAL over), without freeing and
        # re-growing the file.
        with self.backfill_lock if self.backfill_lock is not None else contextlib.nullcontext():
            busy, frames, done = conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
        if busy or (frames >= 0 and done < frames):
            raise Unavailable(f"SQLite checkpoint incomplete (busy={busy}, "
                              f"{done}/{frames} frames); will retry", code="checkpoint_busy")
        return lsn

    # -- holds ------------------------------------------------------------------------
    def set_hold(self, name: str, lsn: int) -> int:
        if lsn < 0:
            self.hold_advanced.pop(name, None)
            if self.holds.pop(name, None) is not None:
                with self.facts.lock:
                    self.facts.holds.pop(name, None)
                    self.facts.save()
                # A gone hold has no series: a stale lag would page someone forever.
                for series in (self.m.hold_lsn, self.m.hold_lag_bytes,
                               self.m.hold_last_advance_timestamp_seconds):
                    with contextlib.suppress(KeyError):
                        series.remove(name)
            return -1
        old = self.holds.get(name)
        now = time.time()
        self.holds[name] = lsn
        with self.facts.lock:
            self.facts.holds[name] = {"lsn": lsn, "updated_unix": now}
            self.facts.save()
        if old is None or lsn != old:
            self.hold_advanced[name] = now
            self.m.hold_last_advance_timestamp_seconds.labels(hold=name).set(now)
        self.m.hold_lsn.labels(hold=name).set(lsn)
        self.update_gauges()
        return lsn

    def holds_status(self) -> dict[str, dict[str, Any]]:
        end = self.end_lsn()
        return {n: {"lsn": lsn, "lag_bytes": max(0, end - lsn),
                    "last_advance_unix": self.hold_advanced.get(n)}
                for n, lsn in list(self.holds.items())}

    # -- gauges -----------------------------------------------------------------------
    def update_gauges(self) -> None:
        """WAL position gauges: after rotations, checkpoints and hold changes, at most
        every ``wal_gauges_refresh_seconds`` after writes, and at every scrape."""
        w = self.writer
        if w is None or w.header is None:
            return
        self.gauges_mono = time.monotonic()
        end = w.end_lsn
        self.m.wal_end_lsn.set(end)
        self.m.wal_segments.set(len(self.segments))
        self.m.wal_size_bytes.set(sum(s.capacity_bytes for s in self.segments))
        debt = max(0, end - self.checkpoint_lsn)
        self.m.wal_replay_debt_bytes.set(debt)
        self.m.wal_replay_debt_seconds.set(debt / max(self.apply_bytes_per_s, 1.0))
        for name, lsn in list(self.holds.items()):
            self.m.hold_lag_bytes.labels(hold=name).set(max(0, end - lsn))


__all__ = ["NodeFacts", "Retention", "SegMeta"]
