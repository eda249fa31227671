"""The applier: durable WAL records into the SQLite state, in LSN order.

One code path with every user: recovery hands it the records it scans from the
segments, the committer hands it each group once the group is durable, and (later) a
replica's stream and a restore from the archive hand it theirs.  :meth:`Applier.apply`
applies consecutive records in one SQLite transaction and stores ``applied_end_lsn``
in it, so the state always names the WAL position it reflects; a crash between two
transactions loses nothing, for the WAL still holds what was not applied.

The live applier is a thread of the engine's: it takes every group queued (up to
``apply_records_max`` records and ``apply_bytes_max`` payload bytes), applies them in
one transaction, publishes the applied LSN to the read index, and answers the writes
whose responses needed the state (a vote's ``created``, a seal's digest).  The more it
lags, the larger its transactions, the cheaper each record: it catches up; the byte cap
keeps each one short, for a linearizable read waits for the one that holds its LSN.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgspec
import orjson

from .. import limits
from .. import state as st
from ..errors import CorruptionError, StateApplyFailed, StemeError
from ..metrics import Metrics
from ..read_index import ReadIndex
from ..wal import RecordType, frame_size
from ._types import parse_rfc3339
from ._view import AdmissionView

log = logging.getLogger("stemedb.engine")
T = TypeVar("T")

# (lsn, record type, payload, offset in its segment): a record as the scanner and the
# committer both give it.
Frame = tuple[int, int, bytes, int]
# Where a record is, for an error message: lsn -> (segment name, offset).
Locate = Callable[[int], tuple[str, int]]


@dataclass
class Applied:
    """What one transaction applied: the end LSN it stored, records, bytes, and the
    responses of the records that were asked for (lsn -> (status, body))."""

    end_lsn: int
    records: int
    bytes: int
    results: dict[int, tuple[int, dict[str, Any]]] = field(default_factory=dict)


@dataclass
class DurableGroup:
    """A group commit's records, durable, on their way to the state."""

    frames: list[Frame]
    locate: Locate
    # lsns whose responses a caller waits for, and whom to tell (called on the
    # applier's thread with the responses, or with the error that stopped it).
    wanted: set[int]
    on_applied: Callable[[dict[int, tuple[int, dict[str, Any]]]], None] | None = None
    on_failed: Callable[[BaseException], None] | None = None


class Applier:
    """Applies durable records to the state over one SQLite connection it owns."""

    def __init__(self, conn: sqlite3.Connection, metrics: Metrics, read_index: ReadIndex,
                 *, idempotency_ttl_seconds: float, applied_records: int = 0) -> None:
        self.conn = conn
        self.m = metrics
        self.read_index = read_index
        self.idempotency_ttl_seconds = idempotency_ttl_seconds
        self.applied_records = applied_records
        self.view: AdmissionView | None = None  # trimmed as keys reach the state
        self.failed: BaseException | None = None
        self.on_failure: Callable[[BaseException], None] | None = None
        # The commit time (``t``) of the last record applied: a promoted replica's
        # writer starts its record times there, so that they never go back.
        self.last_record_t = ""
        self._queue: queue.SimpleQueue[DurableGroup | tuple[Callable[[], Any],
                                                            cf.Future[Any]] | None] = \
            queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        # A test hook: seconds the live applier sleeps before each transaction (a slow
        # disk under the state), to show backpressure.
        self.delay_seconds = 0.0

    # -- one transaction -------------------------------------------------------------
    def apply(self, frames: list[Frame], locate: Locate, wanted: set[int] | frozenset[int]
              = frozenset()) -> Applied:
        """Apply consecutive records in one SQLite transaction, with ``applied_end_lsn``.

        Every payload is decoded into a :class:`stemedb.state.Record` and goes through
        :func:`stemedb.state.apply_record`, except an ASSERT record holding one
        assertion (most of a WAL), which takes an inlined copy of apply_record's
        assert branch, and a BATCH record of assertions only, which takes
        :func:`stemedb.state.buffer_assertions`: the same rows, ids, response and
        idempotency row, without the per-record calls.  A record the state cannot read
        or apply is corruption: nothing of the transaction is kept.
        """
        conn = self.conn
        assert frames
        dumps = orjson.dumps
        decode = st.RECORD_DECODER.decode
        object_text = st.object_text
        assert_type, batch_type = int(RecordType.ASSERT), int(RecordType.BATCH)
        rows_max = limits.apply_rows_buffered_max
        conn.execute("BEGIN IMMEDIATE")
        ctx = st.ApplyContext(buffer_rows=True)
        rows, shapes = ctx.rows, ctx.shapes
        # The context's epoch and next id, kept in locals on the fast path and handed
        # back to ctx around every apply_record call.
        epoch = next_id = 0
        idem: list[tuple[str, str, int, str, int, float]] = []
        results: dict[int, tuple[int, dict[str, Any]]] = {}
        last_t = ""

        def refuse(lsn: int, why: str) -> CorruptionError:
            segment, offset = locate(lsn)
            return CorruptionError(segment, offset, f"record at LSN {lsn} {why}", lsn=lsn,
                                   kind="corrupt_record")

        def keep_response(rec: st.Record, lsn: int, status: int,
                          body: dict[str, Any]) -> None:
            """The idempotency row of a record that carries a key."""
            if rec.h is None:
                raise refuse(lsn, "has an idempotency key but no body hash")
            assert rec.k is not None
            idem.append((rec.k, rec.h, status, dumps(body).decode(), lsn,
                         parse_rfc3339(rec.t)))

        try:
            for lsn, rtype, data, _ in frames:
                try:
                    rec = decode(data)
                except msgspec.DecodeError as exc:
                    raise refuse(lsn, f"has a payload the state cannot read: {exc}") from exc
                last_t = rec.t
                ops = rec.ops
                if rtype == assert_type and len(ops) == 1 and ops[0].a is not None:
                    # apply_record's assert branch for a one-assertion ASSERT record.
                    a = ops[0].a
                    if not epoch:
                        ctx.load(conn)
                        epoch, next_id = ctx.epoch, ctx.next_id
                    aid, ts = next_id, rec.t
                    next_id += 1
                    # st.assertion_row, inline: the row without None columns.
                    obj, conf, src = object_text(a.object), a.confidence, a.source
                    if src is None:
                        if conf is None:
                            shapes.append(3)
                            rows.append((aid, a.subject, a.predicate, obj, a.author,
                                         epoch, lsn, ts))
                        else:
                            shapes.append(2)
                            rows.append((aid, a.subject, a.predicate, obj, a.author,
                                         conf, epoch, lsn, ts))
                    else:
                        shape, row = st.assertion_row(aid, a.subject, a.predicate, obj,
                                                      a.author, conf, src, epoch, lsn, ts)
                        shapes.append(shape)
                        rows.append(row)
                    if len(rows) >= rows_max:
                        ctx.flush_rows(conn)
                        rows, shapes = ctx.rows, ctx.shapes
                    if rec.k or lsn in wanted:
                        body1 = {"id": aid, "lsn": lsn, "epoch": epoch, "created_at": ts}
                        if rec.k:
                            keep_response(rec, lsn, 201, body1)
                        if lsn in wanted:
                            results[lsn] = (201, body1)
                    continue
                if epoch:
                    ctx.next_id = next_id
                if rtype == batch_type and ops and all(op.a is not None for op in ops):
                    # apply_record's assert branch for a batch of assertions only.
                    ids = st.buffer_assertions(conn, ctx, rec, lsn)
                    status, body = 201, {"results": [
                        {"id": aid, "lsn": lsn, "epoch": ctx.epoch, "created_at": rec.t}
                        for aid in ids], "lsn": lsn, "epoch": ctx.epoch}
                else:
                    try:
                        status, body = st.apply_record(conn, rtype, rec, lsn, ctx)
                    except StemeError as exc:
                        raise refuse(lsn, f"does not apply to the state: {exc}") from exc
                # buffer_assertions and apply_record move the next id, and may move the
                # epoch (a seal, the genesis) and flush (and replace) the buffers.
                epoch, next_id = ctx.epoch, ctx.next_id
                rows, shapes = ctx.rows, ctx.shapes
                if rec.k:
                    keep_response(rec, lsn, status, body)
                if lsn in wanted:
                    results[lsn] = (status, body)
            if epoch:
                ctx.next_id = next_id
            ctx.flush(conn)
            if idem:
                # In record order, so a key seen twice keeps its last record's response.
                st.replace_idempotency(conn, idem)
            if last_t:
                # Keys expire by the time of the records that follow them, never by this
                # machine's clock: a replay, a replica and a restore keep the same keys.
                st.expire_idempotency(conn, parse_rfc3339(last_t)
                                      - self.idempotency_ttl_seconds)
            applied = self.applied_records + len(frames)
            last_lsn = frames[-1][0]
            end_lsn = last_lsn + frame_size(len(frames[-1][2]))
            st.set_applied(conn, end_lsn, last_lsn, applied)
            st.commit(conn)
        except UnicodeDecodeError as exc:
            conn.execute("ROLLBACK")
            raise refuse(frames[0][0], f"(or one after it in this transaction) holds an "
                         f"object that is not UTF-8: {exc}") from exc
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self.applied_records = applied
        if last_t:
            self.last_record_t = last_t
        self.m.state_applied_records_total.inc(len(frames))
        self.read_index.publish_applied(end_lsn)
        if self.view is not None:
            self.view.forget_keys_applied(end_lsn)
        return Applied(end_lsn, len(frames), end_lsn - frames[0][0], results)

    # -- the live applier --------------------------------------------------------------
    def start(self, *, thread: bool = True) -> None:
        if thread:
            self._thread = threading.Thread(target=self._run, name="stemedb-applier",
                                            daemon=True)
            self._thread.start()

    def enqueue(self, group: DurableGroup) -> None:
        """A durable group, to be applied after every group enqueued before it."""
        if self.failed is not None:
            self._fail_group(group, self.failed)
            return
        t = self._thread
        if t is not None and not t.is_alive():
            # Stopped while a writer that close() gave up on finished its group: apply
            # it here, on that writer's thread, before it releases the connection.
            self._apply_groups([group])
            return
        self._queue.put(group)

    def call(self, fn: Callable[[], T]) -> cf.Future[T]:
        """Run ``fn`` on the applier's thread between two transactions (checkpoints
        use the connection it owns); at once when it has no thread."""
        fut: cf.Future[T] = cf.Future()
        if self._thread is None or not self._thread.is_alive():
            try:
                fut.set_result(fn())
            except BaseException as exc:
                fut.set_exception(exc)
            return fut
        self._queue.put((fn, fut))
        return fut

    def stop(self, timeout_seconds: float) -> bool:
        """Apply what is queued, then stop; False when the thread did not end in time."""
        t = self._thread
        if t is None or not t.is_alive():
            return True
        self._queue.put(None)
        t.join(timeout_seconds)
        return not t.is_alive()

    def run_pending(self) -> int:
        """Apply every queued group now, on the calling thread (an engine without
        threads, and the crash simulation's step between durable and applied)."""
        n = 0
        while True:  # bounded by what is queued
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return n
            if item is None:
                continue
            if isinstance(item, tuple):
                fn, fut = item
                try:
                    fut.set_result(fn())
                except BaseException as exc:
                    fut.set_exception(exc)
                continue
            n += self._apply_groups([item])

    def _run(self) -> None:
        stop = False
        while not stop:
            item = self._queue.get()
            groups: list[DurableGroup] = []
            calls: list[tuple[Callable[[], Any], cf.Future[Any]]] = []
            records = nbytes = 0
            # Bounded: at most apply_records_max records and about apply_bytes_max
            # payload bytes per transaction (a group is never split).
            while item is not None:
                if isinstance(item, tuple):
                    calls.append(item)
                    break  # a call runs between transactions, after these groups
                groups.append(item)
                records += len(item.frames)
                nbytes += sum(len(f[2]) for f in item.frames)
                if records >= limits.apply_records_max or nbytes >= limits.apply_bytes_max:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            else:
                stop = True
            if groups:
                if self.delay_seconds:
                    time.sleep(self.delay_seconds)
                self._apply_groups(groups)
            for fn, fut in calls:
                try:
                    fut.set_result(fn())
                except BaseException as exc:
                    fut.set_exception(exc)
        # Stop: apply what is still queued (the engine stops the committer first).
        self.run_pending()

    def _apply_groups(self, groups: list[DurableGroup]) -> int:
        frames = [f for g in groups for f in g.frames]
        n = len(frames)
        if self.failed is None:
            wanted: set[int] = set().union(*(g.wanted for g in groups))
            try:
                out = self.apply(frames, groups[0].locate if len(groups) == 1
                                 else _locate_in(groups), wanted)
            except BaseException as exc:
                self._failed(exc, frames)
            else:
                for g in groups:
                    if g.on_applied is not None:
                        g.on_applied(out.results)
        if self.failed is not None:
            for g in groups:
                self._fail_group(g, self.failed)
        return n

    def _failed(self, exc: BaseException, frames: list[Frame]) -> None:
        first = frames[0][0]
        log.error("the state could not apply durable WAL records from LSN %d: %s; the "
                  "applier stops, and a restart applies them", first, exc)
        self.failed = StateApplyFailed(
            f"the state could not apply durable WAL records from LSN {first}: {exc}",
            lsn=first, durable=True,
            hint="restart stemedb-api: its replay applies the WAL to the state")
        self.m.storage_errors_total.labels(operation="apply").inc()
        if self.on_failure is not None:
            self.on_failure(self.failed)

    @staticmethod
    def _fail_group(group: DurableGroup, exc: BaseException) -> None:
        if group.on_failed is not None:
            group.on_failed(exc)


def _locate_in(groups: list[DurableGroup]) -> Locate:
    """Where a record of several groups is (each group knows its own)."""
    def locate(lsn: int) -> tuple[str, int]:
        for g in groups:
            if g.frames[0][0] <= lsn <= g.frames[-1][0]:
                return g.locate(lsn)
        return groups[-1].locate(lsn)
    return locate


__all__ = ["Applied", "Applier", "DurableGroup", "Frame", "Locate"]
