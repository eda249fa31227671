"""The engine: the owner of one data directory's parts and of their lifecycles.

``recover()`` opens the state and replays the WAL (:mod:`._recovery`, through the
:mod:`._applier`); ``start()`` starts the committer's writer loop (:mod:`._committer`),
the applier's thread, the readers and the background copy of SQLite's WAL; ``close()``
stops them in the order that loses nothing.  Everything else is a thin call into the
part that does it: writes to the committer, reads to the read index and the readers,
checkpoints and holds to :mod:`._retention`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from .. import limits
from .. import state as st
from ..archive import HOLD_NAME, Archiver, WalSource, drop_covered, load_key, open_target
from ..backfill import Backfiller
from ..backup import BackupScheduler, DrillReport, Manifest, StateFacts, state_facts
from ..dirlock import DataDirLock
from ..errors import (
    ArchiveNotConfigured,
    Closed,
    CorruptionError,
    InvalidInput,
    StateApplyFailed,
    StemeError,
    Unavailable,
)
from ..layout import RESTORE_MARKER_NAME, place_wal_dir, wal_link_path
from ..metrics import Metrics
from ..read_index import ReadIndex, TooStale
from ..readers import ReaderPool, run_in_snapshot
from ..storage import FileSystem, OsFileSystem
from ..wal import PREALLOC_NAME, RecordType, WalWriter
from ._applier import Applier
from ._committer import Committer, Pending
from ._recovery import Recovery
from ._retention import NodeFacts, Retention
from ._types import (
    CheckpointReport,
    EngineConfig,
    ReadResult,
    RecoveryReport,
    ReplayProgress,
    WriteRequest,
    WriteResult,
    parse_rfc3339,
)
from ._view import AdmissionView

log = logging.getLogger("stemedb.engine")
T = TypeVar("T")


class Engine:
    """An open StemeDB data directory.

    Typical use::

        eng = Engine("/var/lib/stemedb")
        eng.recover()          # replay the WAL since the last checkpoint
        eng.start()            # start the writer and the applier
        res = eng.write(WriteRequest(RecordType.ASSERT, [{"assert": {...}}]))
        eng.close()            # drain, checkpoint, close: the next start replays nothing

    A write is acknowledged once its record is durable; the state follows right behind
    (reads choose how far to wait: :meth:`read_consistent_async`).  docs/embedding.md has
    the whole API, with a program the tests run.
    """

    def __init__(self, data_dir: str | os.PathLike[str], config: EngineConfig | None = None,
                 *, fs: FileSystem | None = None, metrics: Metrics | None = None,
                 clock: Callable[[], float] = time.time, background: bool = True,
                 on_checkpoint_durable: Callable[[str], None] | None = None,
                 writer_host: Callable[[Callable[[], None]], None] | None = None) -> None:
        self.config = config or EngineConfig()
        self.config.validate()
        self.data_dir = os.fspath(data_dir)
        self.wal_dir = wal_link_path(self.data_dir)
        # Where the segments really are: <data-dir>/wal, or wal_dir when that is set.
        self.wal_resolved_dir = os.path.abspath(self.config.wal_dir or self.wal_dir)
        self.db_path = os.path.join(self.data_dir, "state.sqlite3")
        self.fs = fs or OsFileSystem()
        # One engine per data directory (stemedb.dirlock); the simulated file system of
        # the crash tests has no other process to keep out.
        self._dir_lock = DataDirLock(self.data_dir) if isinstance(self.fs, OsFileSystem) \
            else None
        self.m = metrics or Metrics()
        self.clock = clock
        self._background = background
        self._on_checkpoint_durable = on_checkpoint_durable
        # Where the writer loop runs: a thread of its own by default, or a thread the
        # caller hands over (the server gives it the main thread, so that the
        # runbook's `strace -p $(pgrep stemedb-api)` sees every WAL fdatasync).
        self._writer_host = writer_host
        self._writer_started = False
        self._writer_done = threading.Event()
        self._thread: threading.Thread | None = None
        self._release_lock = threading.Lock()
        self._released = False
        self._wal_linked = False
        self.read_index = ReadIndex()
        self.progress = ReplayProgress("opening")
        self.recovered = False
        self._started = False
        self.closed = False
        # The parts, built by recover().
        self.writer: WalWriter | None = None
        self.applier: Applier | None = None
        self.committer: Committer | None = None
        self.retention: Retention | None = None
        self.view: AdmissionView | None = None
        self._readers: ReaderPool | None = None
        self._backfill: Backfiller | None = None
        self.archiver: Archiver | None = None
        self.backups: BackupScheduler | None = None

    # ------------------------------------------------------------------ recovery --
    def recover(self, progress: Callable[[ReplayProgress], None] | None = None
                ) -> RecoveryReport:
        """Open the state and replay the WAL from ``applied_end_lsn``.  Blocking."""
        t0 = time.monotonic()
        self.progress = ReplayProgress("opening", started_monotonic=t0)
        self.m.replay_in_progress.set(1)
        try:
            report = self._recover(progress, t0)
        except Exception as exc:
            self.progress.phase = "failed"
            self.progress.error = str(exc)
            if isinstance(exc, CorruptionError):
                log.error("%s", exc)  # the one log line for it: `grep "WAL.*corrupt"`
            raise
        finally:
            self.m.replay_in_progress.set(0)
        self.progress.phase = "done"
        self.progress.eta_seconds = 0.0
        self.recovered = True
        self.m.replay_last_duration_seconds.set(report.seconds)
        if report.created:
            log.info("created a new database in %s (WAL in %s)", self.data_dir, self.wal_dir)
        elif report.records:
            log.info("replayed %d WAL records (%d bytes, LSN %d..%d) in %.3fs",
                     report.records, report.bytes, report.start_lsn, report.end_lsn,
                     report.seconds)
        return report

    def _recover(self, progress: Callable[[ReplayProgress], None] | None, t0: float
                 ) -> RecoveryReport:
        self.lock_data_dir()
        if os.path.exists(os.path.join(self.data_dir, RESTORE_MARKER_NAME)):
            raise InvalidInput(f"{self.data_dir} holds a restore that did not finish "
                               f"({RESTORE_MARKER_NAME} is there): it is not a database "
                               f"yet", hint="run the same stemedb backup restore again; "
                                            "it empties the directory and starts over")
        self.place_wal_dir()
        self.fs.makedirs(self.wal_dir)
        if isinstance(self.fs, OsFileSystem) and os.path.islink(self.wal_dir):
            # Linked by wal_dir, or by hand: the state is on a filesystem of its own.
            self._wal_linked = True
            self.wal_resolved_dir = os.path.realpath(self.wal_dir)
        self.m.wal_linked.set(int(self._wal_linked))
        tmp = os.path.join(self.wal_dir, PREALLOC_NAME)
        if self.fs.exists(tmp):
            self.fs.remove(tmp)
        os.makedirs(self.data_dir, exist_ok=True)
        cfg = self.config
        conn = st.connect(self.db_path, cache_bytes=cfg.page_cache_bytes)
        facts = NodeFacts(self.data_dir)
        facts.load(conn)
        retention = self.retention = Retention(cfg, self.fs, self.wal_dir, self.db_path,
                                               self.m, facts)
        applier = self.applier = Applier(
            conn, self.m, self.read_index, idempotency_ttl_seconds=cfg.idempotency_ttl_seconds,
            applied_records=int(st.get_meta(conn, "applied_records") or 0))
        applier.delay_seconds = cfg.apply_delay_ms / 1000
        writer = self.writer = WalWriter(
            self.fs, self.wal_dir, segment_size_bytes=cfg.segment_size_bytes,
            background_preallocate=self._background, on_rotate=retention.on_rotate)
        retention.writer = writer
        retention.applier = applier
        retention.on_checkpoint_durable = self._on_checkpoint_durable
        recovery = Recovery(cfg, self.fs, self.wal_dir, self.m, conn, applier, retention,
                            writer, self.progress)
        report = recovery.run(progress, t0)
        self.progress = recovery.progress
        self.archiver = self._open_archiver(retention, writer, facts)
        if self.archiver is not None:
            self.backups = BackupScheduler(
                cfg.backup, archiver=self.archiver, db_path=self.db_path,
                data_dir=self.data_dir, metrics=self.m, facts=facts.backup,
                save=facts.save_backup, wait_applied=self._wait_applied,
                live=self._live_facts, clock=self.clock)
        self.read_index.publish_applied(st.applied_end_lsn(conn) or 0)
        view = self.view = AdmissionView.load(conn)
        applier.view = view
        committer = self.committer = Committer(
            cfg, writer, view, applier, self.read_index, retention, self.m, self.fs,
            wal_dir=self.wal_dir, data_dir=self.data_dir, wal_linked=self._wal_linked,
            clock=self.clock,
            key_reader=lambda: st.connect(self.db_path, readonly=True,
                                          cache_bytes=limits.state_page_cache_bytes_min))
        committer.background = False  # until start()
        if self.archiver is not None:
            committer.archive_refusal = self.archiver.refusal
        retention.sync_wal = committer.sync_for_checkpoint
        applier.on_failure = self._state_failed
        if recovery.needs_genesis:
            # The first record of a new database opens epoch 1 (also when a crash
            # while creating the database left it not durable).
            p = Pending(WriteRequest(RecordType.GENESIS))
            committer.commit([p], sync=True)
            assert p.future is not None
            p.future.result(0)  # raises what the commit raised
            applier.run_pending()
            report.records += 1
        report.end_lsn = writer.end_lsn
        retention.update_gauges()
        return report

    def _open_archiver(self, retention: Retention, writer: WalWriter, facts: NodeFacts
                       ) -> Archiver | None:
        """The archiver of ``[archive] url``, its hold in place before any checkpoint
        can remove WAL it has not shipped.  With archiving off, a hold left by an
        earlier configuration is released (loudly): it would keep WAL forever."""
        settings = self.config.archive
        hold = retention.holds.get(HOLD_NAME)
        if not settings.enabled:
            if hold is not None:
                log.warning("archiving is off ([archive] url is empty): releasing the "
                            "archive's WAL hold at LSN %d; WAL after it will not be "
                            "archived", hold)
                retention.set_hold(HOLD_NAME, -1)
            return None
        key = load_key(settings.encryption_key_file) if settings.encryption_key_file \
            else None
        target = open_target(settings.url)
        source = WalSource(self.fs, self.wal_dir)
        state = dict(facts.archive)
        first = source.first_lsn()
        start = max(first if hold is None else hold, int(state.get("timeline_start_lsn", 0)))
        if not state.get("timeline"):
            state = {"timeline": 1, "timeline_start_lsn": start}
            facts.save_archive(state)
            log.info("archiving to %s begins at LSN %d (timeline 1)", settings.url, start)
        if hold != start:
            retention.set_hold(HOLD_NAME, start)

        def move_hold(lsn: int) -> None:
            self.set_hold(HOLD_NAME, lsn).result(limits.archive_hold_wait_seconds)

        return Archiver(settings, target=target, source=source, metrics=self.m, key=key,
                        durable_lsn=lambda: writer.synced_end_lsn,
                        written_lsn=lambda: writer.end_lsn if writer.header else 0,
                        move_hold=move_hold, save_state=facts.save_archive, state=state,
                        start_lsn=start, clock=self.clock)

    def archive_now(self) -> int:
        """One archiver pass on the calling thread (never the event loop): ship what is
        durable now, verified, and move the hold.  Returns the objects shipped; raises
        the archive's error.  The archiver's thread does the same every
        ``[archive] interval_seconds``."""
        if self.archiver is None:
            raise InvalidInput("archiving is off: [archive] url is not set")
        return self.archiver.run_pass()

    def backup_now(self) -> cf.Future[Manifest]:
        """A base backup now, on the engine's backup thread: a future of its manifest
        (id, timeline, LSN).  Raises InvalidInput when archiving is off."""
        if self.backups is None:
            raise ArchiveNotConfigured("base backups need an archive: [archive] url is not set",
                                       hint="set [archive] url (file:///path or "
                                            "s3://bucket/prefix) and restart")
        fut: cf.Future[Manifest] = self.backups.request("backup")
        return fut

    def drill_now(self) -> cf.Future[DrillReport]:
        """A restore drill now, on the engine's backup thread."""
        if self.backups is None:
            raise ArchiveNotConfigured("restore drills need an archive: [archive] url is not "
                                       "set")
        fut: cf.Future[DrillReport] = self.backups.request("drill")
        return fut

    def _wait_applied(self, lsn: int) -> None:
        self.read_index.wait(lsn, limits.backup_wait_applied_seconds)

    def _live_facts(self, lsn: int) -> StateFacts:
        """The live state below ``lsn`` (a drill compares its restore with it)."""
        self._wait_applied(lsn)
        conn = st.connect(self.db_path, readonly=True,
                          cache_bytes=limits.state_page_cache_bytes_min)
        try:
            return run_in_snapshot(conn, lambda c: state_facts(c, below_lsn=lsn))
        finally:
            conn.close()

    def lock_data_dir(self) -> None:
        """Take the data directory's lock (:mod:`stemedb.dirlock`), held until
        :meth:`close`; :class:`DataDirInUse` when another engine has it.  Idempotent;
        :meth:`recover` calls it first, and the server before it listens."""
        if self._dir_lock is not None:
            self._dir_lock.acquire()

    def place_wal_dir(self) -> None:
        """Link ``<data-dir>/wal`` to ``wal_dir`` when it is set, or check the link.

        Idempotent; :meth:`recover` calls it first, and the server before it listens,
        so that a data directory paired with another WAL directory is refused at start.
        """
        if not self.config.wal_dir:
            return
        if not isinstance(self.fs, OsFileSystem):
            raise InvalidInput("wal_dir places the WAL on the real file system only")
        if place_wal_dir(self.data_dir, self.config.wal_dir):
            log.info("the WAL is in %s: %s links there", os.path.abspath(self.config.wal_dir),
                     self.wal_dir)

    def _state_failed(self, exc: BaseException) -> None:
        """The applier could not apply durable records: no more writes until a restart
        (the state is behind the WAL and would fall further behind)."""
        if self.committer is not None and isinstance(exc, StateApplyFailed):
            self.committer.set_fenced(exc)

    # ------------------------------------------------------------------ lifecycle --
    def start(self) -> None:
        if not self.recovered:
            raise RuntimeError("Engine.start() before recover()")
        committer, applier = self._parts()
        self._started = True
        st.tune_for_writes(applier.conn)
        committer.accepting = True
        committer.background = self._background
        if self._background:
            applier.start()
            self._writer_started = True
            if self._writer_host is not None:
                self._writer_host(self._run_writer)
            else:
                self._thread = threading.Thread(target=self._run_writer,
                                                name="stemedb-writer", daemon=True)
                self._thread.start()
        cache_bytes = self.config.page_cache_bytes
        self._readers = ReaderPool(lambda: st.connect(self.db_path, readonly=True,
                                                      cache_bytes=cache_bytes),
                                   self.config.reader_threads, limits.read_batch_max)
        if self._background and self.archiver is not None:
            self.archiver.start()
        if self._background and self.backups is not None:
            self.backups.start()
        if self._background and self.config.sqlite_backfill:
            w = self.writer
            self._backfill = Backfiller(
                self.db_path, limits.sqlite_backfill_interval_seconds,
                limits.sqlite_backfill_wal_bytes,
                lambda: w.end_lsn if w is not None and w.header else 0, self.m)
            assert self.retention is not None
            self.retention.backfill_lock = self._backfill.lock
            self._backfill.start()

    def _parts(self) -> tuple[Committer, Applier]:
        if self.committer is None or self.applier is None:
            raise Closed("the engine is not recovered")
        return self.committer, self.applier

    def drain(self, timeout_seconds: float = limits.http_drain_grace_seconds) -> None:
        """Stop taking writes, finish those queued, checkpoint."""
        if self.committer is None:
            return
        self.committer.accepting = False
        if self._writer_alive():
            fut: cf.Future[Any] = cf.Future()
            self.committer.queue.put(("checkpoint", fut))
            with contextlib.suppress(Exception):
                fut.result(timeout=timeout_seconds)

    def close(self, timeout_seconds: float = limits.http_drain_grace_seconds) -> None:
        if self.closed:
            return
        committer, applier = self.committer, self.applier
        if committer is not None:
            committer.accepting = False
        if self._backfill is not None:
            self._backfill.stop(timeout_seconds)  # the final checkpoint copies the rest
        # The archiver's thread stops while the writer can still move its hold; its
        # last pass comes after the writer's last records.
        if self.backups is not None:
            self.backups.stop(min(timeout_seconds, limits.backup_stop_seconds))
        archiver_stopped = self.archiver is None or self.archiver.stop(
            min(timeout_seconds, limits.archive_stop_seconds))
        stuck = False
        if self._writer_alive():
            assert committer is not None
            fut: cf.Future[Any] = cf.Future()
            committer.queue.put(("stop", fut))
            stuck = not self._writer_done.wait(timeout=timeout_seconds)
        elif self.recovered and committer is not None and applier is not None:
            applier.run_pending()
            if committer.fenced is None:
                with contextlib.suppress(Exception):
                    committer.retention.checkpoint()
        if applier is not None and not stuck and not applier.stop(timeout_seconds):
            stuck = True
            log.error("the applier did not stop within %.1fs", timeout_seconds)
        if self.archiver is not None and archiver_stopped and not stuck and self.recovered:
            # The writer's last records are durable, and the hold moves on this thread
            # now: one more pass ships them when the target answers.
            self.archiver.final_pass()
        self.closed = True
        if self._readers is not None:
            self._readers.shutdown(timeout_seconds)
        if stuck:
            # A write or fsync that has not returned: the writer still uses the WAL file
            # and the state's connection, and the directory must stay locked while it
            # might write.  The writer releases them itself when it ends.
            log.error("the writer did not stop within %.1fs (a WAL write or fsync that has "
                      "not returned); it releases the WAL, the state and the data "
                      "directory's lock when it ends", timeout_seconds)
        if not stuck or self._writer_done.is_set():
            self._release()

    def _release(self, *, crashed: bool = False) -> None:
        """Close the WAL file and the state's connections and unlock the directory,
        once: by :meth:`close`, by the writer thread ending after close gave up, or
        (``crashed``: nothing more applied or written) by :meth:`abandon`."""
        with self._release_lock:
            if self._released:
                return
            self._released = True
            if self.applier is not None and not crashed:
                self.applier.stop(limits.http_drain_grace_seconds)
            if self.writer is not None and not crashed:
                self.writer.close()
            if self.committer is not None:
                self.committer.close()
            if self.applier is not None:
                self.applier.conn.close()
            if self._dir_lock is not None:
                self._dir_lock.release()

    def abandon(self) -> None:
        """Drop the engine as a crash would (the crash simulation): connections
        closed, nothing applied, synced or checkpointed, the lock released."""
        self.closed = True
        if self.backups is not None:
            self.backups.stop(limits.backup_stop_seconds)
        if self.archiver is not None:
            self.archiver.stop(limits.archive_stop_seconds)
        if self._readers is not None:
            self._readers.shutdown(limits.http_drain_grace_seconds)
        self._release(crashed=True)

    def _writer_alive(self) -> bool:
        return self._writer_started and not self._writer_done.is_set()

    def _run_writer(self) -> None:
        assert self.committer is not None
        try:
            self.committer.run()
        finally:
            self._writer_done.set()
            if self.closed:  # close() gave up waiting for this thread
                self._release()

    # ------------------------------------------------------------------ writes ----
    def submit(self, request: WriteRequest) -> cf.Future[WriteResult]:
        """Queue a write; the future resolves once it is durable (for a vote or a seal,
        once it is applied too: their responses come from the state).

        Raises :class:`InvalidInput` for a malformed request (embedded callers get the
        same checks as the HTTP API: nothing invalid reaches the writer thread).
        """
        p = self._enqueue(request, None)
        assert p.future is not None
        return p.future

    def write(self, request: WriteRequest, timeout_seconds: float | None = None
              ) -> WriteResult:
        """Write and wait: :meth:`submit` then ``result()``, for a thread that has
        nothing else to do until the write is durable.

        When the writer is idle (nothing queued, nobody committing), the write is
        committed on the calling thread: WAL append and fdatasync exactly as the writer
        would, without the two thread hand-offs (to the writer and back).  Otherwise it
        joins the writer's next group commit like any other.  Raises what the future
        would: a :class:`StemeError`, or ``TimeoutError`` after ``timeout_seconds``
        (the write going on).  With a timeout the write always goes to the writer, so
        that the wait can end even if the disk never answers.  Never from a coroutine:
        it waits on the disk; use :meth:`submit_async` there.
        """
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass  # no loop on this thread: waiting here is fine
        else:
            raise RuntimeError("Engine.write() waits on the disk; in a coroutine, "
                               "await Engine.submit_async() instead")
        p = self._enqueue(request, None, commit_here=timeout_seconds is None)
        assert p.future is not None
        return p.future.result(timeout_seconds)

    def submit_async(self, request: WriteRequest) -> asyncio.Future[WriteResult]:
        """:meth:`submit` for a coroutine: an ``asyncio.Future`` of the running loop.

        The writer settles every such future of one group commit with a single
        ``call_soon_threadsafe``, so a loop with many writers in flight is woken once
        per fdatasync rather than once per request.  Cancelling the future does not
        withdraw the write (it may already be durable).
        """
        p = self._enqueue(request, asyncio.get_running_loop())
        assert p.afuture is not None
        return p.afuture

    def _enqueue(self, request: WriteRequest, loop: asyncio.AbstractEventLoop | None,
                 *, commit_here: bool = False) -> Pending:
        if self.committer is None or self.closed:
            raise Unavailable("not accepting writes (starting, draining or stopped)",
                              code="not_accepting")
        p = self.committer.enqueue(request, loop, commit_here=commit_here)
        if not self._background:
            assert self.applier is not None
            self.applier.run_pending()
        return p

    # -- deterministic steps (an engine without threads: the crash simulation) ---------
    def step_commit(self, requests: list[WriteRequest]) -> list[cf.Future[WriteResult]]:
        """One group commit of ``requests`` on the calling thread, nothing applied: the
        futures of writes that need the state stay pending until :meth:`step_apply`."""
        committer, _ = self._parts()
        pendings = [Pending(r) for r in requests]
        committer.commit(pendings)
        committer.periodic()
        return [p.future for p in pendings if p.future is not None]

    def step_apply(self) -> int:
        """Apply every durable group not applied yet, on the calling thread."""
        _, applier = self._parts()
        return applier.run_pending()

    # ------------------------------------------------------------------ replication
    def on_writer(self, fn: Callable[[], T]) -> cf.Future[T]:
        """Run ``fn`` on the writer thread between two group commits (at once when the
        writer has no thread)."""
        fut: cf.Future[T] = cf.Future()
        committer, _ = self._parts()
        if self._writer_alive():
            committer.queue.put(("call", (fn, fut)))
        else:
            with committer.commit_lock:
                try:
                    fut.set_result(fn())
                except BaseException as exc:
                    fut.set_exception(exc)
        return fut

    def replicate(self, frames: list[tuple[int, int, bytes]]) -> cf.Future[int]:
        """Append the leader's records (type, lsn, payload) at their LSNs, durably, on
        the writer thread; the future holds the new durable LSN.  The applier applies
        them behind, as it does the node's own."""
        committer, _ = self._parts()
        return self.on_writer(lambda: committer.replicate(frames))

    def set_follower(self, follower: bool) -> None:
        """A replica's engine refuses writes of its own (503 not_leader)."""
        committer, _ = self._parts()
        committer.follower = follower

    @property
    def follower(self) -> bool:
        return self.committer is not None and self.committer.follower

    def promote(self, timeout_seconds: float) -> None:
        """A replica becomes the writer of its log: wait until the state has applied
        every durable record, then load the admission view from it, so that the next
        write is checked against everything the leader wrote.  Blocking; call after the
        replication stream has stopped."""
        committer, applier = self._parts()
        self.read_index.wait(self.read_index.durable_lsn, timeout_seconds)

        def load() -> AdmissionView:
            return AdmissionView.load(applier.conn)

        view = applier.call(load).result(timeout_seconds)

        def install() -> None:
            committer.view = view
            applier.view = view
            if applier.last_record_t:
                committer._last_unix = max(committer._last_unix,
                                           parse_rfc3339(applier.last_record_t))
            committer.follower = False

        self.on_writer(install).result(timeout_seconds)
        self.view = view

    def write_term(self, term: int, node: str, timeout_seconds: float) -> int:
        """A new leader's first record: TERM ``term`` by ``node``, durable and applied
        before this returns its LSN.  Every record after it up to the next TERM was
        written in that term; replicas check their logs against these records."""
        committer, _ = self._parts()
        p = Pending(WriteRequest(RecordType.TERM, [{"term": term, "node": node}]))

        def commit() -> None:
            committer.commit([p])

        self.on_writer(commit).result(timeout_seconds)
        assert p.future is not None
        result = p.future.result(timeout_seconds)
        if not self._background:
            self.step_apply()  # an engine without threads applies on the caller's
        self.read_index.wait(result.lsn + 1, timeout_seconds)
        return result.lsn

    def database_id(self) -> str | None:
        """The identity of the database (None for one created before identities)."""
        value = self.read_now(lambda conn: st.get_meta(conn, "database_id"))
        return None if value is None else str(value)

    def terms(self) -> list[tuple[int, int, str]]:
        """The leaderships the state has applied: (term, start_lsn, node), oldest
        first."""
        return self.read_now(st.list_terms)

    # ------------------------------------------------------------------ checkpoints
    def checkpoint(self) -> cf.Future[CheckpointReport]:
        """Checkpoint now (on the writer thread)."""
        fut: cf.Future[CheckpointReport] = cf.Future()
        committer, applier = self._parts()
        if self._writer_alive():
            committer.queue.put(("checkpoint", fut))
        else:
            try:
                applier.run_pending()
                fut.set_result(committer.retention.checkpoint())
            except Exception as exc:
                fut.set_exception(exc)
        return fut

    def set_hold(self, name: str, lsn: int) -> cf.Future[int]:
        """Keep WAL from ``lsn`` on (an archiver's or replica's position); a negative
        ``lsn`` removes the hold."""
        fut: cf.Future[int] = cf.Future()
        committer, _ = self._parts()
        if self._writer_alive():
            committer.queue.put(("hold", (name, lsn, fut)))
        else:
            fut.set_result(committer.retention.set_hold(name, lsn))
        return fut

    def holds(self) -> dict[str, dict[str, Any]]:
        return {} if self.retention is None else self.retention.holds_status()

    @property
    def started(self) -> bool:
        """start() ran (its threads may be running)."""
        return self._started

    @property
    def checkpoint_lsn(self) -> int:
        return 0 if self.retention is None else self.retention.checkpoint_lsn

    @property
    def fenced(self) -> StemeError | None:
        return None if self.committer is None else self.committer.fenced

    @property
    def accepting(self) -> bool:
        return self.committer is not None and self.committer.accepting

    @property
    def applied_records(self) -> int:
        return 0 if self.applier is None else self.applier.applied_records

    def replay_debt_bytes(self) -> int:
        return 0 if self.retention is None else self.retention.replay_debt_bytes()

    def replay_debt_seconds(self) -> float:
        return 0.0 if self.retention is None else self.retention.replay_debt_seconds()

    def refresh_gauges(self) -> None:
        """Bring the position gauges up to date (the server calls it per scrape)."""
        if self.retention is not None:
            self.retention.update_gauges()
        ri = self.read_index
        self.m.state_apply_lag_bytes.set(ri.lag_bytes())
        self.m.state_applied_lsn.set(ri.applied_lsn)

    def disk_guard_refusal(self) -> str | None:
        """Why the disk guard refuses writes now, or None when it does not."""
        return None if self.committer is None else self.committer.disk_guard_refusal()

    # ------------------------------------------------------------------ reads -----
    def read(self, fn: Callable[[sqlite3.Connection], T], *, stale: bool = False,
             wait_timeout_seconds: float = limits.read_wait_timeout_seconds_default
             ) -> cf.Future[T]:
        """Run ``fn(conn)`` on one of the engine's reader threads, in one snapshot.

        Linearizable by default: the snapshot holds every write acknowledged before this
        call (the reader waits for the applier first, at most ``wait_timeout_seconds``,
        then the future raises :class:`LsnNotReached`); ``stale=True`` reads what is
        applied now.
        """
        if self._readers is None:
            raise Closed("the engine is not started")
        ri = self.read_index
        target = ri.target_for(None)
        if stale or ri.applied_lsn >= target:
            return self._readers.submit(fn)

        def after_apply(conn: sqlite3.Connection) -> T:
            ri.wait(target, wait_timeout_seconds)
            return fn(conn)

        return self._readers.submit(after_apply)

    def read_async(self, fn: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        """Run ``fn(conn)`` on a reader thread from a coroutine, on what is applied now
        (:meth:`read_consistent_async` waits first): a future of the running loop,
        settled together with the other reads a reader thread took in the same
        wake-up."""
        if self._readers is None:
            raise Closed("the engine is not started")
        return self._readers.submit_async(fn)

    async def read_consistent_async(
            self, fn: Callable[[sqlite3.Connection], T], *, min_lsn: int | None = None,
            stale: bool = False, max_staleness_seconds: float | None = None,
            wait_timeout_seconds: float = limits.read_wait_timeout_seconds_default
    ) -> ReadResult[T]:
        """Read as SPEC "Reads and consistency" says, from a coroutine.

        Default (linearizable): wait until the state has applied every write
        acknowledged before this call; ``min_lsn``: wait until the record at that LSN is
        applied (read-your-writes); ``stale``: do not wait, but raise
        :class:`TooStale` when the state has been behind for longer than
        ``max_staleness_seconds``.  A wait that outlasts ``wait_timeout_seconds`` raises
        :class:`LsnNotReached`.  The result carries the applied LSN of the snapshot the
        read saw; a :class:`StemeError` raised by ``fn`` carries it as ``applied_lsn``.
        """
        ri = self.read_index
        if stale:
            if max_staleness_seconds is not None:
                behind = ri.staleness_seconds()
                if behind > max_staleness_seconds:
                    raise TooStale(f"the state is {behind * 1000:.0f} ms behind the WAL, "
                                   f"more than max_staleness_ms="
                                   f"{max_staleness_seconds * 1000:.0f}")
        else:
            await ri.wait_async(ri.target_for(min_lsn), wait_timeout_seconds)

        def in_snapshot(conn: sqlite3.Connection) -> tuple[T, int]:
            applied = st.applied_end_lsn(conn) or 0
            try:
                return fn(conn), applied
            except StemeError as exc:
                exc.applied_lsn = applied
                raise

        value, applied = await self.read_async(in_snapshot)
        return ReadResult(value, applied)

    def read_now(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` on the calling thread, linearizable as :meth:`read` (for tools
        and tests; not the event loop)."""
        self.read_index.wait(self.read_index.target_for(None),
                             limits.read_wait_timeout_seconds_default)
        conn = st.connect(self.db_path, readonly=True)
        try:
            return run_in_snapshot(conn, fn)
        finally:
            conn.close()

    # ------------------------------------------------------------------ status ----
    def status(self) -> dict[str, Any]:
        """A cheap snapshot of the engine (no I/O but a cached statvfs)."""
        w, c, r, a = self.writer, self.committer, self.retention, self.applier
        d, sd = c.disk_usage() if c is not None else (None, None)
        ri = self.read_index
        fenced = self.fenced
        has = w is not None and w.header is not None
        out: dict[str, Any] = {
            "wal": {
                "dir": self.wal_dir,
                "resolved_dir": self.wal_resolved_dir,
                "segment": w.segment if w is not None and has else None,
                "segments": len(r.segments) if r else 0,
                "size_bytes": sum(s.capacity_bytes for s in r.segments) if r else 0,
                "end_lsn": w.end_lsn if w is not None and has else None,
                "synced_lsn": w.synced_lsn if w is not None and has else None,
                "fsync_policy": self.config.fsync,
                "segment_size_bytes": self.config.segment_size_bytes,
            },
            "fsync": {
                "fenced": fenced is not None,
                "error": fenced.message if fenced else None,
                "last_seconds": c.last_fsync_seconds if c else None,
                "p99_seconds": _nan_to_none(self.m.wal_fsync_duration.quantile(0.99)),
            },
            "state": {
                "durable_lsn": ri.durable_lsn,
                "applied_lsn": ri.applied_lsn,
                "apply_lag_bytes": ri.lag_bytes(),
                "apply_lag_seconds": round(ri.staleness_seconds(), 4),
                "max_apply_lag_bytes": self.config.max_apply_lag_bytes,
                "applier_error": str(a.failed) if a is not None and a.failed else None,
            },
            "checkpoint": {
                "lsn": self.checkpoint_lsn,
                "last_unix": r.last_checkpoint_unix if r else None,
                "last_error": r.last_checkpoint_error if r else None,
                "replay_debt_bytes": self.replay_debt_bytes(),
                "replay_debt_seconds": round(self.replay_debt_seconds(), 4),
                "replay_budget_seconds": self.config.replay_budget_seconds,
            },
            "replay": self.progress.as_dict(),
            "disk": None if d is None or sd is None else {
                "free_bytes": d.free_bytes, "size_bytes": d.size_bytes,
                "free_inodes": d.free_inodes, "reserve_bytes": self.config.disk_reserve_bytes,
                "state_free_bytes": sd.free_bytes, "state_size_bytes": sd.size_bytes,
                "refusing_writes": c is not None and c.refusal() is not None},
            "holds": self.holds(),
            "archive": self.archiver.status() if self.archiver is not None else {
                "configured": False, "note": "archiving is off: [archive] url is not set"},
            "backup": self.backups.status() if self.backups is not None else {
                "configured": False, "note": "base backups need [archive] url"},
            "applied_records": self.applied_records,
            "accepting_writes": self.accepting and fenced is None,
        }
        _note_covered_drop(out)
        return out


def _note_covered_drop(status: dict[str, Any]) -> None:
    """The archive's warning about dropped WAL stands until a base backup lets restores
    reach past the drop; then it becomes a note."""
    archive, backup = status.get("archive") or {}, status.get("backup") or {}
    drops = archive.get("drops") or []
    if drops and "warning" in archive and drop_covered(drops[-1], backup.get("last_backup")):
        last = backup["last_backup"]
        archive["note"] = (f"{archive.pop('warning')}; covered since base backup "
                           f"{last.get('id')} at LSN {last.get('end_lsn')}")


def _nan_to_none(v: float) -> float | None:
    return None if v != v else v


__all__ = ["Engine"]
