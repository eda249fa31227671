"""The committer: the write path from a queued request to its acknowledgement.

One walk, from the route to the ack::

    Engine.submit_async / submit / write  ->  Committer.enqueue      (checks, queue)
    Committer.run (the writer thread)     ->  Committer.commit       (one group)
        for each request: idempotency key, admission view, encode, plan its LSN
        WalWriter.write (one write(2)) -> fdatasync -> ReadIndex.publish_durable
        -> acknowledge (one loop callback per event loop)
        -> Applier.enqueue (the state follows; votes and seals answered from there)

A write is acknowledged when its record is durable under the fsync policy, never
later: the committer validates against its :class:`AdmissionView`, not the state, and
hands the durable group to the applier.  A group never spans two segments, so a
failed fdatasync leaves nothing of it synced in an older segment: what its callers are
told (500 ``wal_fsync_failed``) is what replays.  A failed write or fsync *fences* the
committer: the group and every later write fail, the ``stemedb_wal_writes_fenced``
gauge turns 1, nothing is retried; a restart recovers from what is on disk.

Past ``[state] max_apply_lag_bytes`` of durable records not yet applied the committer
waits for the applier before it takes the next group (backpressure), at most
``apply_backpressure_wait_seconds_max``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any

from .. import limits
from .. import state as st
from .._loops import Outcome, settle_by_loop
from ..errors import (
    ArchiveBacklogFull,
    IdempotencyConflict,
    InsufficientStorage,
    InvalidInput,
    StateApplyFailed,
    StemeError,
    TooLarge,
    Unavailable,
    WalFsyncFailed,
)
from ..metrics import Metrics
from ..model import encode_json
from ..read_index import ReadIndex
from ..storage import DiskUsage, FileSystem
from ..wal import RecordType, WalOpError, WalWriter, frame_size
from ._applier import Applier, DurableGroup, Frame
from ._retention import Retention
from ._types import (
    EngineConfig,
    WriteRequest,
    WriteResult,
    check_idempotency_key,
    parse_rfc3339,
    rfc3339,
    validate_request,
)
from ._view import AdmissionView, PendingKey

log = logging.getLogger("stemedb.engine")


class Pending:
    """A queued write and whom to tell.

    Without a loop the outcome goes to a ``concurrent.futures.Future`` (any thread may
    wait on it).  With a loop it goes to an ``asyncio.Future`` of that loop, and a whole
    group's futures are settled with ONE ``call_soon_threadsafe`` per loop (see
    :func:`settle`) instead of one wake-up per request.
    """

    __slots__ = ("afuture", "future", "loop", "request", "settled")

    def __init__(self, request: WriteRequest,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.request = request
        self.loop = loop
        self.settled = False
        self.future: cf.Future[WriteResult] | None = None
        self.afuture: asyncio.Future[WriteResult] | None = None
        if loop is None:
            self.future = cf.Future()
        else:
            self.afuture = loop.create_future()


Outcome_ = tuple[Pending, "WriteResult | None", "BaseException | None"]


def settle(outcomes: list[Outcome_]) -> None:
    """Hand each pending write its outcome; one loop callback per event loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[Outcome]] = {}
    for p, result, exc in outcomes:
        if p.settled:
            continue
        p.settled = True
        if p.loop is not None:
            assert p.afuture is not None
            by_loop.setdefault(p.loop, []).append((p.afuture, result, exc))
            continue
        fut = p.future
        assert fut is not None
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)  # type: ignore[arg-type]
    settle_by_loop(by_loop)


def key_reused() -> IdempotencyConflict:
    return IdempotencyConflict("this Idempotency-Key was used with a different request body",
                               hint="use a new key for a new request")


def stopping() -> Unavailable:
    """What a write gets that no one will commit any more: the engine is closing."""
    return Unavailable("the server is stopping", code="not_accepting")


class _Deferred:
    """A write of this group whose response the applier gives (a vote, a seal), and
    the retries of it that share that response."""

    __slots__ = ("key", "pendings")

    def __init__(self, p: Pending) -> None:
        self.pendings: list[tuple[Pending, bool]] = [(p, False)]  # (pending, is a retry)
        self.key: PendingKey | None = None  # its key, once durable


class Committer:
    """The queue, the group commit, the fence and the disk guard of one engine."""

    def __init__(self, config: EngineConfig, writer: WalWriter, view: AdmissionView,
                 applier: Applier, read_index: ReadIndex, retention: Retention,
                 metrics: Metrics, fs: FileSystem, *, wal_dir: str, data_dir: str,
                 wal_linked: bool, clock: Callable[[], float],
                 key_reader: Callable[[], sqlite3.Connection]) -> None:
        self.config = config
        self.writer = writer
        self.view = view
        self.applier = applier
        self.read_index = read_index
        self.retention = retention
        self.m = metrics
        self.fs = fs
        self.wal_dir = wal_dir
        self.data_dir = data_dir
        self.wal_linked = wal_linked
        self.clock = clock
        self._key_reader = key_reader
        self._kconn: sqlite3.Connection | None = None
        # SimpleQueue: put and get are C calls, no Python-level Condition per request.
        self.queue: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._queued = 0
        self._queued_lock = threading.Lock()
        # Held by whoever commits: the writer loop for its groups, checkpoints and other
        # work, or a thread in Engine.write() that finds the writer idle (commit_now).
        self.commit_lock = threading.Lock()
        self.stopped = False  # set under commit_lock by the writer's stop
        # Requests a group left for the next (they would have spanned two segments).
        self._carry: list[Pending] = []
        self.fenced: WalFsyncFailed | StateApplyFailed | None = None
        self.accepting = False
        self.background = True
        self.last_fsync_seconds: float | None = None
        self._last_fsync_mono = time.monotonic()
        self._last_unix = 0.0
        self._disk: DiskUsage | None = None
        self._state_disk: DiskUsage | None = None
        self._disk_checked_mono = 0.0
        # The archiver's cap (on_backlog_full="refuse_writes"): why writes are refused
        # now, or None.  Asked before each group, like the disk guard; no I/O.
        self.archive_refusal: Callable[[], str | None] | None = None
        # A replica's engine: its log is the leader's, written by replicate(); its own
        # writes are refused (the HTTP layer redirects them to the leader first).
        self.follower = False

    # -- taking requests ----------------------------------------------------------------
    def enqueue(self, request: WriteRequest, loop: asyncio.AbstractEventLoop | None,
                *, commit_here: bool = False) -> Pending:
        if not request.prevalidated:
            validate_request(request)
        elif request.idempotency_key is not None:
            check_idempotency_key(request)
        if self.fenced is not None:
            raise self.fence_error()
        if not self.accepting:
            raise Unavailable("not accepting writes (starting, draining or stopped)",
                              code="not_accepting")
        if self.follower:
            raise Unavailable("this node is a replica: writes go to the leader",
                              code="not_leader")
        with self._queued_lock:
            if self._queued >= self.config.submit_queue_requests_max:
                raise Unavailable(f"write queue full ({self.config.submit_queue_requests_max}"
                                  " requests)", code="queue_full")
            self._queued += 1
        p = Pending(request, loop)
        if self.background:
            if commit_here and self._commit_now(p):
                return p
            self.queue.put(("write", p))
        else:
            with self._queued_lock:
                self._queued -= 1
            self.commit([p])
            self.periodic()
        return p

    def _commit_now(self, p: Pending) -> bool:
        """For Engine.write: commit ``p`` on the calling thread when the writer is idle
        (nothing queued, nobody committing).  Only with ``fsync="always"``: the other
        policies leave the sync to the writer's timer.  False: queue it."""
        if self.config.fsync != "always" or not self.queue.empty():
            return False
        if not self.commit_lock.acquire(blocking=False):
            return False
        try:
            with self._queued_lock:
                self._queued -= 1
            if self.stopped:  # closed after enqueue looked: nobody would commit it
                settle([(p, None, stopping())])
                return True
            self.m.caller_commits_total.inc()
            self.commit([p])
            if self.retention.checkpoint_due():
                # The checkpoint is the writer's work, not this caller's: wake it.
                self.queue.put(("tick", None))
            return True
        finally:
            self.commit_lock.release()

    # -- the writer loop --------------------------------------------------------------
    def run(self) -> None:
        """The writer loop: one group commit per turn, until a stop control."""
        cfg = self.config
        stop: cf.Future[Any] | None = None
        while stop is None:
            timeout = 0.25
            if cfg.fsync == "interval":
                due = self._last_fsync_mono + cfg.fsync_interval_ms / 1000 - time.monotonic()
                timeout = max(0.0, min(timeout, due))
            batch: list[Pending] = []
            controls: list[tuple[str, Any]] = []
            item: tuple[str, Any] | None
            try:
                item = self.queue.get(timeout=timeout)
            except queue.Empty:
                item = None
            nbytes = 0
            # Bounded: at most batch_records_max requests are taken per group commit.
            while item is not None:
                kind, obj = item
                if kind == "write":
                    batch.append(obj)
                    nbytes += obj.request.size_hint()
                else:
                    controls.append(item)
                    if kind == "stop":
                        break
                if len(batch) >= cfg.batch_records_max or nbytes >= cfg.batch_bytes_max:
                    break
                try:
                    item = self.queue.get_nowait()
                except queue.Empty:
                    item = None
            with self.commit_lock:
                stop = self._work(batch, controls)
        # Stop: fail whatever is still queued, then a final checkpoint.
        with self.commit_lock:
            self.stopped = True
            while True:
                try:
                    kind, obj = self.queue.get_nowait()
                except queue.Empty:
                    break
                if kind == "write":
                    settle([(obj, None, stopping())])
            try:
                if self.fenced is None:
                    self.retention.checkpoint()
                stop.set_result(None)
            except Exception as exc:
                log.error("final checkpoint failed: %s", exc)
                stop.set_exception(exc)

    def _work(self, batch: list[Pending], controls: list[tuple[str, Any]]
              ) -> cf.Future[Any] | None:
        """One turn of the writer loop, under the commit lock: the group commit, then
        the controls taken with it, then periodic work.  Returns the stop control's
        future when one was taken."""
        stop: cf.Future[Any] | None = None
        with self._queued_lock:
            self._queued -= len(batch)
        if batch:
            self.commit(batch)
        for kind, obj in controls:
            fut: cf.Future[Any] | None = None
            try:
                if kind == "checkpoint":
                    fut = obj
                    obj.set_result(self.retention.checkpoint())
                elif kind == "hold":
                    name, lsn, fut = obj
                    fut.set_result(self.retention.set_hold(name, lsn))
                elif kind == "replicate":
                    frames, fut = obj
                    fut.set_result(self.replicate(frames))
                elif kind == "call":
                    fn, fut = obj
                    fut.set_result(fn())
                elif kind == "stop":
                    stop = obj
                # "tick": nothing of its own; the periodic work below is the point.
            except Exception as exc:
                if fut is not None and not fut.done():
                    fut.set_exception(exc)
        self.periodic()
        return stop

    def periodic(self) -> None:
        cfg = self.config
        w = self.writer
        if self.fenced is not None:
            return
        if cfg.fsync == "interval" and w.needs_sync() and (
                time.monotonic() - self._last_fsync_mono >= cfg.fsync_interval_ms / 1000):
            try:
                self.timed_sync()
            except WalOpError as exc:
                self.fence(exc)
        if self.retention.checkpoint_due():
            with contextlib.suppress(StemeError, sqlite3.Error, OSError):
                self.retention.checkpoint()
        self.probe_disk()

    # -- one group commit -------------------------------------------------------------
    def commit(self, batch: list[Pending], *, sync: bool | None = None) -> None:
        """Commit ``batch``, by one thread at a time: the writer thread, or a caller of
        Engine.write holding the commit lock; before start (genesis), and in an engine
        without threads, the caller's.  Usually one group commit; when the batch would
        span two segments, one group per segment, one after the other (each group takes
        at least one request, so this ends)."""
        while batch:
            out: list[Outcome_] = []
            try:
                self._wait_for_applier(batch, out)
                if len(out) < len(batch):
                    self._commit_group(batch, out, sync)
            except Exception as exc:
                log.exception("the writer failed: %s", exc)
                done = {id(o[0]) for o in out}
                out.extend((p, None, exc) for p in batch if id(p) not in done)
                self._carry = []
            finally:
                settle(out)
            batch, self._carry = self._carry, []

    def _wait_for_applier(self, batch: list[Pending], out: list[Outcome_]) -> None:
        """Backpressure: while the state lags more than max_apply_lag_bytes behind the
        durable WAL, wait for the applier (bounded); past the bound, refuse the group."""
        ri, max_lag = self.read_index, self.config.max_apply_lag_bytes
        if ri.lag_bytes() <= max_lag or not batch:
            return
        t0 = time.monotonic()
        deadline = t0 + limits.apply_backpressure_wait_seconds_max
        while ri.lag_bytes() > max_lag:  # bounded by the deadline
            if self.applier.failed is not None:
                return  # the group fails below, with the fence the failure set
            left = deadline - time.monotonic()
            if left <= 0:
                err = Unavailable(
                    f"the state is {ri.lag_bytes()} bytes behind the WAL, more than "
                    f"max_apply_lag_bytes={max_lag}, for "
                    f"{limits.apply_backpressure_wait_seconds_max:.0f}s", code="apply_lag",
                    hint="see stemedb_state_apply_lag_bytes; the state's disk may be slow")
                out.extend((p, None, err) for p in batch)
                break
            with contextlib.suppress(Unavailable):
                ri.wait(ri.durable_lsn - max_lag, min(left, 0.1))
        self.m.state_apply_backpressure_seconds_total.inc(time.monotonic() - t0)

    def _commit_group(self, batch: list[Pending], out: list[Outcome_],
                      sync: bool | None) -> None:
        w, view = self.writer, self.view
        if self.fenced is not None:
            err = self.fence_error()
            out.extend((p, None, err) for p in batch)
            return
        refusal = self.disk_guard_refusal()
        if refusal is not None and batch[0].request.type != RecordType.GENESIS:
            self.m.disk_guard_refusals_total.inc(len(batch))
            err2 = InsufficientStorage(
                refusal,
                hint="free space or grow the filesystem it names (see the disk-full "
                     "runbook); reads keep working")
            out.extend((p, None, err2) for p in batch)
            return
        refusal = self.archive_refusal() if self.archive_refusal is not None else None
        if refusal is not None and batch[0].request.type != RecordType.GENESIS:
            self.m.archive_refused_writes_total.inc(len(batch))
            err4 = ArchiveBacklogFull(
                refusal,
                hint="fix the archive target (see stemedb_archive_failures_total and the "
                     "archive section of GET /v1/admin/status); writes resume by "
                     "themselves as the backlog drains; reads keep working")
            out.extend((p, None, err4) for p in batch)
            return
        # Record times never go back, even when the clock does: keys expire by them.
        now = self._last_unix = max(self.clock(), self._last_unix)
        ts = rfc3339(now)
        created_unix = parse_rfc3339(ts)  # what the applier stores for a key
        frames: list[tuple[int, int, bytes]] = []  # (type, lsn, payload)
        acks: list[tuple[Pending, WriteResult]] = []  # answered once the group is durable
        deferred: dict[int, _Deferred] = {}  # lsn -> a write the applier answers
        keyed: dict[str, tuple[str | None, int, WriteResult | None]] = {}  # this group's
        retries: list[tuple[Pending, str]] = []  # of a request of this group
        earlier: list[Outcome_] = []  # answered from records durable before this group
        cap = min(limits.record_payload_bytes_max, w.record_capacity())
        segment_of_group = None
        for i, p in enumerate(batch):
            req = p.request
            key = req.idempotency_key
            if key is not None:
                if key in keyed:
                    retries.append((p, key))
                    continue
                try:
                    answer = self._answer_from_earlier(p, key, now)
                except sqlite3.Error as exc:
                    earlier.append((p, None, StateApplyFailed(
                        f"the state could not be asked for the Idempotency-Key: {exc}; "
                        "nothing was written", lsn=None, durable=False)))
                    continue
                if answer is not None:
                    if answer is not _FOLLOWING:
                        earlier.append(answer)
                    continue
            try:
                adm = view.admit(req.type, req.ops)
            except StemeError as exc:
                earlier.append((p, None, exc))
                continue
            payload: dict[str, Any] = {"t": ts}
            if req.type == RecordType.TERM:
                payload.update(req.ops[0])  # {"term", "node"}: Engine.write_term
            elif req.type not in (RecordType.SEAL, RecordType.GENESIS):
                payload["ops"] = req.ops
            if key is not None:
                payload["k"] = key
                payload["h"] = req.body_sha256
            data = encode_json(payload)
            if len(data) > cap:
                earlier.append((p, None, TooLarge(
                    f"the record is {len(data)} bytes; the limit is {cap} bytes "
                    f"(segment_size_bytes={self.config.segment_size_bytes})")))
                continue
            mark = w.plan_mark()
            lsn = w.plan(len(data))
            segment = w.plan_mark()[0]
            if segment_of_group is None:
                segment_of_group = segment
            elif segment is not segment_of_group:
                # A group stays in one segment: the rest waits for the next group.
                w.plan_reset_to(mark)
                self._carry = batch[i:]
                break
            view.advance(req.type, adm)
            frames.append((int(req.type), lsn, data))
            result = _immediate(req.type, adm, lsn, view.epoch, ts)
            if result is None:
                deferred[lsn] = _Deferred(p)
            else:
                acks.append((p, result))
            if key is not None:
                keyed[key] = (req.body_sha256, lsn, result)
        if frames:
            end = frames[-1][1] + frame_size(len(frames[-1][2]))
            nbytes = end - frames[0][1]
            try:
                w.write(frames)
                if sync or (sync is None and self.config.fsync == "always"):
                    self.timed_sync()
            except WalOpError as exc:
                if self.config.fsync == "always":
                    zeroed = w.discard_unsynced()
                    log.error("WAL failed batch of %d records discarded (%d bytes zeroed, "
                              "best effort)", len(frames), zeroed)
                self.fence(exc)
                err3 = self.fence_error()
                out.extend(earlier)
                out.extend((p, None, err3) for p, _ in acks)
                out.extend((p, None, err3) for d in deferred.values() for p, _ in d.pendings)
                out.extend((p, None, err3) for p, _ in retries)
                return
            m = self.m
            m.wal_bytes_written_total.inc(nbytes)
            m.wal_records_written_total.inc(len(frames))
            m.group_commit_batch_records.observe(len(frames))
            m.group_commit_batch_bytes.observe(nbytes)
            # Durable: retries of this group's keys find them from now on, and a read
            # that arrives after any of these acknowledgements waits for their apply.
            for key, (h, lsn, result) in keyed.items():
                pk = PendingKey(h or "", lsn, created_unix, None if result is None
                                else result.status, None if result is None else result.body)
                view.add_key(key, pk)
                if result is None:
                    deferred[lsn].key = pk
            self.read_index.publish_durable(end)
            self.m.state_apply_lag_bytes.set(self.read_index.lag_bytes())
        for p, key in retries:
            h, lsn, result = keyed[key]
            if p.request.body_sha256 != h:
                out.append((p, None, key_reused()))
            elif result is not None:
                out.append((p, WriteResult(result.status, result.body, lsn, True), None))
            else:
                deferred[lsn].pendings.append((p, True))
        out.extend(earlier)
        out.extend((p, r, None) for p, r in acks)
        settle(out)  # acknowledged first; the state follows
        out.clear()
        if frames:
            self._hand_to_applier(frames, deferred)
        if time.monotonic() - self.retention.gauges_mono >= limits.wal_gauges_refresh_seconds:
            self.retention.update_gauges()

    def replicate(self, frames: list[tuple[int, int, bytes]]) -> int:
        """A replica's group commit: the leader's (type, lsn, payload) records, in LSN
        order from this log's end, appended at the leader's LSNs, fdatasynced once and
        handed to the applier.  Returns the new durable LSN.  A failed write or fsync
        fences this log, as for the node's own writes."""
        if self.fenced is not None:
            raise self.fence_error()
        if not self.follower:
            # Promoted (on this thread, so no group can slip in after): the log is ours.
            raise Unavailable("this node writes its own log now: replicated records are "
                              "refused", code="not_follower")
        w = self.writer
        assert w.header is not None
        if not frames:
            return w.synced_end_lsn
        if frames[0][1] < w.end_lsn:
            raise InvalidInput(f"replicated records start at LSN {frames[0][1]}, before the "
                               f"end of this log ({w.end_lsn})")
        chunks: list[tuple[int, str, list[tuple[int, int, bytes]]]] = []
        cur: list[tuple[int, int, bytes]] = []
        nbytes = 0
        try:
            for f in frames:
                if cur and f[1] >= w.header.end_lsn:
                    w.write(cur, follow=True)
                    chunks.append((w.header.base_lsn, w.segment, cur))
                    cur = []
                cur.append(f)
                nbytes += frame_size(len(f[2]))
            w.write(cur, follow=True)
            chunks.append((w.header.base_lsn, w.segment, cur))
            self.timed_sync()
        except WalOpError as exc:
            self.fence(exc)
            raise self.fence_error() from exc
        end = w.synced_end_lsn
        self.m.wal_bytes_written_total.inc(nbytes)
        self.m.wal_records_written_total.inc(len(frames))
        self.read_index.publish_durable(end)
        for base, seg_name, part in chunks:
            group: list[Frame] = [(lsn, rtype, data, lsn - base) for rtype, lsn, data in part]

            def locate(lsn: int, base: int = base, seg_name: str = seg_name
                       ) -> tuple[str, int]:
                return seg_name, lsn - base

            self.applier.enqueue(DurableGroup(group, locate, set(), None, _ignore))
        if time.monotonic() - self.retention.gauges_mono >= limits.wal_gauges_refresh_seconds:
            self.retention.update_gauges()
        return end

    def _answer_from_earlier(self, p: Pending, key: str, now: float) -> Any:
        """A retry of a write durable before this group: its answer (an outcome), or
        _FOLLOWING when it waits for the applier with its original, or None for a new
        key.  A key older than the TTL by this group's record time is new again, as the
        applier expires it by the records that follow it (so replay agrees)."""
        h = p.request.body_sha256
        cutoff = now - self.config.idempotency_ttl_seconds
        pk = self.view.pending_key(key)
        if pk is not None and pk.created_unix < cutoff:
            pk = None
        if pk is not None:
            if pk.body_sha256 != h:
                return (p, None, key_reused())
            known = self.view.follow(pk, p)
            if known is None:
                return _FOLLOWING
            return (p, WriteResult(known[0], known[1], pk.lsn, True), None)
        found = st.lookup_idempotency(self._key_conn(), key)
        if found is None or found[3] < cutoff:
            return None
        if found[0] != h:
            return (p, None, key_reused())
        return (p, WriteResult(found[1], found[2], int(found[2].get("lsn", 0)), True), None)

    def _key_conn(self) -> sqlite3.Connection:
        if self._kconn is None:
            self._kconn = self._key_reader()
        return self._kconn

    def _hand_to_applier(self, frames: list[tuple[int, int, bytes]],
                         deferred: dict[int, _Deferred]) -> None:
        w = self.writer
        assert w.header is not None
        header = w.header
        # The group is in the writer's current segment (a group never spans two).
        base, seg_name = header.base_lsn, w.segment
        group_frames: list[Frame] = [(lsn, rtype, data, lsn - base)
                                     for rtype, lsn, data in frames]

        def locate(lsn: int) -> tuple[str, int]:
            return seg_name, lsn - base

        view = self.view

        def on_applied(results: dict[int, tuple[int, dict[str, Any]]]) -> None:
            outs: list[Outcome_] = []
            for lsn, d in deferred.items():
                status, body = results[lsn]
                outs.extend((p, WriteResult(status, body, lsn, retry), None)
                            for p, retry in d.pendings)
                if d.key is not None:
                    outs.extend((f, WriteResult(status, body, lsn, True), None)
                                for f in view.resolve(d.key, status, body))
            settle(outs)

        def on_failed(exc: BaseException) -> None:
            outs: list[Outcome_] = [(p, None, exc) for d in deferred.values()
                                    for p, _ in d.pendings]
            for d in deferred.values():
                if d.key is not None:
                    outs.extend((f, None, exc) for f in view.resolve(d.key, None, None))
            settle(outs)

        self.applier.enqueue(DurableGroup(group_frames, locate, set(deferred),
                                          on_applied if deferred else None, on_failed))

    # -- syncs, fences and the disk guard ------------------------------------------------
    def timed_sync(self) -> None:
        w = self.writer
        t0 = time.perf_counter()
        try:
            w.sync()
        finally:
            d = time.perf_counter() - t0
            self.last_fsync_seconds = d
            self._last_fsync_mono = time.monotonic()
            self.m.wal_fsync_duration.observe(d)
            self.m.wal_fsync_latency.observe(d)
            if d >= limits.slow_fsync_warn_seconds:
                log.warning("slow WAL fsync: %.3fs on %s (threshold %.3fs)", d, w.segment,
                            limits.slow_fsync_warn_seconds)

    def sync_for_checkpoint(self) -> None:
        """Make every written record durable before the state is (checkpoints)."""
        if self.fenced is not None:
            raise self.fence_error()
        try:
            if self.writer.needs_sync():
                self.timed_sync()
        except WalOpError as exc:
            self.fence(exc)
            raise self.fence_error() from exc

    def fence(self, exc: WalOpError) -> None:
        if exc.operation == "fsync":
            self.m.wal_fsync_errors_total.labels(segment=exc.segment).inc()
            msg = (f"fsync failed: Error: Failed to fsync WAL segment {exc.segment}: "
                   f"{os.strerror(exc.errno) if exc.errno else exc}")
        else:
            msg = (f"WAL write error: Error: Failed to {exc.operation} WAL segment "
                   f"{exc.segment}: {os.strerror(exc.errno) if exc.errno else exc}")
        self.m.storage_errors_total.labels(operation=exc.operation).inc()
        self.set_fenced(WalFsyncFailed(msg, segment=exc.segment))
        if self.config.log_fsync_errors:
            log.error("WAL fsync debug: operation=%s segment=%s errno=%s end_lsn=%s "
                      "synced_lsn=%s", exc.operation, exc.segment, exc.errno,
                      self.writer.end_lsn, self.writer.synced_lsn)

    def set_fenced(self, err: WalFsyncFailed | StateApplyFailed) -> None:
        first = self.fenced is None
        self.fenced = err
        self.m.wal_writes_fenced.set(1)
        if first:
            self.m.wal_fenced_total.inc()
            log.error("%s; writes are fenced until restart (nothing is retried)",
                      err.message)

    def fence_error(self) -> WalFsyncFailed | StateApplyFailed:
        assert self.fenced is not None
        if isinstance(self.fenced, StateApplyFailed):
            return StateApplyFailed(f"writes are fenced after the state failed: "
                                    f"{self.fenced.message}; nothing was written", lsn=None,
                                    durable=False, hint="restart stemedb-api: its replay "
                                    "applies the WAL to the state")
        return WalFsyncFailed(f"writes are fenced after a WAL failure: {self.fenced.message}",
                              segment=self.fenced.segment,
                              hint="check the disk (see the WALFsyncFailure runbook), "
                                   "then restart stemedb-api")

    def probe_disk(self, force: bool = False) -> DiskUsage | None:
        """statvfs of the WAL's filesystem (and of the state's, when ``<data-dir>/wal``
        links elsewhere), at most every ``disk_probe_interval_seconds``."""
        now = time.monotonic()
        if force or self._disk is None or (
                now - self._disk_checked_mono >= limits.disk_probe_interval_seconds):
            path = self.wal_dir
            try:
                self._disk = self.fs.disk_usage(path)
                path = self.data_dir
                self._state_disk = self.fs.disk_usage(path) if self.wal_linked else None
            except OSError as exc:
                self.m.storage_errors_total.labels(operation="statvfs").inc()
                log.error("cannot read free space of %s: %s", path, exc)
                return self._disk
            self._disk_checked_mono = now
            d = self._disk
            self.m.wal_fs_free_bytes.set(d.free_bytes)
            self.m.wal_fs_size_bytes.set(d.size_bytes)
            self.m.wal_fs_free_inodes.set(d.free_inodes)
            self.m.wal_fs_inodes.set(d.inodes)
            sd = self._state_disk or d  # the same filesystem unless the WAL is linked
            self.m.state_fs_free_bytes.set(sd.free_bytes)
            self.m.state_fs_size_bytes.set(sd.size_bytes)
            self.m.disk_guard_reserve_bytes.set(self.config.disk_reserve_bytes)
        return self._disk

    def disk_usage(self) -> tuple[DiskUsage | None, DiskUsage | None]:
        """The last probe: the WAL's filesystem, and the state's (the same unless the
        WAL is linked to another)."""
        return self._disk, self._state_disk or self._disk

    def forget_disk_probe(self) -> None:
        """Probe again at the next check (tests change the disk under the engine)."""
        self._disk = None

    def disk_guard_refusal(self) -> str | None:
        """Why the disk guard refuses writes now, or None when it does not."""
        self.probe_disk()
        return self.refusal()

    def refusal(self) -> str | None:
        """The guard's verdict on the last probe (no I/O; the message only when it
        refuses, since every group commit asks)."""
        reserve = self.config.disk_reserve_bytes
        d, sd = self._disk, self._state_disk
        if d is not None and d.free_bytes < reserve:
            free, what = d.free_bytes, "the WAL filesystem"
        elif sd is not None and sd.free_bytes < reserve:
            free, what = sd.free_bytes, f"the state's filesystem ({self.data_dir})"
        else:
            return None
        return (f"the disk guard refuses writes: {free} bytes free on {what}, under the "
                f"reserve of {reserve} bytes")

    def close(self) -> None:
        if self._kconn is not None:
            self._kconn.close()
            self._kconn = None


_FOLLOWING = object()  # a retry that waits for its original's apply


def _ignore(_exc: BaseException) -> None:
    """A replicated group has nobody waiting: the applier's failure fences the state
    and is reported there."""


def _immediate(rtype: RecordType, adm: Any, lsn: int, epoch: int, ts: str
               ) -> WriteResult | None:
    """The response of a write that does not need the state, as the applier would
    compute it (tests/test_write_path.py compares the two); None when it does."""
    if adm.needs_state:
        return None
    if rtype == RecordType.ASSERT:
        return WriteResult(201, {"id": adm.first_id, "lsn": lsn, "epoch": epoch,
                                 "created_at": ts}, lsn)
    if rtype == RecordType.BATCH:
        return WriteResult(201, {"results": [
            {"id": aid, "lsn": lsn, "epoch": epoch, "created_at": ts}
            for aid in range(adm.first_id, adm.first_id + adm.assertions)],
            "lsn": lsn, "epoch": epoch}, lsn)
    if rtype == RecordType.GENESIS:
        return WriteResult(201, {"opened": 1}, lsn)
    if rtype == RecordType.TERM:
        return WriteResult(201, {"lsn": lsn}, lsn)
    return None


__all__ = ["Committer", "Pending", "key_reused", "settle", "stopping"]

